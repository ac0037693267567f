"""The Airflow variant of the benchmark: `airflow dags test attachment_maintenance` on the bench table.

`airflow dags test` (Airflow 3.3) runs every task inside its own process, one after another, so
the mapped ``offload_batch`` tasks run in sequence, as the library variant's batches do. The
offload part of the run is timed from the start of ``plan`` to the end of the last
``offload_batch``, as read from the ``[DAG TEST]`` lines of the log. The whole run (preflight,
verification, VACUUM, report) is timed as the process's wall time.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from bench_data import ROW_LIMIT, maintenance_config
from bench_measure import run_process, task_windows, window_figures

ROOT = Path(__file__).resolve().parent.parent
OFFLOAD_TASKS = ("plan", "offload_batch")
# The worker's last progress line of a batch: "Batch b0003 done: ..., 1.0 s elapsed." Its time
# is measured inside run_batch, so the task window minus it is Airflow's per-task cost.
_BATCH_DONE = re.compile(r"Batch b\d+ done: .*?, ([\d.]+) s elapsed\.")


def airflow_config() -> dict[str, Any]:
    """Return the ``maintenance_config`` of the run: the bench objects, no report endpoints."""
    disk_paths = [path for path in (os.environ.get("PG_DATA_DIR"), os.environ.get("S3_DATA_DIR")) if path]
    return maintenance_config(
        preflight={
            "disk_paths": disk_paths,
            "docker_host": os.environ.get("DOCKER_HOST"),
            "docker_vm_probe_image": os.environ.get("DOCKER_PROBE_IMAGE"),
        },
        report={"endpoints": []},
    )


def run_airflow(log_path: Path, batch_rows: int, expected_rows: int, expected_bytes: int) -> dict[str, Any]:
    """Run the whole chain once and return its offload part and whole-run figures.

    :raises RuntimeError: when the run fails or its log has no offload task windows.
    """
    env = dict(os.environ)
    env["AIRFLOW_VAR_MAINTENANCE_CONFIG"] = json.dumps(airflow_config())
    env["PYTHONPATH"] = str(ROOT / "include")
    conf = {"limit": ROW_LIMIT, "batch_rows": batch_rows, "reclaim": "none"}
    argv = [
        str(Path(sys.executable).parent / "airflow"),
        "dags",
        "test",
        "attachment_maintenance",
        "--conf",
        json.dumps(conf),
    ]
    run = run_process(argv, env, log_path, poll=True)
    if run.returncode != 0:
        raise RuntimeError(f"airflow dags test exited with {run.returncode}; see {log_path}")
    log_text = log_path.read_text(errors="replace")
    windows = task_windows(log_text)
    offload = [window for (task, _), window in windows.items() if task in OFFLOAD_TASKS]
    batches = [window for (task, _), window in windows.items() if task == "offload_batch"]
    if not batches or ("plan", -1) not in windows:
        raise RuntimeError(
            f"No plan and offload_batch task lines in {log_path}; is the log format unchanged?"
        )
    start = min(window[0] for window in offload)
    end = max(window[1] for window in offload)
    figures = window_figures(run.samples, start, end)
    return {
        "rows": expected_rows,
        "bytes": expected_bytes,
        "seconds": round(end - start, 4),
        "cpu_seconds": figures["cpu_seconds"],
        "server_cpu_seconds": figures["server_cpu_seconds"],
        "process_server_cpu_seconds": run.server_cpu_seconds,
        "peak_rss_kib": figures["peak_rss_kib"],
        "rss_at_offload_start_kib": figures["rss_before_kib"],
        "batches": len(batches),
        "batch_seconds_total": round(sum(window[1] - window[0] for window in batches), 4),
        "run_batch_seconds_total": round(sum(float(found) for found in _BATCH_DONE.findall(log_text)), 4),
        "plan_seconds": round(windows[("plan", -1)][1] - windows[("plan", -1)][0], 4),
        "process_seconds": round(run.wall_seconds, 3),
        "process_cpu_seconds": round(run.cpu_seconds, 3),
        "process_peak_rss_kib": run.peak_rss_kib,
        "tree_peak_rss_kib": max((sample.rss_bytes for sample in run.samples), default=0) // 1024,
        "machine_busy_percent": run.machine_busy_percent,
        "load_average_at_start": run.load_average,
        "task_seconds": {
            f"{task}[{index}]" if index >= 0 else task: round(window[1] - window[0], 3)
            for (task, index), window in sorted(windows.items(), key=lambda item: item[1][0])
        },
    }
