"""Move offloaded rows back inline, with the same verify-then-flip rule as the offload.

The object is downloaded in chunks into a staging table of the ledger schema (one autocommit
insert per chunk, so no transaction spans an S3 read and the worker keeps one chunk in memory).
One short transaction then assembles the chunks into the row, checks the assembled value's
SHA-256 inside Postgres against the ledger, and flips the row back only if it is still the
offloaded version that was read. Objects are kept after a restore; verification lists them as
orphans and deletes them only when asked.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from attachment_ops import ledger
from attachment_ops.config import MaintenanceConfig
from attachment_ops.db import classify_pg_error, connect
from attachment_ops.errors import ConfigurationError, PermanentError, TransientError, VerificationError
from attachment_ops.offload.mapping import ResolvedTable, resolve_table
from attachment_ops.offload.worker import release_row_lock, try_row_lock
from attachment_ops.storage import RetryPolicy, call_with_retries

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger(__name__)


def ensure_staging(conn: psycopg.Connection, schema: str) -> None:
    ledger.ensure_schema(conn, schema)
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.restore_chunks ("
            " attempt_id uuid NOT NULL, seq integer NOT NULL, data bytea NOT NULL,"
            " PRIMARY KEY (attempt_id, seq))"
        ).format(sql.Identifier(schema))
    )
    # The row id lets a later attempt remove what a killed attempt on the same row staged.
    conn.execute(
        sql.SQL("ALTER TABLE {}.restore_chunks ADD COLUMN IF NOT EXISTS row_id bigint").format(
            sql.Identifier(schema)
        )
    )


def select_rows_to_restore(
    conn: psycopg.Connection,
    table: ResolvedTable,
    ledger_schema: str,
    *,
    row_ids: list[int] | None,
    source_run_id: str | None,
) -> list[int]:
    """Return the ids of currently offloaded rows named by id or offloaded by ``source_run_id``."""
    if not row_ids and not source_run_id:
        raise ConfigurationError("Restore needs row_ids or a source run_id; neither was given.")
    ids: set[int] = set(row_ids or [])
    if source_run_id:
        query = sql.SQL(
            "SELECT DISTINCT row_id FROM {}.ledger WHERE run_id = %s AND table_name = %s AND outcome = 'offloaded'"
        ).format(sql.Identifier(ledger_schema))
        with conn.cursor() as cur:
            cur.execute(query, (source_run_id, table.qualified_name))
            ids.update(row[0] for row in cur.fetchall())
    query = sql.SQL("SELECT {pk} FROM {table} WHERE {pk} = ANY(%s) AND {backend} = %s ORDER BY {pk}").format(
        pk=table.column("primary_key"), table=table.table, backend=table.column("backend_column")
    )
    with conn.cursor() as cur:
        cur.execute(query, (sorted(ids), table.mapping.offloaded_value))
        return [row[0] for row in cur.fetchall()]


def restore_rows(
    conninfo: str,
    client: BaseClient,
    config: MaintenanceConfig,
    *,
    run_id: str,
    row_ids: list[int] | None = None,
    source_run_id: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Restore the chosen rows and return counts; rows that fail stay offloaded and are listed.

    :raises PermanentError: on a permanent S3 or mapping failure.
    :raises TransientError: when rows failed for transient reasons, after trying every row.
    """
    schema = config.section("offload")["ledger_schema"]
    policy = RetryPolicy.from_storage_config(config.section("storage"))
    started = time.monotonic()
    summary: dict[str, Any] = {
        "dry_run": dry_run,
        "rows_selected": 0,
        "rows_restored": 0,
        "bytes_restored": 0,
        "changed_ids": [],
        "skipped": {},
        "failed": [],
    }
    offload = config.section("offload")

    def open_session() -> psycopg.Connection:
        return connect(
            conninfo,
            statement_timeout_ms=offload["statement_timeout_ms"],
            lock_timeout_ms=offload["lock_timeout_ms"],
            application_name="attachment_ops restore",
        )

    conn = open_session()
    try:
        try:
            table = resolve_table(conn, config.mapping)
            ids = select_rows_to_restore(conn, table, schema, row_ids=row_ids, source_run_id=source_run_id)
            summary["rows_selected"] = len(ids)
            if dry_run:
                log.info("Restore (dry run): would restore %d rows.", len(ids))
                summary["would_restore_ids"] = ids[:1000]
                return summary
            ensure_staging(conn, schema)
            known = ledger.latest_offloads(conn, schema, table.qualified_name, ids)
        except psycopg.Error as error:
            raise classify_pg_error(error, "prepare the restore") from error
        for row_id in ids:
            if conn.closed or conn.broken:
                conn = open_session()
            try:
                kind, size = _restore_row(
                    conn, client, config, table, schema, policy, run_id, row_id, known.get(row_id)
                )
            except PermanentError:
                raise
            except (TransientError, VerificationError) as error:
                failure: Exception = error
            except psycopg.Error as error:
                failure = classify_pg_error(error, f"restore row {row_id}")
                if isinstance(failure, PermanentError):
                    raise failure from error
            else:
                if kind == "restored":
                    summary["rows_restored"] += 1
                    summary["bytes_restored"] += size
                elif kind == "changed":
                    summary["changed_ids"].append(row_id)
                else:
                    summary["skipped"][kind] = summary["skipped"].get(kind, 0) + 1
                continue
            log.error("Row %s was not restored: %s", row_id, failure)
            summary["failed"].append({"row_id": row_id, "error": str(failure)[:500]})
            if conn.closed or conn.broken:
                conn = open_session()
            try:
                _record(
                    conn,
                    schema,
                    table,
                    run_id,
                    str(uuid.uuid4()),
                    row_id,
                    "failed",
                    detail=str(failure)[:2000],
                )
            except psycopg.Error as error:
                log.warning("Could not record the failed restore of row %s in the ledger: %s", row_id, error)
    finally:
        conn.close()
    summary["elapsed_seconds"] = round(time.monotonic() - started, 3)
    log.info(
        "Restored %d of %d rows (%.1f MiB) in %.1f s; %d changed, %d failed.",
        summary["rows_restored"],
        summary["rows_selected"],
        summary["bytes_restored"] / 2**20,
        summary["elapsed_seconds"],
        len(summary["changed_ids"]),
        len(summary["failed"]),
    )
    if summary["failed"]:
        raise TransientError(
            f"{len(summary['failed'])} rows could not be restored and stay offloaded: "
            f"{', '.join(str(item['row_id']) for item in summary['failed'][:20])}. "
            f"First error: {summary['failed'][0]['error']}"
        )
    return summary


def _record(
    conn: psycopg.Connection,
    schema: str,
    table: ResolvedTable,
    run_id: str,
    attempt_id: str,
    row_id: int,
    outcome: str,
    **values: Any,
) -> None:
    with conn.cursor() as cur:
        ledger.record(
            cur,
            schema,
            attempt_id=attempt_id,
            run_id=run_id,
            batch_id=None,
            table_name=table.qualified_name,
            row_id=row_id,
            operation="restore",
            outcome=outcome,
            **values,
        )


def _restore_row(
    conn: psycopg.Connection,
    client: BaseClient,
    config: MaintenanceConfig,
    table: ResolvedTable,
    schema: str,
    policy: RetryPolicy,
    run_id: str,
    row_id: int,
    recorded: dict[str, Any] | None,
) -> tuple[str, int]:
    if not try_row_lock(conn, table, row_id):
        return "locked by another worker", 0
    attempt_id = str(uuid.uuid4())
    staging = sql.SQL("{}.restore_chunks").format(sql.Identifier(schema))
    try:
        # Chunks staged for this row by a killed attempt: only the lock holder can own them now.
        conn.execute(sql.SQL("DELETE FROM {} WHERE row_id = %s").format(staging), (row_id,))
        header = sql.SQL("SELECT xmin::text, {key} FROM {table} WHERE {pk} = %s AND {backend} = %s").format(
            key=table.column("key_column"),
            table=table.table,
            pk=table.column("primary_key"),
            backend=table.column("backend_column"),
        )
        with conn.cursor() as cur:
            cur.execute(header, (row_id, table.mapping.offloaded_value))
            found = cur.fetchone()
        if found is None:
            return "no longer offloaded", 0
        xmin, key = found
        if not key:
            raise VerificationError(
                f"Row {row_id} is marked offloaded but has no key; nothing to restore from."
            )
        _record(conn, schema, table, run_id, attempt_id, row_id, "started", object_key=key)
        size, sha256_hex = _download_to_staging(
            conn, client, config, staging, policy, attempt_id, row_id, key
        )
        if recorded is not None and recorded["object_key"] == key:
            if size != recorded["size_bytes"] or sha256_hex != recorded["sha256"]:
                raise VerificationError(
                    f"Row {row_id}: object {key} has {size} bytes with SHA-256 {sha256_hex}, but the ledger "
                    f"recorded {recorded['size_bytes']} bytes with {recorded['sha256']}; the row stays offloaded."
                )
        else:
            log.warning("Row %s has no ledger checksum for %s; restoring the object as stored.", row_id, key)
        return (
            ("restored", size)
            if _flip_back(
                conn, table, schema, staging, run_id, attempt_id, row_id, xmin, key, size, sha256_hex
            )
            else ("changed", 0)
        )
    finally:
        if not (conn.closed or conn.broken):
            conn.execute(sql.SQL("DELETE FROM {} WHERE attempt_id = %s").format(staging), (attempt_id,))
        release_row_lock(conn, table, row_id)


def _download_to_staging(
    conn: psycopg.Connection,
    client: BaseClient,
    config: MaintenanceConfig,
    staging: sql.Composable,
    policy: RetryPolicy,
    attempt_id: str,
    row_id: int,
    key: str,
) -> tuple[int, str]:
    bucket = config.bucket
    chunk_size = config.section("storage")["part_size_bytes"]
    insert = sql.SQL("INSERT INTO {} (attempt_id, row_id, seq, data) VALUES (%s, %s, %s, %s)").format(staging)

    def download() -> tuple[int, str]:
        conn.execute(sql.SQL("DELETE FROM {} WHERE attempt_id = %s").format(staging), (attempt_id,))
        response = client.get_object(Bucket=bucket, Key=key)
        digest = hashlib.sha256()
        size = 0
        pending = bytearray()
        seq = 0
        for piece in response["Body"].iter_chunks(1024 * 1024):
            pending += piece
            if len(pending) >= chunk_size:
                digest.update(pending)
                size += len(pending)
                conn.execute(insert, (attempt_id, row_id, seq, bytes(pending)))
                seq += 1
                pending = bytearray()
        if pending:
            digest.update(pending)
            size += len(pending)
            conn.execute(insert, (attempt_id, row_id, seq, bytes(pending)))
        return size, digest.hexdigest()

    return call_with_retries(download, f"download {key}", policy, bucket=bucket)


def _flip_back(
    conn: psycopg.Connection,
    table: ResolvedTable,
    schema: str,
    staging: sql.Composable,
    run_id: str,
    attempt_id: str,
    row_id: int,
    xmin: str,
    key: str,
    size: int,
    sha256_hex: str,
) -> bool:
    update = sql.SQL(
        "UPDATE {table} SET {content} = (SELECT coalesce(string_agg(data, ''::bytea ORDER BY seq), ''::bytea)"
        " FROM {staging} WHERE attempt_id = %s), {backend} = %s, {key} = NULL"
        " WHERE {pk} = %s AND xmin = %s::xid AND {backend} = %s AND {key} = %s"
        " RETURNING encode(sha256({content}), 'hex'), octet_length({content})"
    ).format(
        table=table.table,
        content=table.column("content_column"),
        staging=staging,
        backend=table.column("backend_column"),
        key=table.column("key_column"),
        pk=table.column("primary_key"),
    )
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            update, (attempt_id, table.mapping.inline_value, row_id, xmin, table.mapping.offloaded_value, key)
        )
        written = cur.fetchone()
        if written is None:
            _record(
                conn,
                schema,
                table,
                run_id,
                attempt_id,
                row_id,
                "changed",
                object_key=key,
                detail="row changed between read and flip; left as it was",
            )
            return False
        if written[0] != sha256_hex or written[1] != size:
            # Raising inside the transaction block rolls the update back.
            raise VerificationError(
                f"Row {row_id}: the assembled value has SHA-256 {written[0]} and {written[1]} bytes, expected "
                f"{sha256_hex} and {size}; the row stays offloaded."
            )
        # Same transaction as the UPDATE: _record uses this connection.
        _record(
            conn,
            schema,
            table,
            run_id,
            attempt_id,
            row_id,
            "restored",
            object_key=key,
            size_bytes=size,
            sha256=sha256_hex,
        )
    return True
