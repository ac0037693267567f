"""Measure a child process: wall time, CPU time and peak RSS, plus the machine's CPU use meanwhile.

The child's own figures come from ``wait4``, which reports the CPU time of the child and of the
descendants it waited for, and the largest peak RSS among them (Linux ``ru_maxrss``, in KiB).
When ``poll`` is set, a thread also samples the summed RSS and CPU time of the whole process
tree every ``POLL_SECONDS``, so a window inside the run (the offload tasks of an Airflow run)
can be measured on its own. Sampling misses peaks shorter than the interval.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
POLL_SECONDS = 0.1
MB = 1000 * 1000
MIB = 1024 * 1024


@dataclass
class Sample:
    """One poll: Unix time, summed RSS in bytes and CPU seconds of the tree, CPU seconds of each server."""

    at: float
    rss_bytes: int
    cpu_seconds: float
    server_cpu_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ProcessRun:
    returncode: int
    wall_seconds: float
    cpu_seconds: float
    peak_rss_kib: int
    machine_busy_percent: float
    load_average: float
    server_cpu_seconds: dict[str, float] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)


def _process_total_cpu(process: Any, with_children: bool) -> float:
    """CPU seconds of ``process`` plus, when asked, its live children and the children it reaped."""
    import psutil

    try:
        times = process.cpu_times()
        total = times.user + times.system
        if with_children:
            total += times.children_user + times.children_system
            for child in process.children(recursive=True):
                try:
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
                except psutil.Error:
                    continue
        return total
    except psutil.Error:
        return float("nan")


def server_processes() -> dict[str, Any]:
    """Find the PostgreSQL postmaster (from PG_DATA_DIR) and the SeaweedFS process (by its S3 port)."""
    import psutil

    found: dict[str, Any] = {}
    pid_file = Path(os.environ.get("PG_DATA_DIR", "")) / "postmaster.pid"
    if pid_file.is_file():
        try:
            found["postgres"] = psutil.Process(int(pid_file.read_text().split()[0]))
        except (psutil.Error, ValueError, IndexError):
            pass
    port = os.environ.get("S3_ENDPOINT_URL", "").rsplit(":", 1)[-1].strip("/")
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if cmdline and cmdline[0].endswith("weed") and f"-s3.port={port}" in cmdline:
            found["seaweedfs"] = process
            break
    return found


def server_cpu(processes: dict[str, Any]) -> dict[str, float]:
    """CPU seconds used so far by each server; Postgres counts its backends, live and exited."""
    return {name: _process_total_cpu(process, name == "postgres") for name, process in processes.items()}


def _tree_sample(process: Any) -> Sample | None:
    import psutil

    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return None
    rss = 0
    cpu = 0.0
    for member in members:
        try:
            with member.oneshot():
                rss += member.memory_info().rss
                times = member.cpu_times()
                cpu += times.user + times.system
        except psutil.Error:
            continue
    return Sample(at=time.time(), rss_bytes=rss, cpu_seconds=cpu)


def _busy_seconds(times: Any) -> float:
    return times.user + times.nice + times.system + times.irq + times.softirq + getattr(times, "steal", 0.0)


def run_process(
    argv: list[str], env: dict[str, str], log_path: Path, *, poll: bool = False, timeout: float = 3600
) -> ProcessRun:
    """Run ``argv`` with stdout and stderr in ``log_path`` and return its measured figures.

    :raises subprocess.TimeoutExpired: after killing the child when it runs past ``timeout``.
    """
    import psutil

    log_path.parent.mkdir(parents=True, exist_ok=True)
    servers = server_processes()
    servers_before = server_cpu(servers)
    load_average = os.getloadavg()[0]
    cpu_before = psutil.cpu_times()
    started = time.perf_counter()
    with open(log_path, "w") as output:
        child = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT)
    samples: list[Sample] = []
    stop = threading.Event()

    def sample_tree() -> None:
        try:
            process = psutil.Process(child.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            sample = _tree_sample(process)
            if sample is not None:
                sample.server_cpu_seconds = server_cpu(servers)
                samples.append(sample)
            stop.wait(POLL_SECONDS)

    poller = threading.Thread(target=sample_tree, daemon=True) if poll else None
    if poller:
        poller.start()
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            child.kill()
            os.wait4(child.pid, 0)
            stop.set()
            raise subprocess.TimeoutExpired(argv, timeout)
        time.sleep(0.02)
    wall = time.perf_counter() - started
    stop.set()
    if poller:
        poller.join()
    # Popen must not wait for the child again: wait4 already reaped it.
    child.returncode = os.waitstatus_to_exitcode(status)
    cpu_after = psutil.cpu_times()
    servers_after = server_cpu(servers)
    busy = _busy_seconds(cpu_after) - _busy_seconds(cpu_before)
    capacity = wall * (psutil.cpu_count() or 1)
    return ProcessRun(
        returncode=child.returncode,
        wall_seconds=wall,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_kib=usage.ru_maxrss,
        machine_busy_percent=round(100 * busy / capacity, 1) if capacity else 0.0,
        load_average=round(load_average, 2),
        server_cpu_seconds={
            name: round(servers_after[name] - servers_before[name], 3) for name in servers_before
        },
        samples=samples,
    )


def run_variant(variant: str, spec: dict[str, Any], log_path: Path) -> dict[str, Any]:
    """Run one variant of scripts/bench_variants.py and merge its own result with the process figures.

    :raises RuntimeError: when the variant exits with an error; the message names its log.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include")}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        output = Path(handle.name)
    argv = [
        sys.executable,
        str(ROOT / "scripts" / "bench_variants.py"),
        variant,
        "--spec",
        json.dumps(spec),
        "--output",
        str(output),
    ]
    try:
        run = run_process(argv, env, log_path)
        if run.returncode != 0:
            raise RuntimeError(f"Variant {variant} exited with {run.returncode}; see {log_path}")
        result = json.loads(output.read_text())
    finally:
        output.unlink(missing_ok=True)
    result.update(
        process_seconds=round(run.wall_seconds, 3),
        process_cpu_seconds=round(run.cpu_seconds, 3),
        process_peak_rss_kib=run.peak_rss_kib,
        machine_busy_percent=run.machine_busy_percent,
        load_average_at_start=run.load_average,
        process_server_cpu_seconds=run.server_cpu_seconds,
    )
    return result


# `airflow dags test` logs "[DAG TEST] starting task_id=T map_index=N" and "... end task task_id=T
# map_index=N" (Airflow 3.3), each line starting with an ISO 8601 UTC timestamp.
_TASK_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\dT[\d:.]+)Z .*\[DAG TEST\] (?P<event>starting|end task) "
    r"task_id=(?P<task>\S+) map_index=(?P<index>-?\d+)"
)


def task_windows(log_text: str) -> dict[tuple[str, int], tuple[float, float]]:
    """Return (task id, map index) -> (start, end) Unix times from an ``airflow dags test`` log."""
    starts: dict[tuple[str, int], float] = {}
    windows: dict[tuple[str, int], tuple[float, float]] = {}
    for line in log_text.splitlines():
        found = _TASK_LINE.match(line)
        if not found:
            continue
        at = datetime.fromisoformat(found["at"] + "+00:00").timestamp()
        key = (found["task"], int(found["index"]))
        if found["event"] == "starting":
            starts[key] = at
        elif key in starts:
            windows[key] = (starts[key], at)
    return windows


def window_figures(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    """Figures of the polled tree from ``start`` to ``end``: peak RSS, RSS at ``start``, CPU, servers' CPU."""
    inside = [sample for sample in samples if start <= sample.at <= end]
    before = [sample for sample in samples if sample.at <= start]
    after = [sample for sample in samples if sample.at >= end]
    # The samples closest outside the window bound it; without them, the first and last inside do.
    first = None
    if before:
        first = before[-1]
    elif inside:
        first = inside[0]
    last = None
    if after:
        last = after[0]
    elif inside:
        last = inside[-1]
    if first is None or last is None:
        return {"cpu_seconds": float("nan"), "peak_rss_kib": 0, "rss_before_kib": 0, "server_cpu_seconds": {}}
    peak = max((sample.rss_bytes for sample in inside), default=0)
    servers = {
        name: round(last.server_cpu_seconds[name] - first.server_cpu_seconds[name], 3)
        for name in first.server_cpu_seconds
        if name in last.server_cpu_seconds
    }
    return {
        "cpu_seconds": round(last.cpu_seconds - first.cpu_seconds, 3),
        "peak_rss_kib": peak // 1024,
        "rss_before_kib": first.rss_bytes // 1024,
        "server_cpu_seconds": servers,
    }


def spread(values: list[float]) -> dict[str, float]:
    """Median, minimum and maximum of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
