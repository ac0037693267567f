from __future__ import annotations

import json

import pytest

from attachment_ops.errors import PreflightFailed
from attachment_ops.preflight.model import (
    MAX_LIST_ITEMS,
    MAX_TEXT_CHARS,
    CheckResult,
    DiskSample,
    PreflightReport,
    Status,
    format_bytes,
    format_duration,
    raise_for_failures,
)


def row(status: Status, name: str = "disk temp: free space", **fields: object) -> CheckResult:
    values = {"value": "1.0 GiB free", "threshold": "fail < 5%", "source": "preflight.disk_fail_free_percent"}
    values.update(fields)
    return CheckResult(group="disk", name=name, status=status, **values)


MIXED = PreflightReport(
    results=(
        row(Status.PASS, "disk temp: free space"),
        row(Status.WARN, "postgres old transactions", hint="End the session."),
        row(Status.FAIL, "disk pg: free space", hint="Free space on /pg."),
        row(Status.UNKNOWN, "docker VM free space"),
    ),
    started_at=1000.0,
    duration_seconds=1.5,
    disk_samples=(DiskSample("host-a", "/tmp", 1000.0, 5, 10),),
)


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((), Status.PASS),
        ((Status.PASS, Status.PASS), Status.PASS),
        ((Status.PASS, Status.UNKNOWN), Status.UNKNOWN),
        ((Status.UNKNOWN, Status.WARN), Status.WARN),
        ((Status.WARN, Status.FAIL, Status.PASS), Status.FAIL),
    ],
)
def test_report_status_is_worst(statuses: tuple[Status, ...], expected: Status) -> None:
    report = PreflightReport(results=tuple(row(status) for status in statuses))
    assert report.status is expected


def test_report_splits_rows_by_status() -> None:
    assert [result.name for result in MIXED.failed] == ["disk pg: free space"]
    assert [result.name for result in MIXED.warned] == ["postgres old transactions"]
    assert [result.name for result in MIXED.unknown] == ["docker VM free space"]
    assert [result.name for result in MIXED.passed] == ["disk temp: free space"]


def test_to_dict_round_trips_through_json() -> None:
    data = json.loads(json.dumps(MIXED.to_dict()))
    assert PreflightReport.from_dict(data) == MIXED
    assert data["status"] == "FAIL"
    assert data["summary"] == "Preflight FAIL: 1 FAIL, 1 WARN, 1 UNKNOWN, 1 PASS in 1.5 s"


def test_to_dict_clips_long_values() -> None:
    long_row = row(Status.PASS, value="x" * 2000, metrics={"sessions": list(range(50)), "note": "y" * 2000})
    data = long_row.to_dict()
    assert len(data["value"]) == MAX_TEXT_CHARS
    assert data["value"].endswith("…")
    assert len(data["metrics"]["sessions"]) == MAX_LIST_ITEMS
    assert len(data["metrics"]["note"]) == MAX_TEXT_CHARS


def test_text_table_has_fixed_width() -> None:
    table = MIXED.as_table()
    widths = {len(line) for line in table.splitlines()}
    assert len(widths) == 1


def test_text_table_wraps_long_cells() -> None:
    report = PreflightReport(results=(row(Status.FAIL, value="word " * 40),))
    lines = MIXED.as_table().splitlines() + report.as_table().splitlines()
    assert max(len(line) for line in lines) <= 7 + 28 + 40 + 40 + 44 + 16
    assert sum("word" in line for line in report.as_table().splitlines()) == 5


def test_text_table_keeps_long_words_whole() -> None:
    path = "/var/lib/docker/" + "x" * 60
    report = PreflightReport(results=(row(Status.FAIL, value=f"2.0 MiB free on {path}"), row(Status.PASS)))
    lines = report.as_table().splitlines()
    assert len({len(line) for line in lines}) == 1
    assert sum(path in line for line in lines) == 1


def test_text_table_lists_every_row() -> None:
    table = MIXED.as_table()
    for result in MIXED.results:
        assert result.name in table


def test_markdown_table_rows_and_escaping() -> None:
    report = PreflightReport(results=(row(Status.WARN, value="a | b"), row(Status.PASS)))
    lines = report.as_table("markdown").splitlines()
    assert lines[0] == "| STATUS | CHECK | MEASURED | THRESHOLD (SOURCE) | FIX |"
    assert len(lines) == 4
    assert "a \\| b" in lines[2]
    assert lines[2].startswith("| **WARN** |")
    assert lines[3].startswith("| PASS |")


def test_unknown_table_style_raises() -> None:
    with pytest.raises(ValueError, match="'html'"):
        MIXED.as_table("html")  # type: ignore[arg-type]


def test_raise_for_failures_names_rows() -> None:
    with pytest.raises(PreflightFailed) as raised:
        raise_for_failures(MIXED)
    message = str(raised.value)
    assert "1 of 4 checks blocking" in message
    assert "FAIL disk pg: free space: 1.0 GiB free" in message
    assert "fix: Free space on /pg." in message
    assert "postgres old transactions" not in message


def test_raise_for_failures_passes_without_fail() -> None:
    report = PreflightReport(results=(row(Status.PASS), row(Status.WARN), row(Status.UNKNOWN)))
    assert raise_for_failures(report) is None


def test_raise_for_failures_counts_unknown_when_asked() -> None:
    report = PreflightReport(results=(row(Status.PASS), row(Status.UNKNOWN, "docker VM free space")))
    with pytest.raises(PreflightFailed, match="docker VM free space"):
        raise_for_failures(report, unknown_is_failure=True)


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (None, "unknown"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (16 * 1024 * 1024, "16.0 MiB"),
        (int(1.1 * 1024**3), "1.1 GiB"),
        (3 * 1024**4, "3.0 TiB"),
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_bytes(count: int | None, text: str) -> None:
    assert format_bytes(count) == text


@pytest.mark.parametrize(("seconds", "text"), [(45, "45 s"), (720, "12 min"), (12600, "3.5 h")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
