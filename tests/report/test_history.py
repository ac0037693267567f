from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from attachment_ops.report.history import (
    BucketReportStore,
    LocalReportStore,
    Tolerance,
    build_trend,
    compare_with_baseline,
    load_previous_reports,
    make_report_id,
    validate_report_id,
)


def report(report_id: str, *endpoints: tuple[str, str, float, float]) -> dict:
    """A report document with the given (name, connection, mean_ms, p95_ms) endpoints."""
    return {
        "report_id": report_id,
        "created_at": report_id,
        "http": {
            "endpoints": [
                {"name": name, "connection": connection, "n": 12, "mean_ms": mean, "p95_ms": p95}
                for name, connection, mean, p95 in endpoints
            ]
        },
    }


def compare(current, previous, runs=5, percent=20.0, min_ms=2.0):
    return compare_with_baseline(current, previous, baseline_runs=runs, tolerance=Tolerance(percent, min_ms))


PREVIOUS = [
    report("20260105T000000Z_e", ("page", "api", 6.0, 10.0)),
    report("20260104T000000Z_d", ("page", "api", 6.0, 9.0)),
    report("20260103T000000Z_c", ("page", "api", 6.0, 11.0)),
    report("20260102T000000Z_b", ("page", "api", 6.0, 10.5)),
    report("20260101T000000Z_a", ("page", "api", 6.0, 10.0)),
]


@pytest.mark.parametrize(
    ("p95", "status"),
    [
        (10.0, "unchanged"),
        (12.0, "unchanged"),
        (12.1, "regression"),
        (20.0, "regression"),
        (7.9, "improved"),
        (8.0, "unchanged"),
        (8.1, "unchanged"),
    ],
)
def test_regression_against_median(p95, status):
    comparison = compare(report("20260106T000000Z_f", ("page", "api", 6.0, p95)), PREVIOUS)
    (entry,) = comparison["endpoints"]
    assert entry["baseline_p95_ms"] == 10.0
    assert entry["status"] == status


def test_slower_run_flagged():
    comparison = compare(report("20260106T000000Z_f", ("page", "api", 9.0, 15.0)), PREVIOUS)
    assert comparison["regressions"] == ["page (api)"]


def test_equal_run_not_flagged():
    comparison = compare(report("20260106T000000Z_f", ("page", "api", 6.0, 10.0)), PREVIOUS)
    assert comparison["regressions"] == []
    assert comparison["endpoints"][0]["p95_delta_ms"] == 0.0


def test_small_absolute_rise_ignored():
    previous = [report("20260101T000000Z_a", ("fast", "api", 0.5, 1.0))]
    comparison = compare(report("20260102T000000Z_b", ("fast", "api", 0.9, 2.5)), previous)
    assert comparison["endpoints"][0]["status"] == "unchanged"


def test_baseline_uses_newest_runs():
    comparison = compare(report("20260106T000000Z_f", ("page", "api", 6.0, 10.0)), PREVIOUS, runs=2)
    entry = comparison["endpoints"][0]
    assert entry["baseline_p95_ms"] == 9.5
    assert entry["baseline_report_ids"] == ["20260105T000000Z_e", "20260104T000000Z_d"]


def test_endpoint_without_history():
    comparison = compare(report("20260106T000000Z_f", ("new", "api_proxy", 1.0, 2.0)), PREVIOUS)
    assert comparison["endpoints"][0]["status"] == "no baseline"
    assert comparison["regressions"] == []


def test_unmeasured_runs_skipped():
    previous = [
        {
            "report_id": "20260102T000000Z_b",
            "http": {"endpoints": [{"name": "page", "connection": "api", "n": 0}]},
        },
        report("20260101T000000Z_a", ("page", "api", 6.0, 10.0)),
    ]
    comparison = compare(report("20260103T000000Z_c", ("page", "api", 6.0, 10.0)), previous)
    assert comparison["endpoints"][0]["baseline_runs"] == 1


def test_trend_oldest_first():
    current = report("20260106T000000Z_f", ("page", "api", 6.0, 12.0), ("other", "api", 1.0, 2.0))
    trend = build_trend(current, PREVIOUS, runs=3)
    assert [run["report_id"] for run in trend["runs"]] == [
        "20260104T000000Z_d",
        "20260105T000000Z_e",
        "20260106T000000Z_f",
    ]
    assert [point["p95_ms"] for point in trend["series"]["page (api)"]] == [9.0, 10.0, 12.0]
    assert trend["series"]["other (api)"][:2] == [None, None]


@pytest.mark.parametrize(
    ("run_id", "expected"),
    [
        ("manual__2026-01-02T03:04:05+00:00", "20260102T030405Z_manual__2026-01-02T03-04-05-00-00"),
        (None, "20260102T030405Z_adhoc"),
        ("../../etc", "20260102T030405Z_etc"),
        ("<script>", "20260102T030405Z_script"),
    ],
)
def test_report_id_made_safe(run_id, expected):
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert make_report_id(created, run_id) == expected


@pytest.mark.parametrize("report_id", ["../x", "20260102T030405Z_a/b", "20260102T030405Z_..", "x", ""])
def test_invalid_report_id_rejected(report_id):
    with pytest.raises(ValueError, match="Invalid report id"):
        validate_report_id(report_id)


FILES = {"report.json": b"{}", "report.md": b"# r\n", "report.html": b"<p>r</p>"}


def test_local_store_round_trip(tmp_path):
    store = LocalReportStore(tmp_path)
    store.save("20260101T000000Z_a", FILES)
    store.save("20260102T000000Z_b", FILES)
    (tmp_path / "not-a-report").mkdir()
    assert store.list_ids() == ["20260102T000000Z_b", "20260101T000000Z_a"]
    assert store.read("20260101T000000Z_a", "report.md") == b"# r\n"
    assert store.read("20260103T000000Z_c", "report.md") is None


def test_bucket_store_round_trip(s3_client, bucket):
    store = BucketReportStore(s3_client, bucket, "reports/")
    locations = store.save("20260101T000000Z_a", FILES)
    store.save("20260102T000000Z_b", FILES)
    s3_client.put_object(Bucket=bucket, Key="reports/stray.txt", Body=b"x")
    head = s3_client.head_object(Bucket=bucket, Key="reports/20260101T000000Z_a/report.html")
    assert locations[0] == f"s3://{bucket}/reports/20260101T000000Z_a/report.json"
    assert store.list_ids() == ["20260102T000000Z_b", "20260101T000000Z_a"]
    assert store.read("20260102T000000Z_b", "report.html") == b"<p>r</p>"
    assert store.read("20260103T000000Z_c", "report.json") is None
    assert head["ContentType"] == "text/html; charset=utf-8"


def test_bucket_listing_pages(s3_client, bucket):
    store = BucketReportStore(s3_client, bucket, "reports/")
    ids = [f"202601{day:02d}T000000Z_r" for day in range(1, 4)]
    for report_id in ids:
        store.save(report_id, {"report.json": b"{}"})
    paginator_ids = store.list_ids()
    assert paginator_ids == sorted(ids, reverse=True)


def test_previous_reports_exclude_current(tmp_path):
    store = LocalReportStore(tmp_path)
    for report_id in ("20260101T000000Z_a", "20260102T000000Z_b", "20260103T000000Z_c"):
        store.save(report_id, {"report.json": json.dumps({"report_id": report_id}).encode()})
    store.save("20260101T120000Z_broken", {"report.json": b"not json"})
    previous = load_previous_reports(store, before_id="20260103T000000Z_c", limit=5)
    assert [r["report_id"] for r in previous] == ["20260102T000000Z_b", "20260101T000000Z_a"]


def test_previous_reports_limited(tmp_path):
    store = LocalReportStore(tmp_path)
    for day in range(1, 6):
        report_id = f"202601{day:02d}T000000Z_r"
        store.save(report_id, {"report.json": json.dumps({"report_id": report_id}).encode()})
    previous = load_previous_reports(store, before_id="20260106T000000Z_r", limit=2)
    assert [r["report_id"] for r in previous] == ["20260105T000000Z_r", "20260104T000000Z_r"]


def test_caveat_for_few_samples():
    current = report("20260106T000000Z_f", ("page", "api", 6.0, 10.0))
    current["http"]["endpoints"][0]["p95_sufficient"] = False
    comparison = compare(current, PREVIOUS)
    assert comparison["caveat"].startswith("1 endpoint(s) have fewer than 20 samples")


def test_no_caveat_with_enough_samples():
    comparison = compare(report("20260106T000000Z_f", ("page", "api", 6.0, 10.0)), PREVIOUS)
    assert comparison["caveat"] is None
