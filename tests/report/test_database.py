from __future__ import annotations

import os

import psycopg
import pytest
from psycopg import sql

from attachment_ops.config import load_config
from attachment_ops.errors import ConfigurationError, MappingError
from attachment_ops.report.database import collect_database_figures, parse_probes

INLINE_SIZES = (10, 5000, 300_000)


@pytest.fixture
def attachments(pg_dsn, pg_schema):
    """An attachments table with 3 inline rows, 2 offloaded rows and 1 row of another backend."""
    table = sql.Identifier(pg_schema, "document_attachments")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigserial PRIMARY KEY, filename text, bytes bytea, "
                "storage_backend text NOT NULL, storage_key text)"
            ).format(table)
        )
        for size in INLINE_SIZES:
            conn.execute(
                sql.SQL("INSERT INTO {} (filename, bytes, storage_backend) VALUES (%s, %s, 'db')").format(
                    table
                ),
                (f"inline-{size}.bin", os.urandom(size)),
            )
        for number in range(2):
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (filename, storage_backend, storage_key) VALUES (%s, 's3', %s)"
                ).format(table),
                (f"offloaded-{number}.bin", f"attachments/{number}"),
            )
        conn.execute(
            sql.SQL("INSERT INTO {} (filename, storage_backend) VALUES ('odd.bin', 'other')").format(table)
        )
    return load_config({"attachments": {"table": f"{pg_schema}.document_attachments"}}).mapping


def relation_sizes(dsn: str, table: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT pg_total_relation_size(%s::regclass), pg_indexes_size(%s::regclass)", (table, table)
        ).fetchone()


def test_inline_rows_and_bytes(pg_dsn, attachments):
    figures = collect_database_figures(pg_dsn, attachments)["attachments"]
    assert figures["rows"] == 6
    assert figures["inline_rows"] == 3
    assert figures["inline_bytes"] == sum(INLINE_SIZES)
    assert figures["offloaded_rows"] == 2
    assert figures["other_rows"] == 1


def test_sizes_add_up(pg_dsn, attachments):
    figures = collect_database_figures(pg_dsn, attachments)["attachments"]
    total, indexes = relation_sizes(pg_dsn, attachments.table)
    assert figures["total_bytes"] == total
    assert figures["indexes_bytes"] == indexes
    assert figures["heap_bytes"] + figures["toast_bytes"] + figures["indexes_bytes"] == total
    assert figures["toast_bytes"] > 0


def test_database_size_reported(pg_dsn, attachments):
    figures = collect_database_figures(pg_dsn, attachments)
    with psycopg.connect(pg_dsn) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
    assert figures["database"] == name
    assert figures["database_bytes"] > figures["attachments"]["total_bytes"]


def test_missing_table_named(pg_dsn, pg_schema):
    mapping = load_config({"attachments": {"table": f"{pg_schema}.absent"}}).mapping
    with pytest.raises(MappingError, match="absent' not found"):
        collect_database_figures(pg_dsn, mapping)


def test_missing_column_named(pg_dsn, attachments):
    mapping = load_config({"attachments": {"table": attachments.table, "backend_column": "backend"}}).mapping
    with pytest.raises(MappingError, match="lacks a configured column"):
        collect_database_figures(pg_dsn, mapping)


def run_probes(dsn, mapping, probes, timeout_ms=2000):
    return collect_database_figures(dsn, mapping, probes=probes, probe_timeout_ms=timeout_ms)["probes"]


def test_probe_returns_rows(pg_dsn, attachments):
    probe = {"name": "count", "sql": f"SELECT count(*) AS rows FROM {attachments.table}"}
    (result,) = run_probes(pg_dsn, attachments, [probe])
    assert result["error"] is None
    assert result["columns"] == ["rows"]
    assert result["rows"] == [[6]]


def test_probe_times_out(pg_dsn, attachments):
    (result,) = run_probes(
        pg_dsn, attachments, [{"name": "sleep", "sql": "SELECT pg_sleep(5)"}], timeout_ms=100
    )
    assert result["error"] == "timed out after 100 ms"


def test_probe_cannot_write(pg_dsn, attachments):
    probe = {"name": "write", "sql": f"INSERT INTO {attachments.table} (storage_backend) VALUES ('db')"}
    (result,) = run_probes(pg_dsn, attachments, [probe])
    with psycopg.connect(pg_dsn) as conn:
        count = conn.execute(f"SELECT count(*) FROM {attachments.table}").fetchone()[0]
    assert "read-only transaction" in result["error"]
    assert count == 6


def test_failed_probe_spares_others(pg_dsn, attachments):
    probes = [
        {"name": "broken", "sql": "SELECT * FROM no_such_table"},
        {"name": "one", "sql": "SELECT 1 AS one"},
    ]
    broken, one = run_probes(pg_dsn, attachments, probes)
    assert "no_such_table" in broken["error"]
    assert one["rows"] == [[1]]


def test_probe_rows_truncated(pg_dsn, attachments):
    probe = {"name": "many", "sql": "SELECT generate_series(1, 60) AS i"}
    (result,) = run_probes(pg_dsn, attachments, [probe])
    assert len(result["rows"]) == 50
    assert result["truncated"] is True


def test_probe_values_made_json(pg_dsn, attachments):
    probe = {
        "name": "types",
        "sql": "SELECT 1.5::numeric, 2::numeric, timestamptz '2026-01-01 00:00:00+00', '\\x0102'::bytea, true",
    }
    (result,) = run_probes(pg_dsn, attachments, [probe])
    assert result["rows"][0][:2] == [1.5, 2]
    assert result["rows"][0][2].startswith("2026-01-01T")
    assert result["rows"][0][3:] == ["<2 bytes>", True]


@pytest.mark.parametrize(
    ("probes", "message"),
    [
        ([{"name": "x"}], "exactly the keys name and sql"),
        ([{"name": "", "sql": "SELECT 1"}], "name must be a non-empty string"),
        ([{"name": "x", "sql": " "}], "sql must be a non-empty string"),
        ([{"name": "x", "sql": "SELECT 1"}, {"name": "x", "sql": "SELECT 2"}], "used by an earlier probe"),
    ],
)
def test_invalid_probe_rejected(probes, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_probes(probes)
