"""Security: secrets stay out of logs and reports, identifiers cannot inject SQL, HTML is escaped,
Docker access is read-only in the compose file, and the report page rejects anonymous requests.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from attachment_ops.config import load_config
from attachment_ops.errors import ConfigurationError, MappingError, PermanentError
from attachment_ops.offload.restore import restore_rows
from attachment_ops.reclaim import vacuum_analyze
from attachment_ops.report.build import produce_report
from attachment_ops.report.endpoints import Target
from attachment_ops.report.history import LocalReportStore
from attachment_ops.storage import S3Settings, make_s3_client
from attachment_ops.verification import verify
from tests.faults.s3_proxy import FaultProxy, Rule, Signer
from tests.offload.helpers import run_offload
from tests.reliability.dataset import Dataset, RowSpec, assert_intact, random_rows
from tests.reliability.summary import RECORD

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "<script>alert(1)</script>"
# Loggers that print HTTP headers at DEBUG; the Authorization header names the access key id (not a
# secret) and a signature derived from the secret (not the secret itself).
WIRE_LOGGERS = ("botocore", "urllib3", "s3transfer")


@pytest.fixture
def distinctive_credentials() -> dict[str, str]:
    """Distinctive S3 credentials that only the re-signing proxy accepts."""
    return {
        "access_key": f"RELKEY{uuid.uuid4().hex[:14].upper()}",
        "secret_key": f"rel-secret-{uuid.uuid4().hex}",
    }


@pytest.fixture
def signing_proxy(s3_settings) -> Iterator[FaultProxy]:
    proxy = FaultProxy(
        upstream=os.environ["S3_ENDPOINT_URL"],
        resign=Signer(s3_settings.access_key_id, s3_settings.secret_access_key),
    ).start()
    yield proxy
    proxy.stop()


def report_settings(**overrides: Any) -> dict[str, Any]:
    return load_config({"report": {"warmup": 0, "samples": 2, **overrides}}).section("report")


def outputs_of(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in folder.rglob("report.*")}


def airflow_environment(
    monkeypatch: Any, dataset: Dataset, role: Any, proxy: FaultProxy, credentials: dict[str, str]
) -> None:
    """Set the connections and the maintenance_config Variable of task runs as environment variables."""
    params = conninfo_to_dict(role.dsn)
    monkeypatch.setenv(
        "AIRFLOW_CONN_REL_POSTGRES",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": params["host"],
                "port": int(params["port"]),
                "login": role.name,
                "password": role.password,
                "schema": params["dbname"],
            }
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_REL_S3",
        json.dumps(
            {
                "conn_type": "aws",
                "login": credentials["access_key"],
                "password": credentials["secret_key"],
                "extra": {"endpoint_url": proxy.url, "region_name": "us-east-1"},
            }
        ),
    )
    config = {
        **dataset.config.data,
        "connections": {**dataset.config.data["connections"], "postgres": "rel_postgres", "s3": "rel_s3"},
    }
    monkeypatch.setenv("AIRFLOW_VAR_MAINTENANCE_CONFIG", json.dumps(config))


def run_tasks(dataset: Dataset) -> dict[str, Any]:
    """Run the task bodies of the offload, verification, restore and VACUUM stages, as Airflow would."""
    from attachment_ops.tasks import offload as offload_tasks
    from attachment_ops.tasks import postgres as postgres_tasks

    run_id = "manual__security"
    plan = offload_tasks.plan({})
    results = [offload_tasks.offload_batch(batch, plan["params"], run_id) for batch in plan["batches"]]
    summary = offload_tasks.summarize(plan, results)
    verified = postgres_tasks.verify({"run_id": run_id, "params": {"verify_scope": "all"}}, summary)
    restored = offload_tasks.restore({"row_ids": dataset.offloaded_ids()[:2]}, "manual__restore")
    vacuumed = postgres_tasks.vacuum({"params": {}})
    return {"offload": summary, "verification": verified, "restore": restored, "vacuum": vacuumed}


def test_secrets_absent_from_logs_and_reports(
    rng,
    make_dataset,
    throwaway_role,
    signing_proxy,
    distinctive_credentials,
    monkeypatch,
    caplog,
    tmp_path,
    s3_client,
):
    caplog.set_level(logging.DEBUG)
    dataset = make_dataset(random_rows(rng, 6, max_size=20_000), dsn=throwaway_role.dsn)
    client = make_s3_client(
        S3Settings(
            endpoint_url=signing_proxy.url,
            region_name="us-east-1",
            access_key_id=distinctive_credentials["access_key"],
            secret_access_key=distinctive_credentials["secret_key"],
        )
    )
    errors: list[str] = []

    # The library, called directly: offload, verification, restore, VACUUM and the report.
    offloaded = run_offload(dataset.dsn, client, dataset.config, run_id="library")
    verified = verify(dataset.dsn, client, dataset.config, scope="all", reread_fraction=1.0)
    restored = restore_rows(
        dataset.dsn, client, dataset.config, run_id="restore", row_ids=dataset.offloaded_ids()[:2]
    )
    vacuumed = vacuum_analyze(dataset.dsn, dataset.config)
    # The Airflow task bodies, with the same secrets in Airflow connections.
    airflow_environment(monkeypatch, dataset, throwaway_role, signing_proxy, distinctive_credentials)
    tasks = run_tasks(dataset)
    # Failures: a wrong database password, and credentials the S3 server rejects.
    wrong = throwaway_role.dsn.replace(throwaway_role.password, f"{throwaway_role.password}-wrong")
    with pytest.raises(PermanentError) as bad_password:
        run_offload(wrong, client, dataset.config)
    errors.append(str(bad_password.value))
    signing_proxy.rules = [Rule("rewrite_auth", times=-1)]
    with pytest.raises(PermanentError) as bad_key:
        run_offload(dataset.dsn, client, dataset.config, run_id="rejected")
    errors.append(str(bad_key.value))
    signing_proxy.rules = []
    report = produce_report(
        report_settings(),
        targets={},
        conninfo=throwaway_role.dsn,
        mapping=dataset.config.mapping,
        chain={"offload": offloaded, "verification": verified.to_dict(), "restore": restored, "tasks": tasks,
               "table_sizes": {"before": vacuumed["before"], "after": vacuumed["after"]}},
        stores=[LocalReportStore(tmp_path)],
        run_id="security",
    )  # fmt: skip

    texts = {"log": caplog.text, "errors": "\n".join(errors), **outputs_of(tmp_path)}
    package_log = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith(WIRE_LOGGERS)
    )
    secrets = {
        "S3 secret key": distinctive_credentials["secret_key"],
        "Postgres password": throwaway_role.password,
    }
    RECORD.figure("secret search: log records", len(caplog.records))
    RECORD.figure("secret search: report files", len(outputs_of(tmp_path)))
    assert len(outputs_of(tmp_path)) == 3
    assert report.document["database"]["attachments"]["offloaded_rows"] >= 1
    assert "password authentication failed" in errors[0]
    assert re.search(r"InvalidAccessKeyId|HTTP 403", errors[1])
    for name, secret in secrets.items():
        for where, text in texts.items():
            assert secret not in text, f"{name} found in {where}"
    for where in ("errors", "report.json", "report.md", "report.html"):
        assert distinctive_credentials["access_key"] not in texts[where], where
    assert distinctive_credentials["access_key"] not in package_log
    RECORD.bad_input(
        "secrets in logs and reports",
        f"S3 secret key and Postgres password absent from {len(caplog.records)} DEBUG log records (every "
        "logger), error messages and report.json/md/html; access key id absent outside botocore's wire log",
    )


@pytest.fixture
def victim(pg_dsn, pg_schema) -> Iterator[sql.Identifier]:
    """A table that an injected statement would drop or empty."""
    table = sql.Identifier(pg_schema, "victim")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(table))
        conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 3)").format(table))
    yield table


def victim_rows(dsn: str, table: sql.Identifier) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]


INJECTIONS = {
    "table with a statement": ("attachments", "table", '{schema}.x"; DROP TABLE {schema}.victim; --'),
    "table with a quote and comment": ("attachments", "table", '{schema}.attachments_0" WHERE 1=1; --'),
    "table with three dotted parts": ("attachments", "table", "{schema}.victim; DROP TABLE {schema}.victim"),
    "primary key": ("attachments", "primary_key", 'id"); DROP TABLE {schema}.victim; --'),
    "content column": ("attachments", "content_column", "bytes = NULL; DELETE FROM {schema}.victim; --"),
    "backend column": ("attachments", "backend_column", "storage_backend\" = 'db' OR 1=1; --"),
    "key column": ("attachments", "key_column", "storage_key'; TRUNCATE {schema}.victim; --"),
    "filename column": ("attachments", "filename_column", "filename) FROM pg_user; --"),
    "inline value": ("attachments", "inline_value", "db' OR '1'='1"),
    "ledger schema": ("offload", "ledger_schema", '{schema}_l"; DROP TABLE {schema}.victim; --'),
}


@pytest.mark.parametrize("case", list(INJECTIONS))
def test_sql_identifier_injection(case, make_dataset, victim, pg_dsn, s3_client):
    section, key, template = INJECTIONS[case]
    dataset = make_dataset([RowSpec(1, b"first"), RowSpec(2, b"second")])
    value = template.format(schema=dataset.schema)
    data = {**dataset.config.data, section: {**dataset.config.data[section], key: value}}
    handled: list[str] = []

    try:
        config = load_config(data)
        stages = {
            "offload": lambda: run_offload(dataset.dsn, s3_client, config, run_id="inject"),
            "verify": lambda: verify(dataset.dsn, s3_client, config, scope="all"),
            "restore": lambda: restore_rows(dataset.dsn, s3_client, config, run_id="inject", row_ids=[1, 2]),
            "vacuum": lambda: vacuum_analyze(dataset.dsn, config),
        }
        for stage, call in stages.items():
            try:
                outcome = call()
                moved = outcome.get("rows_offloaded") if isinstance(outcome, dict) else None
                handled.append(f"{stage} ran" + (f" and moved {moved} rows" if moved is not None else ""))
            except (MappingError, ConfigurationError) as error:
                handled.append(f"{stage}: {type(error).__name__}")
    except ConfigurationError as error:
        handled.append(f"configuration: {type(error).__name__}")
    finally:
        if key == "ledger_schema":
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(value)))

    assert victim_rows(pg_dsn, victim) == 3
    assert_intact(dataset, s3_client)
    RECORD.bad_input(f"SQL injection via {case}", "; ".join(handled) + "; victim table intact")


@pytest.fixture
def page_server() -> Iterator[str]:
    """A local HTTP endpoint for the report's measurement loop: every GET returns 200 and a short body."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_GET(self) -> None:
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_html_escapes_script(make_dataset, page_server, tmp_path, s3_client):
    dataset = make_dataset([RowSpec(1, b"data", f"{SCRIPT}.pdf", "text/html")])
    summary = run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload")
    summary["failed"] = [{"row_id": 1, "error": f"{SCRIPT} in an error"}]
    settings = report_settings(
        endpoints=[{"name": SCRIPT, "path": "/"}],
        sql_probes=[{"name": SCRIPT, "sql": f"SELECT filename FROM {dataset.schema}.{dataset.table}"}],
    )

    result = produce_report(
        settings,
        targets={"api": Target("api", page_server)},
        conninfo=dataset.dsn,
        mapping=dataset.config.mapping,
        chain={"offload": summary, "label": SCRIPT},
        stores=[LocalReportStore(tmp_path)],
        run_id="escape",
    )

    page = (tmp_path / result.report_id / "report.html").read_text()
    assert re.search("<script", page, re.IGNORECASE) is None
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.pdf" in page
    assert page.count("&lt;script&gt;") >= 3
    assert "<script" not in result.markdown
    assert "default-src 'none'" in page
    RECORD.bad_input("<script> in filename, endpoint and probe names", "escaped in report.html and report.md")


PLUGIN_FILE = ROOT / "plugins" / "benchmark_reports.py"


def load_plugin() -> Any:
    """Import the report plugin from plugins/, or skip when it is not in the repository yet."""
    import importlib.util

    if not PLUGIN_FILE.exists():
        pytest.skip(f"{PLUGIN_FILE.relative_to(ROOT)} is not in the repository yet; no report page to check")
    spec = importlib.util.spec_from_file_location("benchmark_reports", PLUGIN_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_list_escapes_script():
    plugin = load_plugin()
    summary = {"report_id": "20260101T000000Z_x", "dag_id": SCRIPT, "trigger": SCRIPT, "warnings": SCRIPT}

    page = plugin.render_list_page(SCRIPT, ["20260101T000000Z_x"], [summary], [SCRIPT])

    assert re.search("<script", page, re.IGNORECASE) is None
    assert page.count("&lt;script&gt;") == 5


COMPOSE_FILE = ROOT / "docker-compose.yaml"


@pytest.fixture
def compose() -> dict[str, Any]:
    if not COMPOSE_FILE.exists():
        pytest.skip(f"{COMPOSE_FILE.name} is not in the repository yet; nothing to check")
    import yaml

    return yaml.safe_load(COMPOSE_FILE.read_text())


def socket_mounts(service: dict[str, Any]) -> list[str]:
    """Return the service's volumes that mount the Docker socket, as ``source:target[:ro]``."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            text = volume
        else:
            # The long syntax: source, target and a read_only flag.
            text = f"{volume.get('source')}:{volume.get('target')}"
            if volume.get("read_only"):
                text += ":ro"
        if "docker.sock" in text:
            mounts.append(text)
    return mounts


def test_compose_docker_access_read_only(compose):
    services = compose["services"]
    mounting = {name: socket_mounts(service) for name, service in services.items() if socket_mounts(service)}
    proxy_name = next(iter(mounting), None)

    assert list(mounting) == ["docker-socket-proxy"]
    assert all(mount.endswith(":ro") for mount in mounting[proxy_name])
    proxy = services[proxy_name]
    environment = proxy.get("environment", {})
    # With POST 0, the socket proxy rejects every method but GET and HEAD with 403.
    assert str(environment.get("POST")) == "0"
    for endpoint in ("CONTAINERS", "IMAGES", "EXEC", "VOLUMES", "NETWORKS"):
        assert str(environment.get(endpoint, "0")) == "0", endpoint
    assert proxy.get("read_only") is True
    for name, service in services.items():
        host = (
            (service.get("environment") or {}).get("DOCKER_HOST")
            if isinstance(service.get("environment"), dict)
            else None
        )
        if host:
            assert host.startswith(f"tcp://{proxy_name}:"), name
    networks = {name for name, service in services.items() if "docker-api" in (service.get("networks") or [])}
    assert networks == {proxy_name, "airflow-worker"}
    assert compose["networks"]["docker-api"]["internal"] is True
    RECORD.bad_input(
        "compose: Docker access of the preflight checks",
        "only the socket proxy mounts docker.sock (read-only); POST and write endpoints off; "
        "the worker reaches it over an internal network",
    )


@pytest.fixture
def report_app() -> Any:
    plugin = load_plugin()
    from starlette.testclient import TestClient

    return TestClient(plugin.create_app())


REPORT_PATHS = ["/", "/reports/20260101T000000Z_run/", "/reports/20260101T000000Z_run/report.json"]


@pytest.mark.parametrize("path", REPORT_PATHS)
def test_report_page_refuses_anonymous(report_app, path):
    response = report_app.get(path)

    assert response.status_code == 401


def test_report_page_refuses_bad_token(report_app):
    from airflow.api_fastapi.app import init_auth_manager

    init_auth_manager()
    by_header = report_app.get("/", headers={"Authorization": "Bearer not-a-token"})
    by_cookie = report_app.get("/", cookies={"_token": "not-a-token"})

    assert by_header.status_code == 403
    assert by_cookie.status_code == 403
    RECORD.bad_input("report page without a valid token", "401 anonymous, 403 invalid token, on every route")
