"""Database footprint of the attachments table, and optional read-only SQL probes.

The session is read-only (``default_transaction_read_only``), so nothing here can change data.

Sizes, in bytes:

- ``heap_bytes``: the table's own files (main fork, free space map and visibility map).
- ``toast_bytes``: the TOAST table with its index, where large ``bytea`` values live.
- ``indexes_bytes``: every index of the table.
- ``total_bytes``: the sum of the three, as ``pg_total_relation_size`` reports it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from attachment_ops.config import AttachmentMapping
from attachment_ops.db import classify_pg_error, connect
from attachment_ops.errors import ConfigurationError, MappingError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

PROBE_MAX_ROWS = 50


def open_read_only(conninfo: str, *, statement_timeout_ms: int) -> psycopg.Connection:
    """Open an autocommit session in which every transaction is read-only."""
    conn = connect(conninfo, statement_timeout_ms=statement_timeout_ms, lock_timeout_ms=1000)
    conn.execute("SET default_transaction_read_only = on")
    return conn


def table_footprint(conn: psycopg.Connection, mapping: AttachmentMapping) -> dict[str, Any]:
    """Return sizes of the attachments table and the rows and bytes still stored inline.

    Counting inline bytes reads every row's length (``octet_length``, which does not decompress
    or fetch TOAST chunks for values stored uncompressed), so it scans the table once.

    :raises MappingError: when the table is missing.
    """
    from psycopg import sql

    schema, table = mapping.schema_and_table
    sizes = conn.execute(
        """
        SELECT c.oid,
               pg_table_size(c.oid) - coalesce(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0),
               coalesce(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0),
               pg_indexes_size(c.oid),
               pg_total_relation_size(c.oid),
               c.reltuples::bigint
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
        """,
        (schema, table),
    ).fetchone()
    if sizes is None:
        raise MappingError(
            f"Table {mapping.table!r} not found; set attachments.table to the schema-qualified name."
        )
    _, heap_bytes, toast_bytes, indexes_bytes, total_bytes, estimated_rows = sizes

    counts = sql.SQL(
        """
        SELECT count(*),
               count(*) FILTER (WHERE {backend} = %s),
               coalesce(sum(octet_length({content})) FILTER (WHERE {backend} = %s), 0),
               count(*) FILTER (WHERE {backend} = %s)
        FROM {schema}.{table}
        """
    ).format(
        backend=sql.Identifier(mapping.backend_column),
        content=sql.Identifier(mapping.content_column),
        schema=sql.Identifier(schema),
        table=sql.Identifier(table),
    )
    total_rows, inline_rows, inline_bytes, offloaded_rows = conn.execute(
        counts, (mapping.inline_value, mapping.inline_value, mapping.offloaded_value)
    ).fetchone()
    return {
        "table": mapping.table,
        "heap_bytes": heap_bytes,
        "toast_bytes": toast_bytes,
        "indexes_bytes": indexes_bytes,
        "total_bytes": total_bytes,
        "estimated_rows": estimated_rows,
        "rows": total_rows,
        "inline_rows": inline_rows,
        "inline_bytes": int(inline_bytes),
        "offloaded_rows": offloaded_rows,
        "other_rows": total_rows - inline_rows - offloaded_rows,
    }


def parse_probes(raw: Sequence[Any]) -> list[dict[str, str]]:
    """Validate ``report.sql_probes`` (a list of ``{name, sql}``) and return it.

    :raises ConfigurationError: on a missing or non-string name or sql, or a repeated name.
    """
    probes: list[dict[str, str]] = []
    names: set[str] = set()
    for index, entry in enumerate(raw):
        where = f"report.sql_probes[{index}]"
        if not isinstance(entry, Mapping) or set(entry) != {"name", "sql"}:
            raise ConfigurationError(f"{where} must be an object with exactly the keys name and sql.")
        name, text = entry["name"], entry["sql"]
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"{where}.name must be a non-empty string, got {name!r}.")
        if not isinstance(text, str) or not text.strip():
            raise ConfigurationError(f"{where}.sql must be a non-empty string.")
        if name in names:
            raise ConfigurationError(f"{where}.name {name!r} is used by an earlier probe.")
        names.add(name)
        probes.append({"name": name, "sql": text})
    return probes


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return f"<{len(value)} bytes>"
    return str(value)


def run_probe(conn: psycopg.Connection, probe: Mapping[str, str], timeout_ms: int) -> dict[str, Any]:
    """Run one probe in a read-only transaction with its own statement timeout.

    A probe that the database rejects, cancels or fails is reported with its error instead of
    raising, so one bad probe does not hide the rest of the report. At most ``PROBE_MAX_ROWS`` rows
    are kept.

    NOTE: a read-only transaction blocks writes, but not functions with side effects such as
    pg_terminate_backend or dblink; the probes are trusted operator configuration.
    """
    import psycopg

    started = time.perf_counter()
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{timeout_ms}ms",))
            cursor = conn.execute(probe["sql"])
            columns = [column.name for column in cursor.description or []]
            rows = cursor.fetchmany(PROBE_MAX_ROWS + 1) if cursor.description else []
    except psycopg.Error as error:
        classified = classify_pg_error(error, f"run probe {probe['name']!r}")
        timed_out = isinstance(error, psycopg.errors.QueryCanceled)
        log.warning("SQL probe %s failed: %s", probe["name"], classified)
        return {
            "name": probe["name"],
            "sql": probe["sql"],
            "error": f"timed out after {timeout_ms} ms" if timed_out else str(classified),
            "columns": [],
            "rows": [],
            "truncated": False,
        }
    elapsed_ms = (time.perf_counter() - started) * 1000
    return {
        "name": probe["name"],
        "sql": probe["sql"],
        "error": None,
        "elapsed_ms": elapsed_ms,
        "columns": columns,
        "rows": [[_json_value(value) for value in row] for row in rows[:PROBE_MAX_ROWS]],
        "truncated": len(rows) > PROBE_MAX_ROWS,
    }


def collect_database_figures(
    conninfo: str,
    mapping: AttachmentMapping,
    *,
    probes: Sequence[Mapping[str, str]] = (),
    probe_timeout_ms: int = 5000,
    statement_timeout_ms: int = 600000,
) -> dict[str, Any]:
    """Return the ``database`` section of a report: table footprint, database size and probes.

    :raises MappingError: when the attachments table is missing.
    :raises TransientError: when the database cannot be reached or a size query times out.
    :raises PermanentError: on bad credentials or missing privileges.
    """
    import psycopg

    with open_read_only(conninfo, statement_timeout_ms=statement_timeout_ms) as conn:
        try:
            server = conn.execute(
                "SELECT current_database(), pg_database_size(current_database()), "
                "current_setting('server_version')"
            ).fetchone()
            footprint = table_footprint(conn, mapping)
        except psycopg.errors.UndefinedColumn as error:
            raise MappingError(
                f"Table {mapping.table!r} lacks a configured column ({error.diag.message_primary}); check "
                "attachments.content_column and attachments.backend_column."
            ) from error
        except psycopg.Error as error:
            raise classify_pg_error(error, f"measure table {mapping.table!r}") from error
        probe_results = [run_probe(conn, probe, probe_timeout_ms) for probe in probes]

    database, database_bytes, server_version = server
    log.info(
        "Table %s: total %d bytes (heap %d, TOAST %d, indexes %d); %d rows inline holding %d bytes, "
        "%d offloaded; database %s is %d bytes",
        mapping.table,
        footprint["total_bytes"],
        footprint["heap_bytes"],
        footprint["toast_bytes"],
        footprint["indexes_bytes"],
        footprint["inline_rows"],
        footprint["inline_bytes"],
        footprint["offloaded_rows"],
        database,
        database_bytes,
    )
    return {
        "database": database,
        "server_version": server_version,
        "database_bytes": database_bytes,
        "attachments": footprint,
        "probes": probe_results,
        "probe_timeout_ms": probe_timeout_ms,
    }
