"""Offload one planned batch: read, upload, verify, then flip each row in a short transaction.

Safety rules, each enforced here:

- A row is cleared only in the transaction that sets the offloaded backend value and the key,
  and only after the object was confirmed to hold the bytes that were read (size and SHA-256).
- The flip is conditional on the row's ``xmin``: any update or delete by the application
  since the read changes it, so the flip matches nothing and the row stays as the application
  left it (reported as ``changed``).
- No transaction is open during a call to S3: reads run in autocommit, one statement each.
- Two workers never process one row at once: each row is claimed with a session-level
  advisory lock (``pg_try_advisory_lock``). It is held outside any transaction and released
  when the session ends, so a killed worker never leaves a stale claim.
- Memory is bounded by ``workers_per_batch`` times ``multipart_threshold_bytes``: larger values
  are read in slices of ``part_size_bytes`` and uploaded as multipart uploads.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from attachment_ops import ledger
from attachment_ops.config import MaintenanceConfig
from attachment_ops.db import classify_pg_error, connect
from attachment_ops.errors import PermanentError, TransientError, VerificationError
from attachment_ops.offload.mapping import ResolvedTable, resolve_table
from attachment_ops.offload.objects import (
    composite_sha256,
    content_disposition,
    content_type_header,
    object_key,
    verify_object,
)
from attachment_ops.offload.params import OffloadParams
from attachment_ops.offload.planner import candidate_filter
from attachment_ops.storage import RetryPolicy, call_with_retries, require_bucket

if TYPE_CHECKING:
    import psycopg
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 5.0
ROW_ATTEMPTS = 3


@dataclass
class RowInfo:
    row_id: int
    size: int


@dataclass
class BatchResult:
    """Outcome of one batch; small enough for XCom."""

    batch_id: str
    dry_run: bool
    rows_selected: int = 0
    bytes_selected: int = 0
    rows_offloaded: int = 0
    bytes_offloaded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    changed_ids: list[int] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    verified_by: dict[str, int] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Shared:
    """State shared by the threads of one batch."""

    context: BatchContext
    result: BatchResult
    total_bytes: int
    started: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    done_rows: int = 0
    done_bytes: int = 0
    last_progress: float = 0.0
    permanent: PermanentError | None = None
    skipped: Counter = field(default_factory=Counter)
    verified_by: Counter = field(default_factory=Counter)


@dataclass
class BatchContext:
    conninfo: str
    client: BaseClient
    config: MaintenanceConfig
    table: ResolvedTable
    params: OffloadParams
    run_id: str
    batch_id: str
    policy: RetryPolicy

    @property
    def bucket(self) -> str:
        return self.config.bucket

    @property
    def ledger_schema(self) -> str:
        return self.config.section("offload")["ledger_schema"]

    @property
    def storage(self) -> dict[str, Any]:
        return self.config.section("storage")

    def open_session(self) -> psycopg.Connection:
        offload = self.config.section("offload")
        return connect(
            self.conninfo,
            statement_timeout_ms=offload["statement_timeout_ms"],
            lock_timeout_ms=offload["lock_timeout_ms"],
            application_name=f"attachment_ops offload {self.batch_id}",
        )


def select_batch_rows(
    conn: psycopg.Connection, table: ResolvedTable, params: OffloadParams, batch: dict[str, Any]
) -> list[RowInfo]:
    """Return the rows of the batch's id range that still match the run's filter, in key order."""
    where, values = candidate_filter(table, params)
    pk = table.column("primary_key")
    query = sql.SQL(
        "SELECT {pk}, octet_length({content}) FROM {table} WHERE {where} AND {pk} BETWEEN %s AND %s"
        " ORDER BY {pk} LIMIT %s"
    ).format(pk=pk, content=table.column("content_column"), table=table.table, where=where)
    with conn.cursor() as cur:
        cur.execute(query, [*values, batch["first_id"], batch["last_id"], batch["rows"]])
        return [RowInfo(row_id=row[0], size=int(row[1])) for row in cur.fetchall()]


def run_batch(
    conninfo: str,
    client: BaseClient,
    config: MaintenanceConfig,
    params: OffloadParams,
    batch: dict[str, Any],
    run_id: str,
) -> BatchResult:
    """Offload the rows of one batch descriptor and return what happened to each.

    Rows locked by another worker are skipped, not waited for, and the next run takes them.

    :raises PermanentError: at the first permanent failure (bad credentials, missing bucket),
        after recording it; rows already flipped stay flipped.
    :raises TransientError: after the batch when some rows still failed after their retries,
        so that Airflow retries the task; a retry only picks up rows not yet offloaded.
    """
    started = time.monotonic()
    result = BatchResult(batch_id=batch["batch_id"], dry_run=params.dry_run)
    context = BatchContext(
        conninfo=conninfo,
        client=client,
        config=config,
        table=None,
        params=params,  # type: ignore[arg-type]
        run_id=run_id,
        batch_id=batch["batch_id"],
        policy=RetryPolicy.from_storage_config(config.section("storage")),
    )
    import psycopg

    try:
        with context.open_session() as conn:
            context.table = resolve_table(conn, config.mapping)
            rows = select_batch_rows(conn, context.table, params, batch)
            if not params.dry_run:
                ledger.ensure_schema(conn, context.ledger_schema)
    except psycopg.Error as error:
        raise classify_pg_error(error, f"prepare batch {batch['batch_id']}") from error
    result.rows_selected = len(rows)
    result.bytes_selected = sum(row.size for row in rows)
    if params.dry_run:
        result.elapsed_seconds = round(time.monotonic() - started, 3)
        log.info(
            "Batch %s (dry run): would move %d rows, %.1f MiB.",
            batch["batch_id"],
            len(rows),
            result.bytes_selected / 2**20,
        )
        return result

    require_bucket(client, context.bucket, context.policy)
    shared = _Shared(context=context, result=result, total_bytes=result.bytes_selected, started=started)
    work: queue.Queue[RowInfo] = queue.Queue()
    for row in rows:
        work.put(row)
    threads = [
        threading.Thread(target=_worker_loop, args=(shared, work), name=f"offload-{batch['batch_id']}-{n}")
        for n in range(min(params.workers_per_batch, max(1, len(rows))))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    result.skipped = dict(shared.skipped)
    result.verified_by = dict(shared.verified_by)
    result.elapsed_seconds = round(time.monotonic() - started, 3)
    _log_progress(shared, final=True)
    if shared.permanent is not None:
        raise shared.permanent
    if result.failed:
        ids = ", ".join(str(item["row_id"]) for item in result.failed[:20])
        raise TransientError(
            f"Batch {batch['batch_id']}: {len(result.failed)} rows failed after {ROW_ATTEMPTS} attempts each "
            f"(ids {ids}); they stay inline and a retry picks them up. First error: {result.failed[0]['error']}"
        )
    return result


def _worker_loop(shared: _Shared, work: queue.Queue[RowInfo]) -> None:
    context = shared.context
    conn: psycopg.Connection | None = None
    try:
        while shared.permanent is None:
            try:
                row = work.get_nowait()
            except queue.Empty:
                return
            last_error: Exception | None = None
            for attempt in range(1, ROW_ATTEMPTS + 1):
                try:
                    if conn is None or conn.closed or conn.broken:
                        conn = context.open_session()
                    outcome = _offload_row(conn, context, row)
                    _count_outcome(shared, row, outcome)
                    last_error = None
                    break
                except PermanentError as error:
                    _record_failure(context, conn, row, error)
                    with shared.lock:
                        shared.permanent = shared.permanent or error
                    return
                except (TransientError, VerificationError) as error:
                    last_error = error
                except Exception as error:  # noqa: BLE001 - classified below; psycopg raises many types
                    classified = _classify(error)
                    if isinstance(classified, PermanentError):
                        _record_failure(context, conn, row, classified)
                        with shared.lock:
                            shared.permanent = shared.permanent or classified
                        return
                    last_error = classified
                log.warning(
                    "Row %s attempt %d of %d failed: %s", row.row_id, attempt, ROW_ATTEMPTS, last_error
                )
                if conn is not None and (conn.closed or conn.broken):
                    conn = None
                time.sleep(context.policy.delay(attempt))
            if last_error is not None:
                _record_failure(context, conn, row, last_error)
                with shared.lock:
                    shared.result.failed.append({"row_id": row.row_id, "error": str(last_error)[:500]})
    finally:
        if conn is not None and not conn.closed:
            conn.close()


def _classify(error: Exception) -> Exception:
    import psycopg

    if isinstance(error, psycopg.Error):
        return classify_pg_error(error, "run an offload statement")
    return TransientError(f"{type(error).__name__}: {error}")


def _count_outcome(shared: _Shared, row: RowInfo, outcome: tuple[str, str]) -> None:
    kind, detail = outcome
    with shared.lock:
        shared.done_rows += 1
        if kind == "offloaded":
            shared.result.rows_offloaded += 1
            shared.result.bytes_offloaded += row.size
            shared.done_bytes += row.size
            shared.verified_by[detail] += 1
        elif kind == "changed":
            shared.result.changed_ids.append(row.row_id)
        else:
            shared.skipped[detail] += 1
        now = time.monotonic()
        if now - shared.last_progress >= PROGRESS_INTERVAL_SECONDS:
            shared.last_progress = now
            _log_progress(shared)


def _log_progress(shared: _Shared, final: bool = False) -> None:
    elapsed = max(time.monotonic() - shared.started, 1e-6)
    rate = shared.done_bytes / elapsed
    remaining = max(shared.total_bytes - shared.done_bytes, 0)
    eta = remaining / rate if rate > 0 else float("nan")
    log.info(
        "Batch %s%s: %d of %d rows, %.1f of %.1f MiB, %.1f MiB/s, %s.",
        shared.context.batch_id,
        " done" if final else "",
        shared.done_rows,
        shared.result.rows_selected,
        shared.done_bytes / 2**20,
        shared.total_bytes / 2**20,
        rate / 2**20,
        f"{elapsed:.1f} s elapsed" if final else f"ETA {eta:.0f} s",
    )


def _record_failure(
    context: BatchContext, conn: psycopg.Connection | None, row: RowInfo, error: Exception
) -> None:
    """Write a ``failed`` ledger entry; a broken connection is replaced, and a failure here only logs."""
    try:
        if conn is None or conn.closed or conn.broken:
            with context.open_session() as fresh:
                _insert_ledger(
                    fresh, context, row.row_id, str(uuid.uuid4()), "failed", detail=str(error)[:2000]
                )
        else:
            _insert_ledger(conn, context, row.row_id, str(uuid.uuid4()), "failed", detail=str(error)[:2000])
    except Exception:
        log.exception("Could not record the failure of row %s in the ledger", row.row_id)


def _insert_ledger(
    conn: psycopg.Connection, context: BatchContext, row_id: int, attempt_id: str, outcome: str, **values: Any
) -> None:
    with conn.cursor() as cur:
        ledger.record(
            cur,
            context.ledger_schema,
            attempt_id=attempt_id,
            run_id=context.run_id,
            batch_id=context.batch_id,
            table_name=context.table.qualified_name,
            row_id=row_id,
            operation="offload",
            outcome=outcome,
            **values,
        )


def try_row_lock(conn: psycopg.Connection, table: ResolvedTable, row_id: int) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (table.lock_key(row_id),))
        return bool(cur.fetchone()[0])


def release_row_lock(conn: psycopg.Connection, table: ResolvedTable, row_id: int) -> None:
    if conn.closed or conn.broken:
        return  # the server released it with the session
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (table.lock_key(row_id),))


def _offload_row(conn: psycopg.Connection, context: BatchContext, row: RowInfo) -> tuple[str, str]:
    """Move one row. Returns (kind, detail): ("offloaded", how verified), ("changed", ""), ("skipped", reason)."""
    table = context.table
    if not try_row_lock(conn, table, row.row_id):
        return "skipped", "locked by another worker"
    try:
        current = _read_row_header(conn, context, row.row_id)
        if current is None:
            return "skipped", "no longer inline"
        xmin, size, filename, content_type = current
        attempt_id = str(uuid.uuid4())
        _insert_ledger(conn, context, row.row_id, attempt_id, "started", size_bytes=size)
        if size <= context.storage["multipart_threshold_bytes"]:
            uploaded = _upload_single(conn, context, row.row_id, xmin, filename, content_type)
        else:
            uploaded = _upload_multipart(conn, context, row.row_id, xmin, size, filename, content_type)
        if uploaded is None:
            _insert_ledger(
                conn,
                context,
                row.row_id,
                attempt_id,
                "changed",
                size_bytes=size,
                detail="row changed while it was being read",
            )
            return "changed", ""
        key, sha256_hex, expected_checksum, size, upload_checksum = uploaded
        verified_by = verify_object(
            context.client,
            context.bucket,
            key,
            size=size,
            sha256_hex=sha256_hex,
            expected_checksum=expected_checksum,
            policy=context.policy,
            always_read_back=context.storage["verify_read_back"],
            upload_checksum=upload_checksum if context.storage["trust_upload_checksum"] else None,
        )
        if _flip(conn, context, row.row_id, xmin, attempt_id, key, size, sha256_hex):
            return "offloaded", verified_by
        _delete_unreferenced(conn, context, key)
        return "changed", ""
    finally:
        release_row_lock(conn, table, row.row_id)


def _read_row_header(conn: psycopg.Connection, context: BatchContext, row_id: int) -> tuple | None:
    """Re-read the row under the lock: it must still be an inline candidate. Returns xmin, size, names."""
    table = context.table
    where, values = candidate_filter(table, context.params)
    query = sql.SQL(
        "SELECT xmin::text, octet_length({content}), {filename}, {ctype} FROM {table} WHERE {pk} = %s AND {where}"
    ).format(
        content=table.column("content_column"),
        filename=table.optional_column("filename_column"),
        ctype=table.optional_column("content_type_column"),
        table=table.table,
        pk=table.column("primary_key"),
        where=where,
    )
    with conn.cursor() as cur:
        cur.execute(query, [row_id, *values])
        found = cur.fetchone()
    if found is None:
        return None
    return found[0], int(found[1]), found[2], found[3]


def _upload_headers(
    context: BatchContext, row_id: int, sha256_hex: str, filename: str | None, content_type: str | None
) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "ContentType": content_type_header(content_type),
        # User metadata stays ASCII: boto3 rejects non-ASCII values, so the filename travels
        # only in the RFC 6266 Content-Disposition header.
        "Metadata": {
            "row-id": str(row_id),
            "sha256": sha256_hex,
            "source-table": context.table.qualified_name,
        },
    }
    disposition = content_disposition(filename)
    if disposition:
        headers["ContentDisposition"] = disposition
    params = context.params
    if params.storage_class:
        headers["StorageClass"] = params.storage_class
    if params.server_side_encryption:
        headers["ServerSideEncryption"] = params.server_side_encryption
        if params.sse_kms_key_id and params.server_side_encryption.startswith("aws:kms"):
            headers["SSEKMSKeyId"] = params.sse_kms_key_id
    return headers


def _upload_single(
    conn: psycopg.Connection,
    context: BatchContext,
    row_id: int,
    xmin: str,
    filename: str | None,
    content_type: str | None,
) -> tuple[str, str, str, int, str | None] | None:
    table = context.table
    query = sql.SQL("SELECT {content} FROM {table} WHERE {pk} = %s AND xmin = %s::xid").format(
        content=table.column("content_column"), table=table.table, pk=table.column("primary_key")
    )
    with conn.cursor(binary=True) as cur:
        cur.execute(query, (row_id, xmin))
        found = cur.fetchone()
    if found is None or found[0] is None:
        return None
    data = bytes(found[0])
    digest = hashlib.sha256(data).digest()
    sha256_hex = digest.hex()
    checksum = base64.b64encode(digest).decode("ascii")
    key = object_key(context.params.prefix, row_id, sha256_hex)
    headers = _upload_headers(context, row_id, sha256_hex, filename, content_type)
    response = call_with_retries(
        lambda: context.client.put_object(
            Bucket=context.bucket,
            Key=key,
            Body=data,
            ContentLength=len(data),
            ChecksumSHA256=checksum,
            **headers,
        ),
        f"upload {key}",
        context.policy,
        bucket=context.bucket,
    )
    return key, sha256_hex, checksum, len(data), response.get("ChecksumSHA256")


def _upload_multipart(
    conn: psycopg.Connection,
    context: BatchContext,
    row_id: int,
    xmin: str,
    size: int,
    filename: str | None,
    content_type: str | None,
) -> tuple[str, str, str, int, str | None] | None:
    """Stream a large value in slices into a multipart upload; memory stays one part.

    The key needs the content's SHA-256 before the first part, so Postgres computes it first
    (server memory, not the worker's); the worker's own hash of the slices must then match it.
    """
    table = context.table
    where_row = sql.SQL("{pk} = %s AND xmin = %s::xid").format(pk=table.column("primary_key"))
    digest_query = sql.SQL("SELECT encode(sha256({content}), 'hex') FROM {table} WHERE {where}").format(
        content=table.column("content_column"), table=table.table, where=where_row
    )
    with conn.cursor() as cur:
        cur.execute(digest_query, (row_id, xmin))
        found = cur.fetchone()
    if found is None or found[0] is None:
        return None
    sha256_hex = found[0]
    key = object_key(context.params.prefix, row_id, sha256_hex)
    bucket, client, policy = context.bucket, context.client, context.policy
    _abort_stale_uploads(context, key)
    headers = _upload_headers(context, row_id, sha256_hex, filename, content_type)
    created = call_with_retries(
        lambda: client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", **headers),
        f"start multipart upload {key}",
        policy,
        bucket=bucket,
    )
    upload_id = created["UploadId"]
    slice_query = sql.SQL("SELECT substring({content} FROM %s FOR %s) FROM {table} WHERE {where}").format(
        content=table.column("content_column"), table=table.table, where=where_row
    )
    part_size = context.storage["part_size_bytes"]
    whole = hashlib.sha256()
    part_digests: list[bytes] = []
    parts: list[dict[str, Any]] = []
    try:
        for number, offset in enumerate(range(0, size, part_size), start=1):
            with conn.cursor(binary=True) as cur:
                cur.execute(slice_query, (offset + 1, part_size, row_id, xmin))
                found = cur.fetchone()
            if found is None or found[0] is None:
                _abort_upload(context, key, upload_id)
                return None
            chunk = bytes(found[0])
            whole.update(chunk)
            part_digest = hashlib.sha256(chunk).digest()
            part_checksum = base64.b64encode(part_digest).decode("ascii")
            response = call_with_retries(
                lambda chunk=chunk, number=number, part_checksum=part_checksum: client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                    ContentLength=len(chunk),
                    ChecksumSHA256=part_checksum,
                ),
                f"upload part {number} of {key}",
                policy,
                bucket=bucket,
            )
            part_digests.append(part_digest)
            parts.append({"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": part_checksum})
            del chunk
        if whole.hexdigest() != sha256_hex:
            raise VerificationError(
                f"Row {row_id}: the slices read hash to {whole.hexdigest()}, but Postgres computed {sha256_hex}."
            )
        completed = call_with_retries(
            lambda: client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            ),
            f"complete multipart upload {key}",
            policy,
            bucket=bucket,
        )
    except BaseException:
        _abort_upload(context, key, upload_id)
        raise
    # A CreateMultipartUpload whose response came after the client's timeout was retried, so the
    # first upload it made may still be open. Only this worker writes this key, so abort the rest.
    _abort_stale_uploads(context, key)
    return key, sha256_hex, composite_sha256(part_digests), size, completed.get("ChecksumSHA256")


def _abort_upload(context: BatchContext, key: str, upload_id: str) -> None:
    try:
        context.client.abort_multipart_upload(Bucket=context.bucket, Key=key, UploadId=upload_id)
    except Exception as error:  # noqa: BLE001 - best effort; a lifecycle rule cleans up the rest
        log.warning("Could not abort multipart upload %s of %s: %s", upload_id, key, error)


def _abort_stale_uploads(context: BatchContext, key: str) -> None:
    """Abort unfinished multipart uploads of this key left by a killed attempt (ours, by construction)."""
    try:
        listing = context.client.list_multipart_uploads(Bucket=context.bucket, Prefix=key)
    except Exception as error:  # noqa: BLE001 - listing is optional; some servers do not support it
        log.debug("Could not list multipart uploads under %s: %s", key, error)
        return
    for upload in listing.get("Uploads", []):
        if upload.get("Key") == key:
            log.info("Aborting an unfinished multipart upload of %s left by an earlier attempt.", key)
            _abort_upload(context, key, upload["UploadId"])


def _flip(
    conn: psycopg.Connection,
    context: BatchContext,
    row_id: int,
    xmin: str,
    attempt_id: str,
    key: str,
    size: int,
    sha256_hex: str,
) -> bool:
    """Clear the inline bytes and record the key, in one transaction, only if the row is unchanged."""
    table = context.table
    update = sql.SQL(
        "UPDATE {table} SET {content} = NULL, {backend} = %s, {key} = %s"
        " WHERE {pk} = %s AND xmin = %s::xid AND {backend} = %s"
    ).format(
        table=table.table,
        content=table.column("content_column"),
        backend=table.column("backend_column"),
        key=table.column("key_column"),
        pk=table.column("primary_key"),
    )
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(update, (table.mapping.offloaded_value, key, row_id, xmin, table.mapping.inline_value))
        flipped = cur.rowcount == 1
        ledger.record(
            cur,
            context.ledger_schema,
            attempt_id=attempt_id,
            run_id=context.run_id,
            batch_id=context.batch_id,
            table_name=table.qualified_name,
            row_id=row_id,
            operation="offload",
            outcome="offloaded" if flipped else "changed",
            object_key=key,
            size_bytes=size,
            sha256=sha256_hex,
            detail=None if flipped else "row changed or deleted between read and flip; left as it was",
        )
    if not flipped:
        log.warning(
            "Row %s changed or was deleted after it was read; it stays as the application left it.", row_id
        )
    return flipped


def _delete_unreferenced(conn: psycopg.Connection, context: BatchContext, key: str) -> None:
    """Delete an object uploaded for a row that changed meanwhile, unless some row references it."""
    table = context.table
    query = sql.SQL("SELECT 1 FROM {table} WHERE {key} = %s LIMIT 1").format(
        table=table.table, key=table.column("key_column")
    )
    with conn.cursor() as cur:
        cur.execute(query, (key,))
        if cur.fetchone() is not None:
            return
    try:
        call_with_retries(
            lambda: context.client.delete_object(Bucket=context.bucket, Key=key),
            f"delete unused {key}",
            context.policy,
            bucket=context.bucket,
        )
    except (PermanentError, TransientError) as error:
        log.warning(
            "Could not delete unused object %s; verification will list it as an orphan: %s", key, error
        )
