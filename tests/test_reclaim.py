"""VACUUM (ANALYZE), VACUUM FULL and pg_repack on a real Postgres, measured on the relation files.

Each test builds an attachments table in its own schema with incompressible bytea, clears the
bytes of some rows as an offload does, and reclaims. File sizes are read with ``os.stat`` under
``$PG_DATA_DIR`` (the data directory of the local cluster started by scripts/services.py).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from attachment_ops.config import MaintenanceConfig, load_config
from attachment_ops.errors import ConfigurationError, PermanentError, TransientError
from attachment_ops.reclaim import (
    full_reclaim,
    libpq_environment,
    parse_vacuum_verbose,
    pg_repack_status,
    vacuum_analyze,
)

MIB = 1024 * 1024
ROWS = 24
BLOB_BYTES = 1 * MIB


def table_config(schema: str, **reclaim: object) -> MaintenanceConfig:
    return load_config(
        {
            "attachments": {"table": f"{schema}.document_attachments"},
            "reclaim": {"lock_timeout_ms": 2000, "statement_timeout_ms": 120000, **reclaim},
        }
    )


def create_table(conn: psycopg.Connection, schema: str, rows: int = ROWS, size: int = BLOB_BYTES) -> None:
    table = sql.Identifier(schema, "document_attachments")
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, bytes bytea, storage_backend text NOT NULL DEFAULT 'db',"
            " storage_key text, created_at timestamptz NOT NULL DEFAULT now(), content_type text, filename text)"
        ).format(table)
    )
    with conn.cursor() as cur:
        for row_id in range(1, rows + 1):
            cur.execute(
                sql.SQL("INSERT INTO {} (id, bytes) VALUES (%s, %s)").format(table),
                (row_id, os.urandom(size)),
            )


def offload_rows(conn: psycopg.Connection, schema: str, first: int, last: int) -> int:
    """Clear the bytes of rows ``first..last`` as an offload's flip does; return the bytes cleared."""
    table = sql.Identifier(schema, "document_attachments")
    cleared = conn.execute(
        sql.SQL(
            "UPDATE {} SET storage_backend = 's3', storage_key = 'attachments/' || id || '/x', bytes = NULL"
            " WHERE id BETWEEN %s AND %s RETURNING id"
        ).format(table),
        (first, last),
    ).fetchall()
    return len(cleared) * BLOB_BYTES


def relation_file_bytes(conn: psycopg.Connection, schema: str) -> int:
    """Sum the sizes of every file of the table, its indexes, its TOAST table and the TOAST index."""
    data_dir = Path(os.environ["PG_DATA_DIR"])
    rows = conn.execute(
        "WITH t AS (SELECT %s::regclass::oid AS oid)"
        " SELECT pg_relation_filepath(r) FROM ("
        "  SELECT oid AS r FROM t"
        "  UNION ALL SELECT indexrelid FROM pg_index, t WHERE indrelid = t.oid"
        "  UNION ALL SELECT reltoastrelid FROM pg_class, t WHERE pg_class.oid = t.oid AND reltoastrelid <> 0"
        "  UNION ALL SELECT indexrelid FROM pg_index, pg_class, t"
        "   WHERE pg_class.oid = t.oid AND indrelid = pg_class.reltoastrelid"
        " ) relations",
        (f'"{schema}".document_attachments',),
    ).fetchall()
    total = 0
    for (relative,) in rows:
        base = data_dir / relative
        for path in base.parent.glob(base.name + "*"):
            suffix = path.name[len(base.name) :]
            # Segments (".1") and forks ("_fsm", "_vm") of this relation only: file 1234 must not count 12345.
            if suffix == "" or suffix.startswith((".", "_")):
                total += path.stat().st_size
    return total


@pytest.fixture
def app_conn(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def filled(app_conn, pg_schema):
    create_table(app_conn, pg_schema)
    return pg_schema


@pytest.fixture(scope="session")
def pg_repack_extension(admin_dsn):
    """Install the pg_repack extension in the test database once; the demo may use it too."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_repack")


def test_vacuum_reports_reusable_space(app_conn, filled, pg_dsn):
    # Rows at the end of the TOAST file stay inline, so truncation cannot return the cleared space.
    offloaded = offload_rows(app_conn, filled, 1, ROWS - 4)
    total_before = app_conn.execute(
        "SELECT pg_total_relation_size(%s::regclass)", (f"{filled}.document_attachments",)
    ).fetchone()[0]

    result = vacuum_analyze(pg_dsn, table_config(filled))

    assert result["before"]["total_bytes"] == total_before
    assert result["before"]["toast_bytes"] > ROWS * BLOB_BYTES
    assert result["pages_truncated"]["toast"] == 0
    assert result["returned_to_os_bytes"] < offloaded * 0.1
    assert result["space_after"]["source"] == "pgstattuple_approx"
    assert result["space_after"]["toast"]["free_bytes"] >= offloaded * 0.9
    assert result["reusable_bytes"] >= offloaded * 0.9
    assert result["space_after"]["heap"]["dead_tuples"] == 0
    assert result["vacuum_verbose"]["toast"]["tuples_removed"] > 0
    assert "Space in the middle of a file stays allocated" in result["message"]


def test_vacuum_truncates_trailing_pages(app_conn, filled, pg_dsn):
    offloaded = offload_rows(app_conn, filled, 1, ROWS)

    result = vacuum_analyze(pg_dsn, table_config(filled))

    assert result["pages_truncated"]["toast"] >= offloaded // 8192 * 0.9
    assert result["returned_to_os_bytes"] >= offloaded * 0.9
    assert result["after"]["total_bytes"] == (
        result["after"]["heap_bytes"] + result["after"]["toast_bytes"] + result["after"]["indexes_bytes"]
    )


def test_vacuum_sets_session_timeouts(filled, pg_dsn):
    config = table_config(filled, lock_timeout_ms=750, statement_timeout_ms=60000)

    result = vacuum_analyze(pg_dsn, config)

    assert result["session"] == {"autocommit": True, "lock_timeout": "750ms", "statement_timeout": "1min"}


def test_vacuum_rejects_transaction_connection(filled, pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=False) as conn:
        with pytest.raises(ValueError, match="VACUUM cannot run inside a transaction block"):
            vacuum_analyze(conn, table_config(filled))


def test_vacuum_accepts_autocommit_connection(app_conn, filled):
    result = vacuum_analyze(app_conn, table_config(filled))

    assert result["session"]["autocommit"] is True


def test_postgres_rejects_vacuum_in_transaction(app_conn, filled):
    """The reason for the autocommit rule: Postgres itself rejects VACUUM in a transaction block."""
    with pytest.raises(psycopg.errors.ActiveSqlTransaction), app_conn.transaction():
        app_conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(filled, "document_attachments")))


def test_lock_timeout_fails_fast(filled, pg_dsn):
    config = table_config(filled, lock_timeout_ms=400, statement_timeout_ms=60000)
    with psycopg.connect(pg_dsn) as holder:
        holder.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(filled, "document_attachments")
            )
        )
        holder_pid = holder.info.backend_pid
        started = time.monotonic()

        with pytest.raises(TransientError, match="timed out after waiting 400 ms for a lock") as caught:
            vacuum_analyze(pg_dsn, config)

        elapsed = time.monotonic() - started
        holder.rollback()
    assert elapsed < 3.0
    assert f"pid {holder_pid}" in str(caught.value)
    assert "AccessExclusiveLock" in str(caught.value)


def test_old_transaction_named(app_conn, filled, pg_dsn):
    config = table_config(filled, old_transaction_seconds=0)
    with psycopg.connect(pg_dsn) as reader:
        reader_pid = reader.info.backend_pid
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(filled, "document_attachments"))
        )
        offload_rows(app_conn, filled, 1, ROWS)

        result = vacuum_analyze(pg_dsn, config)

        reader.rollback()
    pids = [holder.get("pid") for holder in result["xmin_holders"]]
    assert reader_pid in pids
    assert result["vacuum_verbose"]["toast"]["dead_not_removable"] > 0
    assert f"pid {reader_pid}" in result["message"]


@pytest.mark.parametrize(
    ("reclaim", "message"),
    [
        ({"lock_timeout_ms": 0}, "lock_timeout_ms must be positive"),
        (
            {"lock_timeout_ms": 5000, "statement_timeout_ms": 5000},
            "must be below reclaim.statement_timeout_ms",
        ),
    ],
)
def test_invalid_timeouts_rejected(filled, pg_dsn, reclaim, message):
    with pytest.raises(ConfigurationError, match=message):
        vacuum_analyze(pg_dsn, table_config(filled, **reclaim))


def test_vacuum_full_returns_offloaded_bytes(app_conn, filled, pg_dsn):
    offloaded = offload_rows(app_conn, filled, 1, ROWS - 2)
    files_before = relation_file_bytes(app_conn, filled)

    result = full_reclaim(pg_dsn, table_config(filled), "vacuum_full")

    files_after = relation_file_bytes(app_conn, filled)
    assert files_before - files_after >= offloaded * 0.9
    assert result["returned_to_os_bytes"] >= offloaded * 0.9
    assert result["after"]["toast_bytes"] >= 2 * BLOB_BYTES


def test_pg_repack_returns_offloaded_bytes(app_conn, filled, admin_dsn, pg_repack_extension):
    offloaded = offload_rows(app_conn, filled, 1, ROWS - 2)
    files_before = relation_file_bytes(app_conn, filled)

    result = full_reclaim(admin_dsn, table_config(filled), "pg_repack")

    files_after = relation_file_bytes(app_conn, filled)
    assert files_before - files_after >= offloaded * 0.9
    assert result["returned_to_os_bytes"] >= offloaded * 0.9
    kept = app_conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE bytes IS NOT NULL").format(
            sql.Identifier(filled, "document_attachments")
        )
    ).fetchone()[0]
    assert kept == 2


def test_full_reclaim_waits_for_lock_timeout(filled, pg_dsn):
    config = table_config(filled, lock_timeout_ms=300, statement_timeout_ms=60000)
    with psycopg.connect(pg_dsn) as holder:
        holder.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(filled, "document_attachments"))
        )

        with pytest.raises(TransientError, match="VACUUM FULL on .* timed out after waiting 300 ms"):
            full_reclaim(pg_dsn, config, "vacuum_full")

        holder.rollback()


def test_pg_repack_missing_client_names_package(filled, admin_dsn):
    config = table_config(filled, pg_repack_path="/nonexistent/pg_repack")

    with pytest.raises(PermanentError, match="Install the Debian package postgresql-15-repack"):
        full_reclaim(admin_dsn, config, "pg_repack")


def test_pg_repack_needs_superuser(filled, pg_dsn, pg_repack_extension):
    with pytest.raises(PermanentError, match="pg_repack needs a superuser connection, and role app"):
        full_reclaim(pg_dsn, table_config(filled), "pg_repack")


@pytest.fixture
def scratch_database(admin_dsn):
    """A database without the pg_repack extension, dropped afterwards."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(**{**conninfo_to_dict(admin_dsn), "dbname": name})
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_pg_repack_missing_extension_message(scratch_database):
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA s")
        create_table(conn, "s", rows=1, size=10)
        status = pg_repack_status(conn, table_config("s"))

    assert status["problem"].startswith("The pg_repack extension is not installed in database t_")
    assert "CREATE EXTENSION pg_repack" in status["problem"]


def test_full_reclaim_rejects_unknown_method(filled, pg_dsn):
    with pytest.raises(ConfigurationError, match="method 'cluster' is invalid"):
        full_reclaim(pg_dsn, table_config(filled), "cluster")


def test_libpq_environment_carries_password():
    environment = libpq_environment("host=127.0.0.1 port=5432 user=app password=s3cret dbname=app")

    assert environment == {
        "PGHOST": "127.0.0.1",
        "PGPORT": "5432",
        "PGUSER": "app",
        "PGPASSWORD": "s3cret",
        "PGDATABASE": "app",
    }


def test_parse_vacuum_verbose_figures():
    messages = [
        'vacuuming "app.public.t"',
        'finished vacuuming "app.public.t": index scans: 0\npages: 0 removed, 1 remain, 1 scanned (100.00% of total)'
        "\ntuples: 25 removed, 30 remain, 0 are dead but not yet removable",
        'finished vacuuming "app.pg_toast.pg_toast_16445": index scans: 1\npages: 300 removed, 61 remain, 361 '
        "scanned (100.00% of total)\ntuples: 1225 removed, 245 remain, 7 are dead but not yet removable",
    ]

    parsed = parse_vacuum_verbose(messages)

    assert parsed["heap"] == {
        "relation": "app.public.t",
        "pages_removed": 0,
        "pages_remain": 1,
        "tuples_removed": 25,
        "dead_not_removable": 0,
    }
    assert parsed["toast"]["pages_removed"] == 300
    assert parsed["toast"]["dead_not_removable"] == 7
