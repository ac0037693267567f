"""Host disk checks: free bytes, free percent, free inodes, headroom for planned work, time to full.

Free space is what an unprivileged process can use (``f_bavail``), the figure ``df`` prints as
"Avail". The blocks reserved for root are not counted. Paths on the same filesystem are measured
once, so planned work is subtracted once per filesystem.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from attachment_ops.config import DEFAULTS
from attachment_ops.errors import ConfigurationError
from attachment_ops.preflight.model import CheckResult, DiskSample, Status, format_bytes, format_duration

log = logging.getLogger(__name__)

GROUP = "disk"
HEADROOM_KINDS = ("offload", "rewrite")

# Outside sources of the shipped defaults, shown next to a threshold that keeps its default.
_REFERENCES = {
    "disk_warn_free_percent": "kubelet imagefs.available 15%",
    "disk_fail_free_percent": "node_exporter warning at 5%",
    "disk_fail_free_bytes": "the incident host failed at 1.1 GiB free",
    "inode_fail_free_percent": "kubelet nodefs.inodesFree 5%",
    "fill_warn_hours": "node_exporter filling-up alert, 24 h",
    "fill_window_hours": "node_exporter predict_linear window, 6 h",
}


def describe_source(section: str, key: str, value: Any) -> str:
    """Name the configuration key behind a threshold, and the outside reference of its default."""
    if value != DEFAULTS[section][key]:
        return f"configured {section}.{key}"
    reference = _REFERENCES.get(key)
    return f"{reference}, {section}.{key} default" if reference else f"{section}.{key} default"


@dataclass(frozen=True)
class DiskTarget:
    """A path to check; ``headroom`` names the planned work that writes to its filesystem."""

    path: str
    label: str
    headroom: frozenset[str] = frozenset()


def parse_disk_paths(entries: Sequence[Any]) -> list[DiskTarget]:
    """Turn ``preflight.disk_paths`` into targets.

    An entry is a path string (headroom for both offload and rewrite) or an object with ``path``
    and optional ``label`` and ``headroom`` (a list of "offload" and "rewrite").

    :raises ConfigurationError: on an entry of another shape or an unknown headroom kind.
    """
    targets = []
    for index, entry in enumerate(entries):
        where = f"preflight.disk_paths[{index}]"
        if isinstance(entry, str):
            targets.append(DiskTarget(entry, "configured", frozenset(HEADROOM_KINDS)))
            continue
        if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str):
            raise ConfigurationError(
                f"{where} must be a path string or an object with a 'path' string, got {entry!r}."
            )
        unknown_keys = set(entry) - {"path", "label", "headroom"}
        if unknown_keys:
            raise ConfigurationError(
                f"{where} has unknown keys {sorted(unknown_keys)}. Known keys: path, label, headroom."
            )
        headroom = entry.get("headroom", list(HEADROOM_KINDS))
        if not isinstance(headroom, list) or not set(headroom) <= set(HEADROOM_KINDS):
            raise ConfigurationError(
                f"{where}.headroom must be a list of {', '.join(HEADROOM_KINDS)}, got {headroom!r}."
            )
        targets.append(
            DiskTarget(entry["path"], str(entry.get("label") or "configured"), frozenset(headroom))
        )
    return targets


@dataclass(frozen=True)
class DiskUsage:
    """One ``statvfs`` measurement of a filesystem."""

    path: str
    device: int
    total_bytes: int
    free_bytes: int
    total_inodes: int
    free_inodes: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def free_inode_percent(self) -> float | None:
        """Free inodes in percent, or None on filesystems without a fixed inode count (btrfs)."""
        return 100.0 * self.free_inodes / self.total_inodes if self.total_inodes else None


def measure_disk(path: str) -> DiskUsage:
    """Measure the filesystem holding ``path``.

    :raises OSError: when the path does not exist or cannot be read.
    """
    stats = os.statvfs(path)
    return DiskUsage(
        path=path,
        device=os.stat(path).st_dev,
        total_bytes=stats.f_blocks * stats.f_frsize,
        free_bytes=stats.f_bavail * stats.f_frsize,
        total_inodes=stats.f_files,
        free_inodes=stats.f_favail,
    )


@dataclass(frozen=True)
class DiskThresholds:
    """The ``preflight`` keys that the disk checks read."""

    warn_percent: float = DEFAULTS["preflight"]["disk_warn_free_percent"]
    fail_percent: float = DEFAULTS["preflight"]["disk_fail_free_percent"]
    warn_bytes: int = DEFAULTS["preflight"]["disk_warn_free_bytes"]
    fail_bytes: int = DEFAULTS["preflight"]["disk_fail_free_bytes"]
    inode_warn_percent: float = DEFAULTS["preflight"]["inode_warn_free_percent"]
    inode_fail_percent: float = DEFAULTS["preflight"]["inode_fail_free_percent"]
    headroom_factor: float = DEFAULTS["preflight"]["headroom_factor"]
    fill_warn_hours: float = DEFAULTS["preflight"]["fill_warn_hours"]
    fill_window_hours: float = DEFAULTS["preflight"]["fill_window_hours"]
    fill_min_samples: int = DEFAULTS["preflight"]["fill_min_samples"]
    rewrite_headroom_factor: float = DEFAULTS["reclaim"]["rewrite_headroom_factor"]

    @classmethod
    def from_config(
        cls, preflight: Mapping[str, Any], reclaim: Mapping[str, Any] | None = None
    ) -> DiskThresholds:
        reclaim = reclaim or DEFAULTS["reclaim"]
        return cls(
            warn_percent=preflight["disk_warn_free_percent"],
            fail_percent=preflight["disk_fail_free_percent"],
            warn_bytes=preflight["disk_warn_free_bytes"],
            fail_bytes=preflight["disk_fail_free_bytes"],
            inode_warn_percent=preflight["inode_warn_free_percent"],
            inode_fail_percent=preflight["inode_fail_free_percent"],
            headroom_factor=preflight["headroom_factor"],
            fill_warn_hours=preflight["fill_warn_hours"],
            fill_window_hours=preflight["fill_window_hours"],
            fill_min_samples=preflight["fill_min_samples"],
            rewrite_headroom_factor=reclaim["rewrite_headroom_factor"],
        )

    def space_threshold_text(self) -> str:
        return (
            f"warn < {self.warn_percent:g}% or < {format_bytes(self.warn_bytes)}; "
            f"fail < {self.fail_percent:g}% or < {format_bytes(self.fail_bytes)}"
        )


def _space_status(free_bytes: int, total_bytes: int, thresholds: DiskThresholds) -> tuple[Status, str]:
    """Compare free space with both thresholds and return the status and the source of the limit hit."""
    percent = 100.0 * free_bytes / total_bytes if total_bytes else 0.0
    for status, percent_key, percent_limit, bytes_key, bytes_limit in (
        (
            Status.FAIL,
            "disk_fail_free_percent",
            thresholds.fail_percent,
            "disk_fail_free_bytes",
            thresholds.fail_bytes,
        ),
        (
            Status.WARN,
            "disk_warn_free_percent",
            thresholds.warn_percent,
            "disk_warn_free_bytes",
            thresholds.warn_bytes,
        ),
    ):
        if percent < percent_limit:
            return status, describe_source("preflight", percent_key, percent_limit)
        if free_bytes < bytes_limit:
            return status, describe_source("preflight", bytes_key, bytes_limit)
    return Status.PASS, "preflight.disk_{warn,fail}_free_{percent,bytes}"


def check_free_space(target: DiskTarget, usage: DiskUsage, thresholds: DiskThresholds) -> CheckResult:
    """Check free bytes and free percent of the filesystem holding ``target``."""
    status, source = _space_status(usage.free_bytes, usage.total_bytes, thresholds)
    hints = {
        Status.FAIL: f"Free space on {usage.path} now (old logs, temp files, docker system prune) before heavy work.",
        Status.WARN: f"Free space on {usage.path} soon, or raise its size, before the next maintenance run.",
    }
    return CheckResult(
        group=GROUP,
        name=f"disk {target.label}: free space",
        status=status,
        value=(
            f"{format_bytes(usage.free_bytes)} free of {format_bytes(usage.total_bytes)} "
            f"({usage.free_percent:.1f}%) on {usage.path}"
        ),
        threshold=thresholds.space_threshold_text(),
        source=source,
        hint=hints.get(status, ""),
        metrics={
            "path": usage.path,
            "free_bytes": usage.free_bytes,
            "total_bytes": usage.total_bytes,
            "free_percent": round(usage.free_percent, 3),
        },
    )


def check_inodes(target: DiskTarget, usage: DiskUsage, thresholds: DiskThresholds) -> CheckResult:
    """Check the free inodes of the filesystem holding ``target``."""
    name = f"disk {target.label}: free inodes"
    threshold = f"warn < {thresholds.inode_warn_percent:g}%; fail < {thresholds.inode_fail_percent:g}%"
    percent = usage.free_inode_percent
    if percent is None:
        return CheckResult(
            group=GROUP,
            name=name,
            status=Status.PASS,
            value=f"no fixed inode count on {usage.path} (statvfs reports 0 inodes, as btrfs does)",
            threshold=threshold,
            source="not applicable",
            metrics={"path": usage.path, "total_inodes": 0},
        )
    status = Status.PASS
    source = "preflight.inode_{warn,fail}_free_percent"
    if percent < thresholds.inode_fail_percent:
        status = Status.FAIL
        source = describe_source("preflight", "inode_fail_free_percent", thresholds.inode_fail_percent)
    elif percent < thresholds.inode_warn_percent:
        status = Status.WARN
        source = describe_source("preflight", "inode_warn_free_percent", thresholds.inode_warn_percent)
    hint = ""
    if status is not Status.PASS:
        hint = f"Delete small files on {usage.path} (old task logs, temp files) to free inodes."
    return CheckResult(
        group=GROUP,
        name=name,
        status=status,
        value=f"{usage.free_inodes} of {usage.total_inodes} inodes free ({percent:.1f}%) on {usage.path}",
        threshold=threshold,
        source=source,
        hint=hint,
        metrics={
            "path": usage.path,
            "free_inodes": usage.free_inodes,
            "total_inodes": usage.total_inodes,
            "free_inode_percent": round(percent, 3),
        },
    )


def check_headroom(
    target: DiskTarget,
    usage: DiskUsage,
    thresholds: DiskThresholds,
    *,
    kind: str,
    planned_bytes: int,
) -> CheckResult:
    """Check that free space minus the planned work, times its factor, stays above the thresholds.

    ``kind`` "offload" uses ``preflight.headroom_factor``, "rewrite" (a full reclaim) uses
    ``reclaim.rewrite_headroom_factor``.
    """
    if kind == "offload":
        factor, factor_key, what = thresholds.headroom_factor, "preflight.headroom_factor", "offload"
    elif kind == "rewrite":
        factor, factor_key, what = (
            thresholds.rewrite_headroom_factor,
            "reclaim.rewrite_headroom_factor",
            "full reclaim",
        )
    else:
        raise ValueError(f"Unknown headroom kind {kind!r}. Expected one of {', '.join(HEADROOM_KINDS)}.")
    needed = int(planned_bytes * factor)
    remaining = usage.free_bytes - needed
    status, source = _space_status(remaining, usage.total_bytes, thresholds)
    remaining_percent = 100.0 * remaining / usage.total_bytes if usage.total_bytes else 0.0
    hint = ""
    if status is not Status.PASS:
        hint = (
            f"Free space on {usage.path}, or plan less: the {what} needs {format_bytes(needed)} "
            f"({factor:g} x {format_bytes(planned_bytes)})."
        )
    return CheckResult(
        group=GROUP,
        name=f"disk {target.label}: {what} headroom",
        status=status,
        value=(
            f"{format_bytes(usage.free_bytes)} free - {factor:g} x {format_bytes(planned_bytes)} planned "
            f"= {format_bytes(remaining)} left ({remaining_percent:.1f}%)"
        ),
        threshold=f"after the {what}: {thresholds.space_threshold_text()}",
        source=f"{source}; factor {factor_key}",
        hint=hint,
        metrics={
            "path": usage.path,
            "kind": kind,
            "planned_bytes": planned_bytes,
            "factor": factor,
            "needed_bytes": needed,
            "remaining_bytes": remaining,
        },
    )


@dataclass(frozen=True)
class FillEstimate:
    """A least-squares line through free-space samples."""

    samples: int
    span_seconds: float
    bytes_per_hour: float
    hours_to_full: float | None


def _timestamp(value: datetime | float | int) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def estimate_time_to_full(
    samples: Iterable[tuple[datetime | float, int]], *, now: float, window_hours: float
) -> FillEstimate | None:
    """Fit free bytes against time over the samples of the last ``window_hours``.

    Returns None with fewer than two distinct timestamps. ``hours_to_full`` is None when free
    space is not shrinking, and counts from ``now`` to where the fitted line reaches zero.
    """
    start = now - window_hours * 3600
    points = sorted((_timestamp(when), float(free)) for when, free in samples)
    points = [(when, free) for when, free in points if start <= when <= now]
    if len({when for when, _ in points}) < 2:
        return None
    count = len(points)
    mean_time = sum(when for when, _ in points) / count
    mean_free = sum(free for _, free in points) / count
    covariance = sum((when - mean_time) * (free - mean_free) for when, free in points)
    variance = sum((when - mean_time) ** 2 for when, _ in points)
    slope = covariance / variance
    span = points[-1][0] - points[0][0]
    if slope >= 0:
        return FillEstimate(count, span, slope * 3600, None)
    fitted_now = mean_free + slope * (now - mean_time)
    hours = max(0.0, fitted_now / -slope / 3600)
    return FillEstimate(count, span, slope * 3600, hours)


def check_fill_rate(
    target: DiskTarget,
    usage: DiskUsage,
    history: Sequence[tuple[datetime | float, int]],
    thresholds: DiskThresholds,
    *,
    now: float,
) -> CheckResult:
    """Warn when the trend of earlier samples plus this measurement reaches zero free space soon."""
    samples = [*history, (now, usage.free_bytes)]
    estimate = estimate_time_to_full(samples, now=now, window_hours=thresholds.fill_window_hours)
    name = f"disk {target.label}: time to full"
    threshold = (
        f"warn when full within {thresholds.fill_warn_hours:g} h "
        f"(fit over the last {thresholds.fill_window_hours:g} h, at least {thresholds.fill_min_samples} samples)"
    )
    source = "; ".join(
        describe_source("preflight", key, getattr(thresholds, key))
        for key in ("fill_warn_hours", "fill_window_hours")
    )

    if estimate is None or estimate.samples < thresholds.fill_min_samples:
        start = now - thresholds.fill_window_hours * 3600
        found = sum(1 for when, _ in samples if start <= _timestamp(when) <= now)
        return CheckResult(
            group=GROUP,
            name=name,
            status=Status.UNKNOWN,
            value=f"{found} samples in the last {thresholds.fill_window_hours:g} h, too few for a trend",
            threshold=threshold,
            source=source,
            hint="Nothing to do: later runs add samples, as long as report.disk_samples are stored.",
            metrics={"path": usage.path, "samples": found},
        )

    metrics: dict[str, Any] = {
        "path": usage.path,
        "samples": estimate.samples,
        "span_seconds": round(estimate.span_seconds),
        "bytes_per_hour": round(estimate.bytes_per_hour),
        "hours_to_full": None if estimate.hours_to_full is None else round(estimate.hours_to_full, 2),
    }
    fit = f"fit over {estimate.samples} samples spanning {format_duration(estimate.span_seconds)}"
    if estimate.hours_to_full is None:
        value = f"not filling ({format_bytes(estimate.bytes_per_hour)}/h, {fit})"
        return CheckResult(GROUP, name, Status.PASS, value, threshold, source, "", metrics)

    value = (
        f"filling at {format_bytes(-estimate.bytes_per_hour)}/h, full in about "
        f"{format_duration(estimate.hours_to_full * 3600)} ({fit})"
    )
    if estimate.hours_to_full < thresholds.fill_warn_hours:
        hint = f"Find what writes to {usage.path} and free or add space before it fills."
        return CheckResult(GROUP, name, Status.WARN, value, threshold, source, hint, metrics)
    return CheckResult(GROUP, name, Status.PASS, value, threshold, source, "", metrics)


@dataclass
class _Filesystem:
    usage: DiskUsage
    targets: list[DiskTarget] = field(default_factory=list)

    @property
    def target(self) -> DiskTarget:
        """Merge the targets on this filesystem: first path, all labels, union of headroom kinds."""
        labels = list(dict.fromkeys(target.label for target in self.targets))
        headroom = frozenset().union(*(target.headroom for target in self.targets))
        return DiskTarget(self.usage.path, ", ".join(labels), headroom)

    @property
    def paths(self) -> list[str]:
        return [target.path for target in self.targets]


def check_disks(
    targets: Sequence[DiskTarget],
    thresholds: DiskThresholds,
    *,
    planned_bytes: int = 0,
    rewrite_bytes: int = 0,
    history: Mapping[str, Sequence[tuple[datetime | float, int]]] | None = None,
    now: float | None = None,
    host: str | None = None,
) -> tuple[list[CheckResult], list[DiskSample]]:
    """Run every disk check on ``targets`` and return the results and this run's free-space samples.

    Targets on one filesystem are merged. ``history`` maps a path to earlier (timestamp, free
    bytes) samples. Without it, no time-to-full row appears. A path that cannot be measured gives
    an UNKNOWN row. When ``planned_bytes`` or ``rewrite_bytes`` is set but no target carries that
    headroom kind, an UNKNOWN row reports it.
    """
    now = time.time() if now is None else now
    host = host or socket.gethostname()
    results: list[CheckResult] = []
    filesystems: dict[int, _Filesystem] = {}
    for target in targets:
        try:
            usage = measure_disk(target.path)
        except OSError as error:
            log.warning("Cannot measure disk path %s (%s): %s", target.path, target.label, error)
            results.append(
                CheckResult(
                    group=GROUP,
                    name=f"disk {target.label}: free space",
                    status=Status.UNKNOWN,
                    value=f"cannot measure {target.path}: {error.strerror or error}",
                    hint="Fix the path in preflight.disk_paths, or create it, or grant read access.",
                    metrics={"path": target.path},
                    error=type(error).__name__,
                )
            )
            continue
        filesystems.setdefault(usage.device, _Filesystem(usage)).targets.append(target)

    samples = []
    covered = {kind: False for kind in HEADROOM_KINDS}
    for filesystem in filesystems.values():
        target, usage = filesystem.target, filesystem.usage
        results.append(check_free_space(target, usage, thresholds))
        results.append(check_inodes(target, usage, thresholds))
        for kind, planned in (("offload", planned_bytes), ("rewrite", rewrite_bytes)):
            if planned > 0 and kind in target.headroom:
                covered[kind] = True
                results.append(check_headroom(target, usage, thresholds, kind=kind, planned_bytes=planned))
        if history is not None:
            earlier = next((history[path] for path in filesystem.paths if history.get(path)), None)
            if earlier:
                results.append(check_fill_rate(target, usage, earlier, thresholds, now=now))
        samples.append(DiskSample(host, usage.path, now, usage.free_bytes, usage.total_bytes))

    for kind, planned in (("offload", planned_bytes), ("rewrite", rewrite_bytes)):
        if planned > 0 and not covered[kind]:
            results.append(_uncovered_headroom(kind, planned))
    return results, samples


def _uncovered_headroom(kind: str, planned_bytes: int) -> CheckResult:
    what = "offload" if kind == "offload" else "full reclaim"
    return CheckResult(
        group=GROUP,
        name=f"disk: {what} headroom",
        status=Status.UNKNOWN,
        value=f"{format_bytes(planned_bytes)} planned, but no checked path takes {kind} headroom",
        hint=(
            f'Add the disk that receives the {what} to preflight.disk_paths with headroom ["{kind}"] '
            "(for Postgres, its data directory), or check its free space by hand."
        ),
        metrics={"kind": kind, "planned_bytes": planned_bytes},
    )


def default_disk_targets() -> list[DiskTarget]:
    """Targets checked when ``preflight.disk_default_paths`` is true: temp dir and Airflow logs."""
    # NOTE: the log folder is read from the environment only (AIRFLOW__LOGGING__BASE_LOG_FOLDER,
    # else $AIRFLOW_HOME/logs); a folder set only in airflow.cfg needs an entry in disk_paths.
    import tempfile

    targets = [DiskTarget(tempfile.gettempdir(), "temp", frozenset({"offload"}))]
    log_folder = os.environ.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER")
    if not log_folder and os.environ.get("AIRFLOW_HOME"):
        log_folder = os.path.join(os.environ["AIRFLOW_HOME"], "logs")
    if log_folder and os.path.isdir(log_folder):
        targets.append(DiskTarget(log_folder, "airflow logs"))
    return targets


__all__ = [
    "DiskTarget",
    "DiskThresholds",
    "DiskUsage",
    "FillEstimate",
    "check_disks",
    "check_fill_rate",
    "check_free_space",
    "check_headroom",
    "check_inodes",
    "default_disk_targets",
    "estimate_time_to_full",
    "measure_disk",
    "parse_disk_paths",
]
