from __future__ import annotations

import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from attachment_ops.config import DEFAULTS
from attachment_ops.errors import ConfigurationError
from attachment_ops.preflight.disk import (
    DiskTarget,
    DiskThresholds,
    check_disks,
    check_fill_rate,
    check_free_space,
    check_headroom,
    check_inodes,
    default_disk_targets,
    estimate_time_to_full,
    measure_disk,
    parse_disk_paths,
)
from attachment_ops.preflight.model import Status
from attachment_ops.preflight.samples import (
    ensure_disk_samples_table,
    load_disk_history,
    prune_disk_samples,
    store_disk_samples,
)
from tests.preflight.helpers import MIB, TMPFS_BYTES, TMPFS_INODES, fill_file, make_empty_files

PAGE = 4096
BY_PERCENT = DiskThresholds(warn_percent=25.0, fail_percent=10.0, warn_bytes=0, fail_bytes=0)
BY_BYTES = DiskThresholds(warn_percent=0.0, fail_percent=0.0, warn_bytes=4 * MIB, fail_bytes=2 * MIB)


def target(
    path: Path, label: str = "tmpfs", headroom: tuple[str, ...] = ("offload", "rewrite")
) -> DiskTarget:
    return DiskTarget(str(path), label, frozenset(headroom))


def test_tmpfs_measures_exact_sizes(small_fs: Path) -> None:
    fill_file(small_fs / "fill", 5 * MIB + 1)
    usage = measure_disk(str(small_fs))
    assert usage.total_bytes == TMPFS_BYTES
    assert usage.free_bytes == TMPFS_BYTES - 5 * MIB - PAGE
    assert usage.total_inodes == TMPFS_INODES
    assert usage.free_inodes == TMPFS_INODES - 2


@pytest.mark.parametrize(
    ("thresholds", "fill_bytes", "expected"),
    [
        (BY_PERCENT, 8 * MIB, Status.PASS),
        (BY_PERCENT, 12 * MIB, Status.PASS),
        (BY_PERCENT, 13 * MIB, Status.WARN),
        (BY_PERCENT, 15 * MIB, Status.FAIL),
        (BY_BYTES, 11 * MIB, Status.PASS),
        (BY_BYTES, 12 * MIB, Status.PASS),
        (BY_BYTES, 12 * MIB + PAGE, Status.WARN),
        (BY_BYTES, 14 * MIB + MIB // 2, Status.FAIL),
    ],
    ids=[
        "pct-50",
        "pct-25-at-warn",
        "pct-18.75",
        "pct-6.25",
        "bytes-5m",
        "bytes-4m-at-warn",
        "bytes-4m-less",
        "bytes-1.5m",
    ],
)
def test_free_space_status_by_fill(
    small_fs: Path, thresholds: DiskThresholds, fill_bytes: int, expected: Status
) -> None:
    fill_file(small_fs / "fill", fill_bytes)
    result = check_free_space(target(small_fs), measure_disk(str(small_fs)), thresholds)
    assert result.status is expected
    assert result.metrics["free_bytes"] == TMPFS_BYTES - fill_bytes


def test_free_space_fail_names_source(small_fs: Path) -> None:
    fill_file(small_fs / "fill", 15 * MIB)
    result = check_free_space(target(small_fs), measure_disk(str(small_fs)), BY_PERCENT)
    assert result.value == f"1.0 MiB free of 16.0 MiB (6.2%) on {small_fs}"
    assert result.threshold == "warn < 25% or < 0 B; fail < 10% or < 0 B"
    assert result.source == "configured preflight.disk_fail_free_percent"
    assert result.hint.startswith(f"Free space on {small_fs} now")


def test_default_threshold_names_reference(small_fs: Path) -> None:
    result = check_free_space(target(small_fs), measure_disk(str(small_fs)), DiskThresholds())
    assert result.status is Status.FAIL
    assert result.source == "the incident host failed at 1.1 GiB free, preflight.disk_fail_free_bytes default"


@pytest.mark.parametrize(
    ("empty_files", "expected"),
    [(0, Status.PASS), (99, Status.PASS), (100, Status.WARN), (180, Status.FAIL)],
    ids=["99.5pct", "50pct-at-warn", "49.5pct", "9.5pct"],
)
def test_inode_status_by_file_count(small_fs: Path, empty_files: int, expected: Status) -> None:
    make_empty_files(small_fs, empty_files)
    thresholds = DiskThresholds(inode_warn_percent=50.0, inode_fail_percent=10.0)
    result = check_inodes(target(small_fs), measure_disk(str(small_fs)), thresholds)
    assert result.status is expected
    assert result.metrics["free_inodes"] == TMPFS_INODES - 1 - empty_files


def test_inode_fail_value_and_source(small_fs: Path) -> None:
    make_empty_files(small_fs, 190)
    result = check_inodes(target(small_fs), measure_disk(str(small_fs)), DiskThresholds())
    assert result.status is Status.FAIL
    assert result.value == f"9 of 200 inodes free (4.5%) on {small_fs}"
    assert result.source == "kubelet nodefs.inodesFree 5%, preflight.inode_fail_free_percent default"


HEADROOM = DiskThresholds(
    warn_percent=0.0,
    fail_percent=0.0,
    warn_bytes=2 * MIB,
    fail_bytes=1 * MIB,
    headroom_factor=2.0,
    rewrite_headroom_factor=1.5,
)


@pytest.mark.parametrize(
    ("kind", "planned_bytes", "expected", "remaining"),
    [
        ("offload", 2 * MIB, Status.PASS, 4 * MIB),
        ("offload", 3 * MIB, Status.PASS, 2 * MIB),
        ("offload", 3 * MIB + MIB // 2, Status.WARN, 1 * MIB),
        ("offload", 4 * MIB, Status.FAIL, 0),
        ("rewrite", 4 * MIB, Status.PASS, 2 * MIB),
        ("rewrite", 5 * MIB, Status.FAIL, MIB // 2),
    ],
)
def test_headroom_after_planned_work(
    small_fs: Path, kind: str, planned_bytes: int, expected: Status, remaining: int
) -> None:
    fill_file(small_fs / "fill", 8 * MIB)
    usage = measure_disk(str(small_fs))
    result = check_headroom(target(small_fs), usage, HEADROOM, kind=kind, planned_bytes=planned_bytes)
    assert result.status is expected
    assert result.metrics["remaining_bytes"] == remaining


def test_headroom_rejects_unknown_kind(small_fs: Path) -> None:
    with pytest.raises(ValueError, match="'vacuum'"):
        check_headroom(
            target(small_fs), measure_disk(str(small_fs)), HEADROOM, kind="vacuum", planned_bytes=1
        )


def test_check_disks_rows_for_headroom_kinds(small_fs: Path) -> None:
    fill_file(small_fs / "fill", 8 * MIB)
    results, samples = check_disks(
        [target(small_fs, headroom=("offload",))], HEADROOM, planned_bytes=4 * MIB, rewrite_bytes=MIB
    )
    names = [(result.name, result.status) for result in results]
    assert names == [
        ("disk tmpfs: free space", Status.PASS),
        ("disk tmpfs: free inodes", Status.PASS),
        ("disk tmpfs: offload headroom", Status.FAIL),
        ("disk: full reclaim headroom", Status.UNKNOWN),
    ]
    assert [(sample.path, sample.free_bytes) for sample in samples] == [(str(small_fs), 8 * MIB)]


def test_check_disks_merges_one_filesystem(small_fs: Path) -> None:
    (small_fs / "logs").mkdir()
    (small_fs / "temp").mkdir()
    targets = [target(small_fs / "logs", "logs", ()), target(small_fs / "temp", "temp", ("offload",))]
    results, samples = check_disks(targets, HEADROOM, planned_bytes=MIB)
    assert [result.name for result in results] == [
        "disk logs, temp: free space",
        "disk logs, temp: free inodes",
        "disk logs, temp: offload headroom",
    ]
    assert len(samples) == 1


def test_missing_path_is_unknown(small_fs: Path) -> None:
    results, samples = check_disks([target(small_fs / "absent")], HEADROOM)
    assert [result.status for result in results] == [Status.UNKNOWN]
    assert results[0].error == "FileNotFoundError"
    assert samples == []


NOW = 1_800_000_000.0
HOUR = 3600.0
GIB = 1024**3


@pytest.mark.parametrize(
    ("samples", "hours_to_full", "bytes_per_hour"),
    [
        (
            [(NOW - 3 * HOUR, 10 * GIB), (NOW - 2 * HOUR, 9 * GIB), (NOW - HOUR, 8 * GIB), (NOW, 7 * GIB)],
            7.0,
            -GIB,
        ),
        ([(NOW - 2 * HOUR, 5 * GIB), (NOW, 6 * GIB)], None, GIB / 2),
        ([(NOW - 30 * HOUR, 100 * GIB), (NOW - HOUR, 2 * GIB), (NOW, GIB)], 1.0, -GIB),
        ([(NOW - HOUR, 5 * GIB), (NOW, 5 * GIB)], None, 0.0),
    ],
    ids=["falling", "rising", "outside-window-ignored", "flat"],
)
def test_estimate_time_to_full(
    samples: list[tuple[float, int]], hours_to_full: float | None, bytes_per_hour: float
) -> None:
    estimate = estimate_time_to_full(samples, now=NOW, window_hours=6.0)
    assert estimate is not None
    assert estimate.hours_to_full == pytest.approx(hours_to_full)
    assert estimate.bytes_per_hour == pytest.approx(bytes_per_hour)


def test_estimate_needs_two_timestamps() -> None:
    assert estimate_time_to_full([(NOW, GIB), (NOW, 2 * GIB)], now=NOW, window_hours=6.0) is None


def test_estimate_accepts_datetimes() -> None:
    now = datetime.fromtimestamp(NOW, tz=timezone.utc)
    samples = [(now - timedelta(hours=2), 4 * GIB), (now - timedelta(hours=1), 3 * GIB), (now, 2 * GIB)]
    estimate = estimate_time_to_full(samples, now=NOW, window_hours=6.0)
    assert estimate is not None
    assert estimate.hours_to_full == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("mib_per_hour", "history_points", "fill_warn_hours", "expected"),
    [
        (1, 2, 24.0, Status.WARN),
        (1, 2, 4.0, Status.PASS),
        (-1, 2, 24.0, Status.PASS),
        (1, 1, 24.0, Status.UNKNOWN),
    ],
    ids=["full-in-8h-warn", "full-in-8h-limit-4h", "growing", "too-few-samples"],
)
def test_fill_rate_on_tmpfs(
    small_fs: Path, mib_per_hour: int, history_points: int, fill_warn_hours: float, expected: Status
) -> None:
    fill_file(small_fs / "fill", 8 * MIB)
    now = time.time()
    history = [
        (now - hours * HOUR, 8 * MIB + hours * mib_per_hour * MIB) for hours in range(history_points, 0, -1)
    ]
    thresholds = DiskThresholds(fill_warn_hours=fill_warn_hours)
    result = check_fill_rate(target(small_fs), measure_disk(str(small_fs)), history, thresholds, now=now)
    assert result.status is expected


def test_fill_rate_warn_value(small_fs: Path) -> None:
    fill_file(small_fs / "fill", 8 * MIB)
    now = time.time()
    history = [(now - 2 * HOUR, 10 * MIB), (now - HOUR, 9 * MIB)]
    result = check_fill_rate(
        target(small_fs), measure_disk(str(small_fs)), history, DiskThresholds(), now=now
    )
    assert result.value == "filling at 1.0 MiB/h, full in about 8.0 h (fit over 3 samples spanning 2.0 h)"
    assert result.metrics["hours_to_full"] == pytest.approx(8.0)


def test_check_disks_uses_history_by_path(small_fs: Path) -> None:
    now = time.time()
    history = {str(small_fs): [(now - 2 * HOUR, TMPFS_BYTES), (now - HOUR, TMPFS_BYTES)]}
    results, _ = check_disks([target(small_fs)], DiskThresholds(), history=history, now=now)
    assert results[-1].name == "disk tmpfs: time to full"


def test_check_disks_without_history_has_no_fill_row(small_fs: Path) -> None:
    results, _ = check_disks([target(small_fs)], DiskThresholds(), history={})
    assert all("time to full" not in result.name for result in results)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (["/data"], [DiskTarget("/data", "configured", frozenset({"offload", "rewrite"}))]),
        ([{"path": "/logs", "label": "logs", "headroom": []}], [DiskTarget("/logs", "logs", frozenset())]),
        (
            [{"path": "/pg", "headroom": ["rewrite"]}],
            [DiskTarget("/pg", "configured", frozenset({"rewrite"}))],
        ),
    ],
)
def test_parse_disk_paths(entries: list, expected: list[DiskTarget]) -> None:
    assert parse_disk_paths(entries) == expected


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([42], r"disk_paths\[0\] must be a path string"),
        ([{"label": "x"}], r"disk_paths\[0\] must be a path string"),
        ([{"path": "/a", "size": 1}], r"unknown keys \['size'\]"),
        ([{"path": "/a", "headroom": ["vacuum"]}], r"headroom must be a list of offload, rewrite"),
    ],
)
def test_parse_disk_paths_rejects(entries: list, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_disk_paths(entries)


def test_thresholds_from_config_defaults() -> None:
    thresholds = DiskThresholds.from_config(DEFAULTS["preflight"], DEFAULTS["reclaim"])
    assert thresholds == DiskThresholds()


def test_default_targets_include_log_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path))
    targets = default_disk_targets()
    assert targets == [
        DiskTarget(tempfile.gettempdir(), "temp", frozenset({"offload"})),
        DiskTarget(str(tmp_path), "airflow logs"),
    ]


def test_disk_samples_round_trip(pg_dsn: str, pg_schema: str, small_fs: Path) -> None:
    import psycopg

    _, samples = check_disks([target(small_fs)], DiskThresholds())
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_disk_samples_table(conn, pg_schema)
        ensure_disk_samples_table(conn, pg_schema)
        assert store_disk_samples(conn, pg_schema, samples) == 1
        history = load_disk_history(conn, pg_schema, host=samples[0].host, since_hours=1)
        other_host = load_disk_history(conn, pg_schema, host="another-host", since_hours=1)
        assert prune_disk_samples(conn, pg_schema, keep_days=1) == 0
        conn.execute(f"UPDATE \"{pg_schema}\".disk_samples SET recorded_at = now() - interval '2 days'")
        assert prune_disk_samples(conn, pg_schema, keep_days=1) == 1
    assert list(history) == [str(small_fs)]
    assert history[str(small_fs)][0][1] == samples[0].free_bytes
    assert history[str(small_fs)][0][0].timestamp() == pytest.approx(samples[0].recorded_at, abs=1e-3)
    assert other_host == {}


def test_disk_history_without_table(pg_dsn: str, pg_schema: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert load_disk_history(conn, pg_schema, host="h", since_hours=1) == {}
