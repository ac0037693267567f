from __future__ import annotations

import json
import logging

import psycopg
import pytest
from psycopg import sql

from attachment_ops.config import load_config
from attachment_ops.errors import ConfigurationError
from attachment_ops.report.airflow_task import (
    http_target_from_airflow,
    report_stores,
    resolve_targets,
    run_benchmark_report,
    target_from_connection_fields,
)
from attachment_ops.report.history import BucketReportStore, LocalReportStore
from tests.report.bench_server import BEARER_SECRET


@pytest.mark.parametrize(
    ("fields", "base_url"),
    [
        ({"host": "127.0.0.1", "port": 8080}, "http://127.0.0.1:8080"),
        ({"host": "127.0.0.1", "schema": "https"}, "https://127.0.0.1"),
        ({"host": "127.0.0.1", "schema": "app"}, "http://127.0.0.1"),
        ({"host": "http://127.0.0.1:9000/api/"}, "http://127.0.0.1:9000/api"),
        ({"host": "http://127.0.0.1/api", "port": 9000}, "http://127.0.0.1:9000/api"),
        ({"host": "http://127.0.0.1:9000", "port": 9999}, "http://127.0.0.1:9000"),
    ],
)
def test_base_url_from_fields(fields, base_url):
    assert target_from_connection_fields("api", **fields).base_url == base_url


@pytest.mark.parametrize(
    ("fields", "auth", "token", "basic"),
    [
        ({"extra": {"auth_type": "bearer", "token": "t1"}}, "bearer", "t1", None),
        ({"extra": {"auth_type": "bearer"}, "password": "t2"}, "bearer", "t2", None),
        ({"extra": '{"token": "t3"}'}, "bearer", "t3", None),
        ({"login": "u", "password": "p"}, "basic", None, ("u", "p")),
        ({"extra": {"auth_type": "basic"}, "login": "u"}, "basic", None, ("u", "")),
        ({"extra": {"auth_type": "none"}, "login": "u", "password": "p"}, "none", None, None),
        ({}, "none", None, None),
    ],
)
def test_auth_from_fields(fields, auth, token, basic):
    target = target_from_connection_fields("api", host="127.0.0.1", **fields)
    assert target.auth_kind == auth
    assert target.bearer_token == token
    assert target.basic_auth == basic


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"host": None}, "has no host"),
        ({"host": "h", "extra": "{bad"}, "extra is not valid JSON"),
        ({"host": "h", "extra": {"auth_type": "oauth"}}, "auth_type must be one of"),
        ({"host": "h", "extra": {"auth_type": "bearer"}}, "neither extra.token nor a password"),
        ({"host": "h", "extra": {"auth_type": "basic"}}, "has no login"),
        ({"host": "h", "extra": {"headers": {"X-N": 1}}}, "headers must be an object of string values"),
        ({"host": "h", "extra": {"verify": 1}}, "verify must be true, false or a CA bundle path"),
    ],
)
def test_incomplete_connection_rejected(fields, message):
    with pytest.raises(ConfigurationError, match=message):
        target_from_connection_fields("api", conn_id="app_api", **fields)


def test_error_message_hides_token():
    with pytest.raises(ConfigurationError) as raised:
        target_from_connection_fields("api", host="h", extra={"auth_type": "oauth", "token": BEARER_SECRET})
    assert BEARER_SECRET not in str(raised.value)


def http_connection(base_url: str, token: str | None = None) -> str:
    extra = {"auth_type": "bearer", "token": token} if token else {}
    return json.dumps({"conn_type": "http", "host": base_url, "extra": extra})


def test_airflow_connection_resolved(monkeypatch, bench_server):
    monkeypatch.setenv("AIRFLOW_CONN_REPORT_TEST_API", http_connection(bench_server.base_url, BEARER_SECRET))
    target = http_target_from_airflow("report_test_api", "api")
    assert target.base_url == bench_server.base_url
    assert target.bearer_token == BEARER_SECRET
    assert target.conn_id == "report_test_api"


def test_missing_proxy_connection_skipped(monkeypatch, bench_server):
    monkeypatch.setenv("AIRFLOW_CONN_REPORT_TEST_API", http_connection(bench_server.base_url))
    config = load_config(
        {
            "connections": {"api": "report_test_api", "api_proxy": "report_test_absent"},
            "report": {
                "endpoints": [
                    {"name": "a", "path": "/payload"},
                    {"name": "a", "path": "/payload", "connection": "api_proxy"},
                ]
            },
        }
    )
    targets, unavailable = resolve_targets(config)
    assert list(targets) == ["api"]
    assert "'report_test_absent' is not defined" in unavailable["api_proxy"]


def test_stores_from_config(tmp_path):
    config = load_config(
        {"storage": {"bucket": "b1"}, "report": {"prefix": "bench/", "local_dir": str(tmp_path)}}
    )
    bucket_store, local_store = report_stores(config)
    assert isinstance(bucket_store, BucketReportStore)
    assert bucket_store.location == "s3://b1/bench/"
    assert isinstance(local_store, LocalReportStore)
    assert local_store.root == tmp_path


@pytest.fixture
def airflow_environment(monkeypatch, bench_server, bucket, pg_schema, pg_dsn):
    """Connections and the maintenance_config Variable of a task run, from environment variables."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, bytes bytea, storage_backend text)").format(
                sql.Identifier(pg_schema, "document_attachments")
            )
        )
    config = {
        "connections": {"api": "report_task_api", "api_proxy": "report_task_proxy"},
        "storage": {"bucket": bucket},
        "attachments": {"table": f"{pg_schema}.document_attachments"},
        "report": {
            "warmup": 0,
            "samples": 3,
            "endpoints": [
                {"name": "page", "path": "/secured"},
                {"name": "page", "path": "/secured", "connection": "api_proxy"},
            ],
        },
    }
    monkeypatch.setenv("AIRFLOW_VAR_MAINTENANCE_CONFIG", json.dumps(config))
    monkeypatch.setenv("AIRFLOW_CONN_REPORT_TASK_API", http_connection(bench_server.base_url, BEARER_SECRET))
    monkeypatch.setenv(
        "AIRFLOW_CONN_REPORT_TASK_PROXY", http_connection(bench_server.base_url, BEARER_SECRET)
    )
    return bucket


def test_task_stores_and_logs(airflow_environment, s3_client, caplog):
    caplog.set_level(logging.INFO, logger="attachment_ops")
    summary = run_benchmark_report(run_id="manual__task", dag_id="benchmark_report")
    listed = s3_client.list_objects_v2(Bucket=airflow_environment, Prefix="reports/")
    keys = sorted(item["Key"].rsplit("/", 1)[1] for item in listed["Contents"])
    assert summary["report_id"].endswith("_manual__task")
    assert summary["regressions"] == []
    assert keys == ["report.html", "report.json", "report.md"]
    assert "| page | proxy | 3 |" in caplog.text
    assert BEARER_SECRET not in caplog.text
