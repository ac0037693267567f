from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql

from attachment_ops.config import load_config
from attachment_ops.errors import TransientError
from attachment_ops.report.build import SCHEMA_VERSION, produce_report, raise_on_regression
from attachment_ops.report.endpoints import Target
from attachment_ops.report.history import BenchmarkRegression, BucketReportStore, LocalReportStore
from tests.report.bench_server import BASIC_SECRET, BASIC_USER, BEARER_SECRET

START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
SCRIPT = "<script>alert(1)</script>"


def report_settings(endpoints, **overrides):
    return load_config({"report": {"endpoints": endpoints, "warmup": 1, "samples": 12, **overrides}}).section(
        "report"
    )


def payload_endpoint(name="page", delay_ms=0, connection="api", size=1000):
    return {
        "name": name,
        "path": "/payload",
        "query": {"size": size, "delay_ms": delay_ms},
        "connection": connection,
    }


def targets_for(server, **auth):
    return {"api": Target("api", server.base_url, **auth), "api_proxy": Target("api_proxy", server.base_url)}


@pytest.fixture
def attachments(pg_dsn, pg_schema):
    """An attachments table whose one inline row has a filename that is an HTML script tag."""
    table = sql.Identifier(pg_schema, "document_attachments")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigserial PRIMARY KEY, filename text, bytes bytea, "
                "storage_backend text NOT NULL, storage_key text)"
            ).format(table)
        )
        conn.execute(
            sql.SQL("INSERT INTO {} (filename, bytes, storage_backend) VALUES (%s, %s, 'db')").format(table),
            (f"{SCRIPT}.pdf", b"x" * 4096),
        )
    return load_config({"attachments": {"table": f"{pg_schema}.document_attachments"}}).mapping


def test_report_stored_in_bucket(bench_server, s3_client, bucket):
    store = BucketReportStore(s3_client, bucket, "reports/")
    result = produce_report(
        report_settings([payload_endpoint()]),
        targets=targets_for(bench_server),
        stores=[store],
        run_id="manual__one",
        created_at=START,
    )
    stored = json.loads(store.read(result.report_id, "report.json"))
    assert store.list_ids() == ["20260301T120000Z_manual__one"]
    assert stored["schema_version"] == SCHEMA_VERSION
    assert stored["http"]["endpoints"][0]["payload_bytes"] == 1000
    assert store.read(result.report_id, "report.md").decode() == result.markdown
    assert store.read(result.report_id, "report.html").decode() == result.html


def test_report_in_bucket_and_directory(bench_server, s3_client, bucket, tmp_path):
    stores = [BucketReportStore(s3_client, bucket, "reports/"), LocalReportStore(tmp_path)]
    result = produce_report(
        report_settings([payload_endpoint()]),
        targets=targets_for(bench_server),
        stores=stores,
        created_at=START,
    )
    assert len(result.locations) == 6
    assert (tmp_path / result.report_id / "report.html").read_text() == result.html


def test_secrets_absent_from_outputs(bench_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    endpoints = [
        {"name": "secured", "path": "/secured"},
        {"name": "secured", "path": "/secured", "connection": "api_proxy"},
        {"name": "missing", "path": "/status/404"},
    ]
    targets = {
        "api": Target("api", bench_server.base_url, bearer_token=BEARER_SECRET),
        "api_proxy": Target("api_proxy", bench_server.base_url, basic_auth=(BASIC_USER, BASIC_SECRET)),
    }
    result = produce_report(
        report_settings(endpoints), targets=targets, stores=[LocalReportStore(tmp_path)], created_at=START
    )
    outputs = {path.name: path.read_text() for path in (tmp_path / result.report_id).iterdir()}
    outputs["log"] = caplog.text
    assert [e["n"] for e in result.document["http"]["endpoints"][:2]] == [12, 12]
    for name, text in outputs.items():
        assert BEARER_SECRET not in text, name
        assert BASIC_SECRET not in text, name


def test_script_escaped_in_html(bench_server, pg_dsn, attachments, tmp_path):
    settings = report_settings(
        [payload_endpoint(name=SCRIPT)],
        sql_probes=[{"name": SCRIPT, "sql": f"SELECT filename FROM {attachments.table}"}],
    )
    result = produce_report(
        settings,
        targets=targets_for(bench_server),
        conninfo=pg_dsn,
        mapping=attachments,
        chain={"offload": {"rows": 1, "note": SCRIPT}, "label": SCRIPT},
        stores=[LocalReportStore(tmp_path)],
        created_at=START,
    )
    page = (tmp_path / result.report_id / "report.html").read_text()
    assert re.search("<script", page, re.IGNORECASE) is None
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.pdf" in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4
    assert "<script" not in result.markdown


def test_html_has_no_external_resources(bench_server, tmp_path):
    result = produce_report(
        report_settings([payload_endpoint(), payload_endpoint(connection="api_proxy")]),
        targets=targets_for(bench_server),
        stores=[LocalReportStore(tmp_path)],
        created_at=START,
    )
    assert re.search(r"(src|href)=\"(https?:)?//", result.html) is None
    assert result.html.count("<svg") == 1
    assert "The trend needs at least two stored runs." in result.html
    assert "default-src 'none'" in result.html


def test_database_figures_included(bench_server, pg_dsn, attachments):
    result = produce_report(
        report_settings([payload_endpoint()]),
        targets=targets_for(bench_server),
        conninfo=pg_dsn,
        mapping=attachments,
        created_at=START,
    )
    table = result.document["database"]["attachments"]
    assert table["inline_rows"] == 1
    assert table["inline_bytes"] == 4096
    assert "inline 1 holding 4,096 B (4.0 KiB)" in result.markdown


def test_database_failure_becomes_warning(bench_server, refused_url, attachments):
    port = refused_url.rsplit(":", 1)[1]
    result = produce_report(
        report_settings([payload_endpoint()]),
        targets=targets_for(bench_server),
        conninfo=f"host=127.0.0.1 port={port} dbname=app user=app connect_timeout=2",
        mapping=attachments,
        created_at=START,
    )
    assert result.document["database"] is None
    assert result.document["warnings"][0].startswith("Database figures are missing")
    assert result.document["http"]["endpoints"][0]["n"] == 12


def test_no_endpoints_warned():
    result = produce_report(report_settings([]), targets={}, created_at=START)
    assert result.document["http"] is None
    assert "report.endpoints" in result.document["warnings"][0]


def chain_figures() -> dict:
    sizes_before = {
        "heap_bytes": 8192,
        "toast_bytes": 40_000_000,
        "indexes_bytes": 16384,
        "total_bytes": 40_024_576,
    }
    sizes_after = {
        "heap_bytes": 8192,
        "toast_bytes": 1_000_000,
        "indexes_bytes": 16384,
        "total_bytes": 1_024_576,
    }
    return {
        "run_id": "scheduled__2026-03-01",
        "preflight": {
            "status": "PASS",
            "summary": "Preflight PASS: 0 FAIL, 0 WARN, 0 UNKNOWN, 9 PASS in 1.2 s",
        },
        "offload": {
            "rows_offloaded": 120,
            "bytes_offloaded": 20 * 1024 * 1024,
            "seconds": 4.0,
            "failed_rows": 1,
        },
        "verification": {"status": "passed", "checked_rows": 120, "mismatches": 0},
        "table_sizes": {"before_vacuum": sizes_before, "after_vacuum": sizes_after},
        "disk": {
            "before": {"path": "/data", "free_bytes": 10**9},
            "after": {"path": "/data", "free_bytes": 2 * 10**9},
        },
    }


def test_chain_figures_included(tmp_path):
    result = produce_report(report_settings([]), targets={}, chain=chain_figures(), created_at=START)
    chain = result.document["chain"]
    assert result.document["trigger"] == "chain"
    assert chain["offload"]["rows"] == 120
    assert chain["offload"]["failures"] == 1
    assert "rows_offloaded" not in chain["offload"]
    assert chain["offload"]["throughput_mib_s"] == 5.0
    assert chain["table_sizes"]["after"]["toast_bytes"] == 1_000_000
    assert "- Offload: 120 rows, 20,971,520 B (20.0 MiB) moved, 5.0 MiB/s, failures 1" in result.markdown
    assert "Table size before and after VACUUM" in result.html


def test_chain_figures_type_checked():
    with pytest.raises(ValueError, match="offload.rows must be a number"):
        produce_report(report_settings([]), targets={}, chain={"offload": {"rows": "many"}}, created_at=START)


def run_at(server, store, offset_seconds, delay_ms, **overrides):
    return produce_report(
        report_settings([payload_endpoint(delay_ms=delay_ms)], **overrides),
        targets=targets_for(server),
        stores=[store],
        run_id=f"run{offset_seconds}",
        created_at=START + timedelta(seconds=offset_seconds),
    )


def test_slower_run_flagged(bench_server, tmp_path):
    store = LocalReportStore(tmp_path)
    run_at(bench_server, store, 0, delay_ms=0)
    run_at(bench_server, store, 1, delay_ms=0)
    slower = run_at(bench_server, store, 2, delay_ms=60)
    entry = slower.document["comparison"]["endpoints"][0]
    assert entry["baseline_runs"] == 2
    assert slower.regressions == ["page (api)"]
    assert "**Regressions: page (api)**" in slower.markdown
    assert "1 regressed: page (api)" in slower.html


def test_regression_fails_when_configured(bench_server, tmp_path):
    store = LocalReportStore(tmp_path)
    run_at(bench_server, store, 0, delay_ms=0)
    slower = run_at(bench_server, store, 1, delay_ms=60, fail_on_regression=True)
    with pytest.raises(BenchmarkRegression, match="regression on page \\(api\\)"):
        raise_on_regression(slower, slower.document["settings"])
    assert store.list_ids()[0] == slower.report_id


def test_regression_passes_by_default(bench_server, tmp_path):
    store = LocalReportStore(tmp_path)
    run_at(bench_server, store, 0, delay_ms=0)
    slower = run_at(bench_server, store, 1, delay_ms=60)
    assert raise_on_regression(slower, slower.document["settings"]) is None


def test_trend_spans_stored_runs(bench_server, tmp_path):
    store = LocalReportStore(tmp_path)
    for offset in range(3):
        last = run_at(bench_server, store, offset, delay_ms=0, trend_runs=2)
    assert [run["report_id"] for run in last.document["trend"]["runs"]] == [
        "20260301T120001Z_run1",
        "20260301T120002Z_run2",
    ]


def test_previous_footprint_kept(bench_server, pg_dsn, attachments, tmp_path):
    store = LocalReportStore(tmp_path)
    for offset in range(2):
        last = produce_report(
            report_settings([]),
            targets={},
            conninfo=pg_dsn,
            mapping=attachments,
            stores=[store],
            created_at=START + timedelta(seconds=offset),
        )
    assert last.document["comparison"]["previous_report_id"] == "20260301T120000Z_adhoc"
    assert last.document["comparison"]["previous_footprint"]["inline_bytes"] == 4096
    assert "Table size, previous run and this run" in last.html


def test_store_failure_raises_after_others(bench_server, s3_client, bucket, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    stores = [LocalReportStore(blocker), BucketReportStore(s3_client, bucket, "reports/")]
    with pytest.raises(TransientError, match="Could not store report 20260301T120000Z_adhoc"):
        produce_report(
            report_settings([payload_endpoint()]),
            targets=targets_for(bench_server),
            stores=stores,
            created_at=START,
        )
    assert BucketReportStore(s3_client, bucket, "reports/").list_ids() == ["20260301T120000Z_adhoc"]
