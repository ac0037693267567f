"""Verification of offloaded attachments: objects, checksums, table invariants and orphans.

Verification reads the table, the ledger and the bucket and changes nothing, with one exception:
orphan objects are deleted when the caller passes ``delete_orphans=True`` and the object is older
than the grace period. Every database read runs in a ``READ ONLY`` transaction. The table and the
ledger are read in one ``REPEATABLE READ`` snapshot, so a flip that commits meanwhile cannot make
them disagree. That transaction ends before the first S3 request, so no snapshot stays open
across network calls and holds back VACUUM.

Checks, and what a failure means:

- ``missing_object``: an offloaded row's key names no object. The application cannot serve it.
- ``size_mismatch`` / ``checksum_mismatch``: the object differs from the size or SHA-256 that
  the ledger recorded in the flip's transaction. The server's stored ``ChecksumSHA256`` is used
  when it is a whole-object digest. A multipart object has a composite checksum (``<b64>-N``) that
  is not the object's SHA-256, so such objects, and objects stored without a checksum, are read
  back and hashed. A share of the others is read back too, within a byte budget.
- ``offloaded_without_key``, ``offloaded_with_inline_bytes``: the row's backend column has the
  offloaded value but its key is missing, or its inline bytes were never cleared.
- ``inline_lost_bytes``: an inline row has NULL bytes although its latest ledger entry recorded
  content (a restore, or an offload attempt that read bytes). Empty bytes are a valid file: an
  application may replace an offloaded file with an empty one.
- ``ledger_key_mismatch``: an offloaded row's key differs from its latest ``offloaded`` entry.

Rows offloaded before the ledger existed are listed as ``unledgered``: the object's existence and
size are checked, but there is no checksum to compare, so they are not failures.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from attachment_ops import ledger
from attachment_ops.config import MaintenanceConfig
from attachment_ops.db import classify_pg_error, connect
from attachment_ops.errors import ConfigurationError, MappingError, VerificationError
from attachment_ops.storage import RetryPolicy, base64_to_hex, call_with_retries, http_status

if TYPE_CHECKING:
    import psycopg
    from botocore.client import BaseClient
    from psycopg import sql as pg_sql

log = logging.getLogger(__name__)

SCOPES = ("run", "all", "sample")
# Ids, keys and orphans kept per category in the summary, so that it stays small enough for XCom.
MAX_LISTED = 50
# Ids and keys named per category in the error message.
MAX_IN_MESSAGE = 20
READ_CHUNK_BYTES = 1024 * 1024

FAILURE_FIXES = {
    "missing_object": "the row's file exists in neither place; restore the object from a bucket backup "
    "or the row's bytes from a database backup",
    "size_mismatch": "the object differs from what was offloaded; restore it from a bucket backup",
    "checksum_mismatch": "the object differs from what was offloaded; restore it from a bucket backup",
    "offloaded_without_key": "the application cannot find the file; set the key from the ledger or restore "
    "the row's bytes from a database backup",
    "offloaded_with_inline_bytes": "the flip did not clear the inline copy; check the object, then clear the "
    "bytes or restore the row inline",
    "inline_lost_bytes": "the row says inline but has no bytes; restore them from the object named in the "
    "ledger or from a database backup",
    "ledger_key_mismatch": "the row's key was changed outside the package; check which object is right",
}


@dataclass
class VerificationResult:
    """Outcome of one verification: counts, capped lists of problems, orphans and totals.

    ``failures`` maps a check name to at most ``MAX_LISTED`` entries. ``failure_counts`` has the
    full counts. ``to_dict()`` returns a small JSON-serialisable summary for XCom.
    """

    table: str
    bucket: str
    prefix: str
    scope: str
    run_id: str | None
    started_at: str
    finished_at: str | None = None
    rows_in_scope: int = 0
    objects_checked: int = 0
    objects_ok: int = 0
    verified_by_server_checksum: int = 0
    verified_by_reread: int = 0
    reread_objects: int = 0
    reread_bytes: int = 0
    checksum_not_verified: list[dict[str, Any]] = field(default_factory=list)
    checksum_not_verified_count: int = 0
    unledgered: list[dict[str, Any]] = field(default_factory=list)
    unledgered_count: int = 0
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failure_counts: dict[str, int] = field(default_factory=dict)
    orphans: list[dict[str, Any]] = field(default_factory=list)
    orphan_count: int = 0
    orphan_bytes: int = 0
    orphans_deleted: int = 0
    totals: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.failure_counts.values())

    def add_failure(self, check: str, entry: dict[str, Any], count: int = 1) -> None:
        self.failure_counts[check] = self.failure_counts.get(check, 0) + count
        entries = self.failures.setdefault(check, [])
        if len(entries) < MAX_LISTED:
            entries.append(entry)

    def failed_row_ids(self) -> list[int]:
        ids = {
            entry["row_id"] for entries in self.failures.values() for entry in entries if "row_id" in entry
        }
        return sorted(ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "table": self.table,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "scope": self.scope,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "rows_in_scope": self.rows_in_scope,
            "objects_checked": self.objects_checked,
            "objects_ok": self.objects_ok,
            "verified_by_server_checksum": self.verified_by_server_checksum,
            "verified_by_reread": self.verified_by_reread,
            "reread_objects": self.reread_objects,
            "reread_bytes": self.reread_bytes,
            "checksum_not_verified_count": self.checksum_not_verified_count,
            "checksum_not_verified": self.checksum_not_verified,
            "unledgered_count": self.unledgered_count,
            "unledgered": self.unledgered,
            "failure_counts": dict(self.failure_counts),
            "failures": {check: list(entries) for check, entries in self.failures.items()},
            "orphan_count": self.orphan_count,
            "orphan_bytes": self.orphan_bytes,
            "orphans_deleted": self.orphans_deleted,
            "orphans": self.orphans,
            "totals": dict(self.totals),
            "notes": list(self.notes),
        }


@dataclass
class _ScopeRow:
    row_id: int
    key: str | None
    ledger_key: str | None
    ledger_size: int | None
    ledger_sha256: str | None


@dataclass
class _HeadResult:
    row: _ScopeRow
    exists: bool
    size: int | None = None
    whole_object_sha256: str | None = None


@dataclass(frozen=True)
class _Settings:
    scope: str
    run_id: str | None
    sample_size: int
    reread_fraction: float
    reread_max_bytes: int
    delete_orphans: bool
    orphan_grace_hours: float
    workers: int


def verify(
    conn_or_conninfo: psycopg.Connection | str,
    s3_client: BaseClient,
    config: MaintenanceConfig,
    *,
    run_id: str | None = None,
    scope: str | None = None,
    sample_size: int | None = None,
    reread_fraction: float | None = None,
    reread_max_bytes: int | None = None,
    delete_orphans: bool | None = None,
    orphan_grace_hours: float | None = None,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> VerificationResult:
    """Verify offloaded rows, the table's invariants and the bucket's prefix; raise on any failure.

    ``scope`` selects the rows whose objects are checked: ``run`` (rows whose ``offloaded`` ledger
    entry carries ``run_id``), ``all`` (every offloaded row) or ``sample`` (``sample_size`` random
    offloaded rows). Table invariants and the orphan scan always cover the whole table and prefix.
    Keyword arguments left as None take their value from the ``verification`` configuration.

    A connection passed in must be idle; verification runs its reads on it in short READ ONLY
    transactions and leaves it open. A conninfo string gets a session of its own, closed at the end.

    :raises VerificationError: when any check fails. The message names the rows and keys, and the
        exception's ``result`` attribute contains the full ``VerificationResult``.
    :raises ConfigurationError: on an invalid scope or parameter.
    :raises MappingError: when the configured table or a column does not exist.
    :raises PermanentError, TransientError: when S3 or Postgres fail.
    """
    settings = _settings(
        config,
        run_id,
        scope,
        sample_size,
        reread_fraction,
        reread_max_bytes,
        delete_orphans,
        orphan_grace_hours,
    )
    mapping = config.mapping
    now = now or datetime.now(timezone.utc)
    rng = rng or random.Random()
    result = VerificationResult(
        table=mapping.table,
        bucket=config.bucket,
        prefix=config.prefix,
        scope=settings.scope,
        run_id=settings.run_id,
        started_at=now.isoformat(),
    )
    log.info(
        "Verifying %s against s3://%s/%s (scope %s, run %s)",
        mapping.table,
        config.bucket,
        config.prefix,
        settings.scope,
        settings.run_id,
    )

    with _session(conn_or_conninfo) as conn:
        queries = _Queries(conn, config)
        with _read_only(conn, repeatable=True):
            queries.check_invariants(result)
            queries.collect_totals(result)
            rows = queries.scope_rows(settings)
        result.rows_in_scope = len(rows)
        # The snapshot is released here: no transaction stays open during the S3 requests below.
        _check_objects(s3_client, config, settings, rows, result, rng)
        _scan_orphans(conn, queries, s3_client, config, settings, now, result)

    result.finished_at = datetime.now(timezone.utc).isoformat()
    _log_summary(result)
    if not result.ok:
        error = VerificationError(_failure_message(result))
        error.result = result  # type: ignore[attr-defined]
        raise error
    return result


def _settings(
    config: MaintenanceConfig,
    run_id: str | None,
    scope: str | None,
    sample_size: int | None,
    reread_fraction: float | None,
    reread_max_bytes: int | None,
    delete_orphans: bool | None,
    orphan_grace_hours: float | None,
) -> _Settings:
    section = config.section("verification")

    def pick(value: Any, key: str) -> Any:
        return section[key] if value is None else value

    settings = _Settings(
        scope=pick(scope, "scope"),
        run_id=run_id,
        sample_size=int(pick(sample_size, "sample_size")),
        reread_fraction=float(pick(reread_fraction, "reread_fraction")),
        reread_max_bytes=int(pick(reread_max_bytes, "reread_max_bytes")),
        delete_orphans=bool(pick(delete_orphans, "delete_orphans")),
        orphan_grace_hours=float(pick(orphan_grace_hours, "orphan_grace_hours")),
        workers=int(section["workers"]),
    )
    if settings.scope not in SCOPES:
        raise ConfigurationError(
            f"Verification scope {settings.scope!r} is invalid. Use one of {', '.join(SCOPES)}."
        )
    if settings.scope == "run" and not settings.run_id:
        raise ConfigurationError(
            "Verification scope 'run' needs the run id of the offload run. Pass run_id, or use scope 'all'."
        )
    if settings.sample_size < 1:
        raise ConfigurationError(f"verification.sample_size must be at least 1, got {settings.sample_size}.")
    if not 0.0 <= settings.reread_fraction <= 1.0:
        raise ConfigurationError(
            f"verification.reread_fraction must be between 0 and 1, got {settings.reread_fraction}."
        )
    if settings.reread_max_bytes < 0:
        raise ConfigurationError(
            f"verification.reread_max_bytes must not be negative, got {settings.reread_max_bytes}."
        )
    if settings.orphan_grace_hours < 0:
        raise ConfigurationError(
            f"verification.orphan_grace_hours must not be negative, got {settings.orphan_grace_hours}."
        )
    if settings.workers < 1:
        raise ConfigurationError(f"verification.workers must be at least 1, got {settings.workers}.")
    return settings


@contextmanager
def _session(conn_or_conninfo: psycopg.Connection | str) -> Iterator[psycopg.Connection]:
    if isinstance(conn_or_conninfo, str):
        conn = connect(conn_or_conninfo, autocommit=True)
        try:
            yield conn
        finally:
            conn.close()
        return
    import psycopg

    status = conn_or_conninfo.info.transaction_status
    if status != psycopg.pq.TransactionStatus.IDLE:
        raise ConfigurationError(
            f"Verification needs an idle connection, but this one is {status.name}. Commit or roll back first."
        )
    yield conn_or_conninfo


@contextmanager
def _read_only(conn: psycopg.Connection, *, repeatable: bool = False) -> Iterator[None]:
    """Run the block in a READ ONLY transaction, so that verification cannot change data by mistake."""
    import psycopg

    isolation = "REPEATABLE READ" if repeatable else "READ COMMITTED"
    try:
        with conn.transaction():
            conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}, READ ONLY")
            yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as error:
        raise MappingError(
            f"The attachments mapping does not match the database: {error.diag.message_primary}. "
            "Fix the 'attachments' section of the configuration."
        ) from error
    except psycopg.Error as error:
        raise classify_pg_error(error, "read the attachments table and the ledger") from error


class _Queries:
    """Queries over the configured table and the ledger, with identifiers composed by psycopg.sql."""

    def __init__(self, conn: psycopg.Connection, config: MaintenanceConfig) -> None:
        from psycopg import sql

        from attachment_ops.offload.mapping import resolve_table

        self.conn = conn
        self.mapping = config.mapping
        self.ledger_schema = config.section("offload")["ledger_schema"]
        with _read_only(conn):
            resolved = resolve_table(conn, self.mapping)
            self.resolved = resolved
            self.has_ledger = ledger.schema_exists(conn, self.ledger_schema)
        self.ids = {
            "table": resolved.table,
            "pk": sql.Identifier(self.mapping.primary_key),
            "content": sql.Identifier(self.mapping.content_column),
            "backend": sql.Identifier(self.mapping.backend_column),
            "key": sql.Identifier(self.mapping.key_column),
            "ledger": sql.Identifier(self.ledger_schema, "ledger"),
        }
        self.params = {
            "inline": self.mapping.inline_value,
            "offloaded": self.mapping.offloaded_value,
            # The ledger names the table schema-qualified, e.g. 'public.document_attachments'.
            "table_name": resolved.qualified_name,
            "limit": MAX_LISTED,
        }

    def sql(self, text: str) -> pg_sql.Composed:
        from psycopg import sql

        return sql.SQL(text).format(**self.ids)

    def fetch(self, text: str, params: dict[str, Any] | None = None) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(self.sql(text), {**self.params, **(params or {})})
            return cur.fetchall()

    def latest_offloaded_join(self, alias: str = "l", *, outer: bool = True) -> str:
        join = "LEFT JOIN" if outer else "JOIN"
        return (
            f"{join} LATERAL (SELECT e.object_key, e.size_bytes, e.sha256, e.run_id FROM {{ledger}} e"
            " WHERE e.table_name = %(table_name)s AND e.row_id = t.{pk} AND e.outcome = 'offloaded'"
            f" ORDER BY e.entry_id DESC LIMIT 1) {alias} ON true"
        )

    def check_invariants(self, result: VerificationResult) -> None:
        checks = {
            "offloaded_without_key": (
                "SELECT count(*) OVER (), t.{pk}, t.{key} FROM {table} t"
                " WHERE t.{backend} = %(offloaded)s AND (t.{key} IS NULL OR t.{key} = '')"
                " ORDER BY t.{pk} LIMIT %(limit)s",
                lambda row: {"row_id": row[1], "key": row[2]},
            ),
            "offloaded_with_inline_bytes": (
                "SELECT count(*) OVER (), t.{pk}, t.{key}, octet_length(t.{content}) FROM {table} t"
                " WHERE t.{backend} = %(offloaded)s AND t.{content} IS NOT NULL"
                " ORDER BY t.{pk} LIMIT %(limit)s",
                lambda row: {"row_id": row[1], "key": row[2], "inline_bytes": row[3]},
            ),
        }
        if self.has_ledger:
            checks["inline_lost_bytes"] = (
                "SELECT count(*) OVER (), t.{pk}, last.outcome, last.size_bytes, last.object_key, last.run_id"
                " FROM {table} t JOIN LATERAL (SELECT e.outcome, e.size_bytes, e.object_key, e.run_id"
                " FROM {ledger} e WHERE e.table_name = %(table_name)s AND e.row_id = t.{pk}"
                " ORDER BY e.entry_id DESC LIMIT 1) last ON true"
                " WHERE t.{backend} = %(inline)s AND t.{content} IS NULL"
                " AND last.outcome <> 'changed' AND last.size_bytes > 0"
                " ORDER BY t.{pk} LIMIT %(limit)s",
                lambda row: {
                    "row_id": row[1],
                    "ledger_outcome": row[2],
                    "ledger_size": row[3],
                    "key": row[4],
                    "ledger_run_id": row[5],
                },
            )
            checks["ledger_key_mismatch"] = (
                "SELECT count(*) OVER (), t.{pk}, t.{key}, l.object_key FROM {table} t "
                + self.latest_offloaded_join(outer=False)
                + " WHERE t.{backend} = %(offloaded)s AND t.{key} IS DISTINCT FROM l.object_key"
                " ORDER BY t.{pk} LIMIT %(limit)s",
                lambda row: {"row_id": row[1], "key": row[2], "ledger_key": row[3]},
            )
        else:
            result.notes.append(
                f"Ledger {self.ledger_schema}.ledger does not exist, so no row has a recorded checksum "
                "and the ledger checks were skipped."
            )
        for check, (query, describe) in checks.items():
            rows = self.fetch(query)
            if rows:
                result.failure_counts[check] = rows[0][0]
                result.failures[check] = [describe(row) for row in rows]

    def collect_totals(self, result: VerificationResult) -> None:
        (inline_rows, inline_bytes, inline_empty_rows, offloaded_rows, other_rows) = self.fetch(
            "SELECT count(*) FILTER (WHERE {backend} = %(inline)s),"
            " coalesce(sum(octet_length({content})) FILTER (WHERE {backend} = %(inline)s), 0),"
            " count(*) FILTER (WHERE {backend} = %(inline)s AND coalesce(octet_length({content}), 0) = 0),"
            " count(*) FILTER (WHERE {backend} = %(offloaded)s),"
            " count(*) FILTER (WHERE {backend} IS NULL OR {backend} NOT IN (%(inline)s, %(offloaded)s))"
            " FROM {table}"
        )[0]
        totals: dict[str, Any] = {
            "inline_rows": inline_rows,
            "inline_bytes": int(inline_bytes),
            "inline_rows_without_bytes": inline_empty_rows,
            "offloaded_rows": offloaded_rows,
            "offloaded_bytes_recorded": None,
            "unledgered_rows": 0,
            "run_offloaded_rows": None,
            "run_offloaded_bytes": None,
        }
        if other_rows:
            result.notes.append(
                f"{other_rows} rows have a backend value other than {self.mapping.inline_value!r} or "
                f"{self.mapping.offloaded_value!r}; verification does not check them."
            )
        if self.has_ledger:
            recorded_bytes, unledgered_rows = self.fetch(
                "SELECT coalesce(sum(l.size_bytes), 0), count(*) FILTER (WHERE l.object_key IS NULL)"
                " FROM {table} t " + self.latest_offloaded_join() + " WHERE t.{backend} = %(offloaded)s"
            )[0]
            totals["offloaded_bytes_recorded"] = int(recorded_bytes)
            totals["unledgered_rows"] = unledgered_rows
        else:
            totals["unledgered_rows"] = offloaded_rows
        if self.has_ledger and result.run_id:
            run_rows, run_bytes = self.fetch(
                "SELECT count(DISTINCT row_id), coalesce(sum(size_bytes), 0) FROM {ledger}"
                " WHERE table_name = %(table_name)s AND run_id = %(run_id)s AND outcome = 'offloaded'",
                {"run_id": result.run_id},
            )[0]
            totals["run_offloaded_rows"] = run_rows
            totals["run_offloaded_bytes"] = int(run_bytes)
        result.totals = totals

    def scope_rows(self, settings: _Settings) -> list[_ScopeRow]:
        select = "SELECT t.{pk}, t.{key}, l.object_key, l.size_bytes, l.sha256 FROM {table} t "
        if self.has_ledger:
            select += self.latest_offloaded_join()
        else:
            select = "SELECT t.{pk}, t.{key}, NULL::text, NULL::bigint, NULL::text FROM {table} t"
        where = " WHERE t.{backend} = %(offloaded)s AND t.{key} IS NOT NULL AND t.{key} <> ''"
        params: dict[str, Any] = {}
        if settings.scope == "run":
            if not self.has_ledger:
                return []
            where += (
                " AND t.{pk} IN (SELECT row_id FROM {ledger} WHERE table_name = %(table_name)s"
                " AND run_id = %(run_id)s AND outcome = 'offloaded')"
            )
            params["run_id"] = settings.run_id
            order = " ORDER BY t.{pk}"
        elif settings.scope == "sample":
            order = " ORDER BY random() LIMIT %(sample_size)s"
            params["sample_size"] = settings.sample_size
        else:
            order = " ORDER BY t.{pk}"
        rows = self.fetch(select + where + order, params)
        return sorted((_ScopeRow(*row) for row in rows), key=lambda row: row.row_id)

    def unreferenced(self, keys: list[str]) -> set[str]:
        """Return the keys in ``keys`` that no row's key column names, whatever its backend."""
        rows = self.fetch(
            "SELECT k FROM unnest(%(keys)s::text[]) AS k"
            " WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.{key} = k)",
            {"keys": keys},
        )
        return {row[0] for row in rows}

    def recent_ledger_activity(self, row_id: int, since: datetime) -> bool:
        if not self.has_ledger:
            return False
        rows = self.fetch(
            "SELECT 1 FROM {ledger} WHERE table_name = %(table_name)s AND row_id = %(row_id)s"
            " AND recorded_at >= %(since)s LIMIT 1",
            {"row_id": row_id, "since": since},
        )
        return bool(rows)


def _retry_policy(config: MaintenanceConfig) -> RetryPolicy:
    return RetryPolicy.from_storage_config(config.section("storage"))


def _is_not_found(error: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(error, ClientError):
        return False
    code = error.response.get("Error", {}).get("Code")
    return http_status(error) == 404 or code in ("404", "NoSuchKey", "NotFound")


def _head(s3_client: BaseClient, config: MaintenanceConfig, row: _ScopeRow) -> _HeadResult:
    from botocore.exceptions import ClientError

    assert row.key is not None

    def operation() -> _HeadResult:
        try:
            response = s3_client.head_object(Bucket=config.bucket, Key=row.key, ChecksumMode="ENABLED")
        except ClientError as error:
            if _is_not_found(error):
                return _HeadResult(row, exists=False)
            raise
        checksum = response.get("ChecksumSHA256")
        whole = None
        # A multipart object's checksum is the digest of its parts' digests, suffixed "-N".
        if checksum and "-" not in checksum and response.get("ChecksumType", "FULL_OBJECT") != "COMPOSITE":
            whole = base64_to_hex(checksum)
        return _HeadResult(row, exists=True, size=response["ContentLength"], whole_object_sha256=whole)

    return call_with_retries(operation, f"HEAD {row.key}", _retry_policy(config), bucket=config.bucket)


def _reread(s3_client: BaseClient, config: MaintenanceConfig, key: str) -> tuple[int, str] | None:
    """Stream the object and return its size and SHA-256 hex, or None when it does not exist."""
    from botocore.exceptions import ClientError

    def operation() -> tuple[int, str] | None:
        try:
            response = s3_client.get_object(Bucket=config.bucket, Key=key)
        except ClientError as error:
            if _is_not_found(error):
                return None
            raise
        digest = hashlib.sha256()
        size = 0
        body = response["Body"]
        try:
            for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
        finally:
            body.close()
        return size, digest.hexdigest()

    return call_with_retries(operation, f"GET {key}", _retry_policy(config), bucket=config.bucket)


def _check_objects(
    s3_client: BaseClient,
    config: MaintenanceConfig,
    settings: _Settings,
    rows: list[_ScopeRow],
    result: VerificationResult,
    rng: random.Random,
) -> None:
    with ThreadPoolExecutor(max_workers=settings.workers) as pool:
        heads = list(pool.map(lambda row: _head(s3_client, config, row), rows))

    not_ok: set[int] = set()
    must_reread: list[_HeadResult] = []
    may_reread: list[_HeadResult] = []
    for head in heads:
        row = head.row
        result.objects_checked += 1
        if not head.exists:
            result.add_failure("missing_object", {"row_id": row.row_id, "key": row.key})
            not_ok.add(row.row_id)
        elif row.ledger_key is None:
            result.unledgered_count += 1
            if len(result.unledgered) < MAX_LISTED:
                result.unledgered.append({"row_id": row.row_id, "key": row.key, "size_bytes": head.size})
        elif row.ledger_key != row.key:
            # Reported as ledger_key_mismatch. The size and digest in the ledger belong to another key.
            not_ok.add(row.row_id)
        elif head.size != row.ledger_size:
            result.add_failure(
                "size_mismatch",
                {"row_id": row.row_id, "key": row.key, "expected": row.ledger_size, "actual": head.size},
            )
            not_ok.add(row.row_id)
        elif head.whole_object_sha256 is None:
            must_reread.append(head)
        elif head.whole_object_sha256 != (row.ledger_sha256 or "").lower():
            result.add_failure(
                "checksum_mismatch",
                {
                    "row_id": row.row_id,
                    "key": row.key,
                    "expected": row.ledger_sha256,
                    "actual": head.whole_object_sha256,
                    "source": "server checksum",
                },
            )
            not_ok.add(row.row_id)
        else:
            result.verified_by_server_checksum += 1
            may_reread.append(head)

    extra = rng.sample(may_reread, math.ceil(settings.reread_fraction * len(may_reread)))
    not_ok |= _reread_objects(s3_client, config, settings, must_reread, extra, result)
    result.objects_ok = result.objects_checked - len(not_ok)


def _reread_objects(
    s3_client: BaseClient,
    config: MaintenanceConfig,
    settings: _Settings,
    must_reread: list[_HeadResult],
    extra: list[_HeadResult],
    result: VerificationResult,
) -> set[int]:
    """Read back objects, compare them with the ledger and return the ids of rows not verified.

    Objects without a whole-object checksum on the server come first, then the sampled ones, as
    long as they fit in ``reread_max_bytes``.
    """
    budget = settings.reread_max_bytes
    not_ok: set[int] = set()
    selected: list[_HeadResult] = []
    for head in must_reread + extra:
        size = head.size or 0
        if size <= budget:
            budget -= size
            selected.append(head)
        elif head in must_reread:
            not_ok.add(head.row.row_id)
            result.checksum_not_verified_count += 1
            if len(result.checksum_not_verified) < MAX_LISTED:
                result.checksum_not_verified.append(
                    {"row_id": head.row.row_id, "key": head.row.key, "size_bytes": head.size}
                )
    if result.checksum_not_verified_count:
        result.notes.append(
            f"{result.checksum_not_verified_count} objects have no whole-object checksum on the server and "
            f"did not fit in the re-read budget of {settings.reread_max_bytes} bytes; raise "
            "verification.reread_max_bytes to verify them."
        )

    with ThreadPoolExecutor(max_workers=settings.workers) as pool:
        outcomes = list(pool.map(lambda head: _reread(s3_client, config, head.row.key), selected))

    for head, outcome in zip(selected, outcomes, strict=True):
        row = head.row
        result.reread_objects += 1
        if outcome is None:
            result.add_failure("missing_object", {"row_id": row.row_id, "key": row.key})
            not_ok.add(row.row_id)
            continue
        size, sha256 = outcome
        result.reread_bytes += size
        if size != row.ledger_size:
            result.add_failure(
                "size_mismatch",
                {"row_id": row.row_id, "key": row.key, "expected": row.ledger_size, "actual": size},
            )
            not_ok.add(row.row_id)
        elif sha256 != (row.ledger_sha256 or "").lower():
            # For a sampled object this means the server's stored checksum no longer matches the bytes.
            result.add_failure(
                "checksum_mismatch",
                {
                    "row_id": row.row_id,
                    "key": row.key,
                    "expected": row.ledger_sha256,
                    "actual": sha256,
                    "source": "re-read",
                },
            )
            not_ok.add(row.row_id)
        else:
            result.verified_by_reread += 1
    return not_ok


def package_key_pattern(prefix: str) -> re.Pattern[str]:
    """Match the keys the offload writes: ``<prefix><row id>/<sha256 hex>``; row ids may be negative."""
    return re.compile(re.escape(prefix) + r"(-?\d+)/([0-9a-f]{64})")


def _scan_orphans(
    conn: psycopg.Connection,
    queries: _Queries,
    s3_client: BaseClient,
    config: MaintenanceConfig,
    settings: _Settings,
    now: datetime,
    result: VerificationResult,
) -> None:
    """List objects under the prefix that no row names, and delete old ones only when asked.

    Only keys of the offload's own form are ever deleted. An object whose row has a ledger entry
    within the grace period is kept too, because an offload of that row may be about to flip to it.
    The decision and the delete run under the row's advisory lock, so an offload or restore that
    is working on the row at that moment keeps its object whatever the grace period.
    """
    pattern = package_key_pattern(config.prefix)
    grace_seconds = settings.orphan_grace_hours * 3600
    policy = _retry_policy(config)
    request: dict[str, Any] = {"Bucket": config.bucket, "Prefix": config.prefix}
    while True:
        page = call_with_retries(
            lambda: s3_client.list_objects_v2(**request),
            f"LIST {config.prefix}",
            policy,
            bucket=config.bucket,
        )
        contents = page.get("Contents", [])
        if contents:
            with _read_only(conn):
                unreferenced = queries.unreferenced([item["Key"] for item in contents])
            for item in contents:
                if item["Key"] in unreferenced:
                    _handle_orphan(
                        conn, queries, s3_client, config, settings, pattern, grace_seconds, now, item, result
                    )
        if not page.get("IsTruncated"):
            break
        request["ContinuationToken"] = page["NextContinuationToken"]


def _handle_orphan(
    conn: psycopg.Connection,
    queries: _Queries,
    s3_client: BaseClient,
    config: MaintenanceConfig,
    settings: _Settings,
    pattern: re.Pattern[str],
    grace_seconds: float,
    now: datetime,
    item: dict[str, Any],
    result: VerificationResult,
) -> None:
    key = item["Key"]
    age_seconds = (now - item["LastModified"]).total_seconds()
    match = pattern.fullmatch(key)
    entry: dict[str, Any] = {
        "key": key,
        "size_bytes": item.get("Size"),
        "last_modified": item["LastModified"].isoformat(),
        "age_hours": round(age_seconds / 3600, 2),
        "row_id": int(match.group(1)) if match else None,
        "deleted": False,
    }
    result.orphan_count += 1
    result.orphan_bytes += item.get("Size") or 0
    if settings.delete_orphans:
        with _row_locked(conn, queries, match) as locked:
            if locked:
                entry["kept_because"] = _orphan_kept_reason(
                    conn, queries, match, age_seconds, grace_seconds, now, key
                )
            else:
                entry["kept_because"] = "an offload or restore of its row is running"
            if entry["kept_because"] is None:
                call_with_retries(
                    lambda: s3_client.delete_object(Bucket=config.bucket, Key=key),
                    f"DELETE {key}",
                    _retry_policy(config),
                    bucket=config.bucket,
                )
                entry["deleted"] = True
                result.orphans_deleted += 1
                log.warning(
                    "Deleted orphan object s3://%s/%s (%s bytes, %.1f h old)",
                    config.bucket,
                    key,
                    item.get("Size"),
                    age_seconds / 3600,
                )
            else:
                log.info("Kept orphan object %s: %s", key, entry["kept_because"])
    if len(result.orphans) < MAX_LISTED:
        result.orphans.append(entry)


@contextmanager
def _row_locked(conn: psycopg.Connection, queries: _Queries, match: re.Match[str] | None) -> Iterator[bool]:
    """Hold the row's advisory lock, the one offload and restore take, while an orphan is judged.

    An offload holds it from before its upload until after its flip, so an object it is about to
    flip to is never deleted. Yields False when another session holds it. A key not of the
    offload's form names no row, so nothing is locked and True is yielded.
    """
    from attachment_ops.offload.worker import release_row_lock, try_row_lock

    if match is None:
        yield True
        return
    row_id = int(match.group(1))
    locked = try_row_lock(conn, queries.resolved, row_id)
    if not conn.autocommit:
        # The lock is session-level and survives the commit. An open transaction would break the
        # READ ONLY transactions that follow.
        conn.commit()
    if not locked:
        yield False
        return
    try:
        yield True
    finally:
        release_row_lock(conn, queries.resolved, row_id)
        if not conn.autocommit:
            conn.commit()


def _orphan_kept_reason(
    conn: psycopg.Connection,
    queries: _Queries,
    match: re.Match[str] | None,
    age_seconds: float,
    grace_seconds: float,
    now: datetime,
    key: str,
) -> str | None:
    """Return why an orphan must be kept, or None when it may be deleted."""
    from datetime import timedelta

    if match is None:
        return "the key does not have the offload's form <prefix><row id>/<sha256>"
    if age_seconds < grace_seconds:
        return f"younger than the grace period of {grace_seconds / 3600:g} h"
    since = now - timedelta(seconds=grace_seconds)
    with _read_only(conn):
        if queries.unreferenced([key]) != {key}:
            return "a row references it now"
        if queries.recent_ledger_activity(int(match.group(1)), since):
            return "its row has ledger entries within the grace period"
    return None


def _log_summary(result: VerificationResult) -> None:
    log.info(
        "Verified %s: %d rows in scope, %d objects ok (%d by server checksum, %d by re-reading %d bytes), "
        "%d unledgered, %d orphans (%d deleted), %d inline rows with %d bytes remain",
        result.table,
        result.rows_in_scope,
        result.objects_ok,
        result.verified_by_server_checksum,
        result.verified_by_reread,
        result.reread_bytes,
        result.unledgered_count,
        result.orphan_count,
        result.orphans_deleted,
        result.totals.get("inline_rows", 0),
        result.totals.get("inline_bytes", 0),
    )
    for check, count in result.failure_counts.items():
        if count:
            log.error(
                "Verification check %s failed for %d rows: %s",
                check,
                count,
                _describe_entries(result.failures.get(check, []), count),
            )
    for note in result.notes:
        log.warning("%s", note)


def _describe_entries(entries: list[dict[str, Any]], count: int) -> str:
    parts = []
    for entry in entries[:MAX_IN_MESSAGE]:
        key = entry.get("key") or entry.get("ledger_key")
        parts.append(f"row {entry['row_id']} ({key})" if key else f"row {entry['row_id']}")
    text = ", ".join(parts)
    if count > len(parts):
        text += f" and {count - len(parts)} more"
    return text


def _failure_message(result: VerificationResult) -> str:
    lines = [f"Verification of {result.table} against s3://{result.bucket}/{result.prefix} failed."]
    for check, count in result.failure_counts.items():
        if not count:
            continue
        entries = _describe_entries(result.failures.get(check, []), count)
        noun = "row" if count == 1 else "rows"
        lines.append(f"{check} in {count} {noun}: {entries}. Fix: {FAILURE_FIXES[check]}.")
    lines.append("Verification changed no data; the failed rows are listed in the task's output.")
    return "\n".join(lines)
