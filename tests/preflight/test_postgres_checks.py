from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from attachment_ops.preflight.model import Status
from attachment_ops.preflight.postgres import check_postgres


def results_by_name(results: list[Any]) -> dict[str, Any]:
    return {result.name: result for result in results}


@pytest.fixture
def idle_session(pg_dsn: str) -> Iterator[Any]:
    """A session of the app role left idle inside an open transaction."""
    import psycopg

    application = f"preflight-idle-{uuid.uuid4().hex[:8]}"
    conn = psycopg.connect(pg_dsn, application_name=application)
    conn.execute("SELECT txid_current()")
    yield conn
    conn.rollback()
    conn.close()


def test_healthy_database_passes(pg_dsn: str, attachments_table: str, make_config: Any) -> None:
    config = make_config(attachments={"table": attachments_table})
    results, facts = check_postgres(pg_dsn, config)
    statuses = {result.name: result.status for result in results}
    # Sessions of other tests on the shared server may be idle in a transaction right now.
    assert statuses.pop("postgres old transactions") in (Status.PASS, Status.WARN)
    assert statuses == {
        "postgres server": Status.PASS,
        "postgres primary": Status.PASS,
        "postgres database size": Status.PASS,
        "postgres attachments table": Status.PASS,
        "postgres timeouts": Status.PASS,
    }
    assert facts.reachable is True


def test_table_sizes_match_catalog(pg_dsn: str, attachments_table: str, make_config: Any) -> None:
    import psycopg

    results, _ = check_postgres(pg_dsn, make_config(attachments={"table": attachments_table}))
    metrics = results_by_name(results)["postgres attachments table"].metrics
    with psycopg.connect(pg_dsn) as conn:
        heap, toast, indexes, total = conn.execute(
            "SELECT pg_relation_size(%s::regclass), pg_total_relation_size(reltoastrelid),"
            " pg_indexes_size(%s::regclass), pg_total_relation_size(%s::regclass)"
            " FROM pg_class WHERE oid = %s::regclass",
            (attachments_table,) * 4,
        ).fetchone()
    assert metrics["heap_bytes"] == heap
    assert metrics["toast_bytes"] == toast
    assert metrics["index_bytes"] == indexes
    assert metrics["total_bytes"] == total
    assert metrics["toast_bytes"] > 20 * 20000


def test_table_name_is_quoted(pg_dsn: str, pg_schema: str, make_config: Any) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL('CREATE TABLE {}."Odd Name" (id int)').format(sql.Identifier(pg_schema)))
    results, _ = check_postgres(pg_dsn, make_config(attachments={"table": f"{pg_schema}.Odd Name"}))
    table = results_by_name(results)["postgres attachments table"]
    assert table.status is Status.PASS
    assert table.metrics["table"] == f'"{pg_schema}"."Odd Name"'


def test_missing_table_fails(pg_dsn: str, pg_schema: str, make_config: Any) -> None:
    results, _ = check_postgres(pg_dsn, make_config(attachments={"table": f"{pg_schema}.absent"}))
    table = results_by_name(results)["postgres attachments table"]
    assert table.status is Status.FAIL
    assert table.error == "MappingError"
    assert table.value == f'table "{pg_schema}"."absent" not found in database app'


def test_idle_transaction_is_named(pg_dsn: str, idle_session: Any, make_config: Any) -> None:
    results, _ = check_postgres(pg_dsn, make_config())
    row = results_by_name(results)["postgres old transactions"]
    sessions = [item for item in row.metrics["sessions"] if item["pid"] == idle_session.info.backend_pid]
    assert row.status is Status.WARN
    assert len(sessions) == 1
    assert sessions[0]["user"] == "app"
    assert sessions[0]["application"] == idle_session.info.parameter_status("application_name")
    assert sessions[0]["state"] == "idle in transaction"
    assert f"pid {idle_session.info.backend_pid} (app, application preflight-idle-" in row.value
    assert "pg_terminate_backend" in row.hint


def test_old_active_transaction_is_named(pg_dsn: str, make_config: Any) -> None:
    import psycopg

    ready = threading.Event()
    with psycopg.connect(pg_dsn, application_name="preflight-old-active") as conn:
        conn.execute("SELECT txid_current()")

        def sleep_in_transaction() -> None:
            ready.set()
            conn.execute("SELECT pg_sleep(2.5)")

        worker = threading.Thread(target=sleep_in_transaction)
        worker.start()
        ready.wait()
        time.sleep(1.2)
        results, _ = check_postgres(pg_dsn, make_config(preflight={"postgres_old_transaction_seconds": 1}))
        worker.join()
        conn.rollback()
    row = results_by_name(results)["postgres old transactions"]
    states = [
        item["state"] for item in row.metrics["sessions"] if item["application"] == "preflight-old-active"
    ]
    assert row.status is Status.WARN
    assert states == ["active"]


def test_role_timeout_is_listed(admin_dsn: str, make_config: Any) -> None:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    role = f"preflight_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
        admin.execute(sql.SQL("ALTER ROLE {} SET statement_timeout = '30s'").format(sql.Identifier(role)))
    try:
        params = conninfo_to_dict(admin_dsn) | {"user": role, "password": password}
        results, _ = check_postgres(make_conninfo(**params), make_config())
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    row = results_by_name(results)["postgres timeouts"]
    assert row.status is Status.PASS
    assert row.metrics["inherited"]["statement_timeout"] == "30000"
    assert row.metrics["role_settings"] == [f"{role} in all databases: statement_timeout=30s"]
    assert row.metrics["session"]["statement_timeout"] == "10000"


def test_lock_timeout_above_statement_timeout_warns(pg_dsn: str, make_config: Any) -> None:
    config = make_config(offload={"lock_timeout_ms": 9000, "statement_timeout_ms": 5000})
    results, _ = check_postgres(pg_dsn, config)
    row = results_by_name(results)["postgres timeouts"]
    assert row.status is Status.WARN
    assert row.value.startswith("offload.lock_timeout_ms 9000 is not below offload.statement_timeout_ms 5000")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_server_fails(make_config: Any) -> None:
    conninfo = f"postgresql://app:x@127.0.0.1:{free_port()}/app"
    results, facts = check_postgres(conninfo, make_config(preflight={"postgres_timeout_seconds": 2}))
    assert [(result.name, result.status, result.error) for result in results] == [
        ("postgres server", Status.FAIL, "TransientError")
    ]
    assert "connection refused" in results[0].value.lower()
    assert facts.reachable is False


def test_wrong_password_fails(pg_dsn: str, make_config: Any) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    conninfo = make_conninfo(**(conninfo_to_dict(pg_dsn) | {"password": "wrong"}))
    results, _ = check_postgres(conninfo, make_config())
    assert results[0].status is Status.FAIL
    assert results[0].error == "PermanentError"
    assert "password authentication failed" in results[0].value
