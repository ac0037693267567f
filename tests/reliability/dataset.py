"""Attachments tables for the reliability suite, the hashes of what each row holds, and the audit.

Every table records, when its rows are written, the SHA-256 and size of each row's content.
The audit compares the table and the bucket with those hashes: an inline row must hold exactly
its bytes, an offloaded row must have no inline bytes and an object whose SHA-256 matches. It
follows the row's key to the object, but trusts no checksum the product recorded, in the ledger
or on the server.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from attachment_ops.config import MaintenanceConfig, load_config
from attachment_ops.db import connect
from attachment_ops.errors import TransientError
from attachment_ops.offload.mapping import resolve_table
from attachment_ops.offload.params import build_params
from attachment_ops.offload.planner import plan_offload
from attachment_ops.offload.summary import inline_remaining, summarize
from attachment_ops.offload.worker import run_batch
from tests.reliability.summary import RECORD

MIB = 1024 * 1024
# The smallest multipart settings the configuration accepts (S3's minimum part size is 5 MiB).
PART_BYTES = 5 * MIB


@dataclass(frozen=True)
class Content:
    """SHA-256 (hex) and size of one row's content."""

    sha256: str
    size: int

    @classmethod
    def of(cls, data: bytes) -> Content:
        return cls(hashlib.sha256(data).hexdigest(), len(data))


@dataclass(frozen=True)
class RowSpec:
    row_id: int
    data: bytes | None
    filename: str | None = "file.bin"
    content_type: str | None = "application/octet-stream"


def random_rows(
    rng: random.Random, count: int, *, first_id: int = 1, max_size: int = 200_000, large: int = 0
) -> list[RowSpec]:
    """Return ``count`` rows of random bytes, the first ``large`` of them big enough for multipart."""
    rows = []
    for index in range(count):
        if index < large:
            size = 2 * PART_BYTES + rng.randint(1, MIB)
        else:
            size = rng.randint(1, max_size)
        rows.append(
            RowSpec(first_id + index, rng.randbytes(size), f"file {first_id + index}.pdf", "application/pdf")
        )
    return rows


def suite_config(
    schema: str, table: str, bucket: str, prefix: str = "attachments/", **sections: Any
) -> MaintenanceConfig:
    """Configuration for one test table: fast retries, 5 MiB multipart, the ledger next to the table.

    ``sections`` maps a section name to keys merged over these settings.
    """
    data: dict[str, dict[str, Any]] = {
        "attachments": {"table": f"{schema}.{table}"},
        "storage": {
            "bucket": bucket,
            "prefix": prefix,
            "max_attempts": 4,
            "backoff_base_seconds": 0.02,
            "backoff_max_seconds": 0.2,
            "multipart_threshold_bytes": PART_BYTES,
            "part_size_bytes": PART_BYTES,
            "read_timeout_seconds": 10,
            "connect_timeout_seconds": 2,
        },
        "offload": {"ledger_schema": f"{schema}_ledger", "lock_timeout_ms": 1000, "batch_rows": 6},
        "verification": {"workers": 2},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return load_config(data)


@dataclass
class Dataset:
    """One attachments table, its bucket and configuration, and the content each row must hold."""

    dsn: str
    schema: str
    table: str
    bucket: str
    config: MaintenanceConfig
    expected: dict[int, Content | None] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def ledger_schema(self) -> str:
        return self.config.section("offload")["ledger_schema"]

    def create(self) -> Dataset:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigint PRIMARY KEY, filename text, content_type text, bytes bytea,"
                    " storage_backend text NOT NULL DEFAULT 'db', storage_key text,"
                    " created_at timestamptz NOT NULL DEFAULT now())"
                ).format(self.identifier)
            )
        return self

    def insert(self, rows: list[RowSpec]) -> None:
        with psycopg.connect(self.dsn) as conn, conn.cursor() as cur:
            for row in rows:
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} (id, filename, content_type, bytes) VALUES (%s, %s, %s, %s)"
                    ).format(self.identifier),
                    (row.row_id, row.filename, row.content_type, row.data),
                )
        for row in rows:
            self.expected[row.row_id] = None if row.data is None else Content.of(row.data)

    def fetch(self, query: str, params: Any = None) -> list[tuple]:
        """Run ``query`` with ``{table}`` and ``{ledger}`` filled in and return its rows."""
        composed = sql.SQL(query).format(
            table=self.identifier, ledger=sql.Identifier(self.ledger_schema, "ledger")
        )
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(composed, params).fetchall()

    def backends(self) -> dict[int, str]:
        return dict(self.fetch("SELECT id, storage_backend FROM {table}"))

    def inline_ids(self) -> list[int]:
        return [
            row[0] for row in self.fetch("SELECT id FROM {table} WHERE storage_backend = 'db' ORDER BY id")
        ]

    def offloaded_ids(self) -> list[int]:
        return [
            row[0] for row in self.fetch("SELECT id FROM {table} WHERE storage_backend = 's3' ORDER BY id")
        ]

    def ledger(self) -> list[tuple]:
        """Return (entry_id, attempt_id, row_id, operation, outcome, sha256, recorded_at) for this table."""
        return self.fetch(
            "SELECT entry_id, attempt_id::text, row_id, operation, outcome, sha256, recorded_at FROM {ledger}"
            " WHERE table_name = %s ORDER BY entry_id",
            (f"{self.schema}.{self.table}",),
        )


@dataclass
class Audit:
    """What the audit found; ``lost`` and ``corrupted`` name each row and why."""

    rows_checked: int = 0
    objects_reread: int = 0
    inline: int = 0
    offloaded: int = 0
    lost: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)


def object_content(s3_client: Any, bucket: str, key: str) -> Content | None:
    """Stream an object and return its SHA-256 and size, or None when it does not exist."""
    from botocore.exceptions import ClientError

    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as error:
        if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise
    digest = hashlib.sha256()
    size = 0
    for chunk in body.iter_chunks(MIB):
        digest.update(chunk)
        size += len(chunk)
    return Content(digest.hexdigest(), size)


def audit(dataset: Dataset, s3_client: Any, *, record: bool = True) -> Audit:
    """Check every row against the hashes recorded when it was written, and record the figures.

    A row counts as lost when its content is found nowhere (row missing, inline NULL where
    bytes were expected, or an offloaded row whose object is missing). It counts as corrupted
    when content is found but differs, when an offloaded row keeps inline bytes, when a deleted
    row is back, or when a row appears that no test wrote. ``record`` False keeps the figures out
    of the summary, for a known fault whose damage the summary lists on its own.
    """
    result = Audit()
    found = {
        row[0]: row[1:]
        for row in dataset.fetch(
            "SELECT id, storage_backend, storage_key, encode(sha256(bytes), 'hex'), octet_length(bytes)"
            " FROM {table}"
        )
    }
    for row_id in sorted(set(found) - set(dataset.expected)):
        result.corrupted.append(f"row {row_id} exists but was never written")
    for row_id, want in sorted(dataset.expected.items()):
        result.rows_checked += 1
        if row_id in dataset.deleted:
            if row_id in found:
                result.corrupted.append(f"row {row_id} was deleted but is present again")
            continue
        if row_id not in found:
            result.lost.append(f"row {row_id} is missing")
            continue
        backend, key, inline_sha, inline_size = found[row_id]
        if backend == "db":
            result.inline += 1
            if want is None:
                if inline_sha is not None:
                    result.corrupted.append(f"row {row_id} should be NULL but holds {inline_size} bytes")
            elif inline_sha is None:
                result.lost.append(f"row {row_id} is inline with NULL bytes, expected {want.size} bytes")
            elif (inline_sha, inline_size) != (want.sha256, want.size):
                result.corrupted.append(f"row {row_id} inline holds {inline_size} bytes with other content")
            continue
        if backend != "s3":
            result.corrupted.append(f"row {row_id} has backend {backend!r}")
            continue
        result.offloaded += 1
        if inline_sha is not None:
            result.corrupted.append(f"row {row_id} is offloaded but keeps {inline_size} inline bytes")
        if not key:
            result.lost.append(f"row {row_id} is offloaded without a key")
            continue
        stored = object_content(s3_client, dataset.bucket, key)
        result.objects_reread += 1
        if stored is None:
            result.lost.append(f"row {row_id}: object {key} is missing")
        elif want is None or stored != want:
            result.corrupted.append(f"row {row_id}: object {key} differs from the row's content")
    if record:
        RECORD.audited(result.rows_checked, result.objects_reread, len(result.lost), len(result.corrupted))
    return result


def assert_intact(dataset: Dataset, s3_client: Any) -> Audit:
    """Audit and assert that nothing was lost or corrupted."""
    result = audit(dataset, s3_client)
    assert result.lost == []
    assert result.corrupted == []
    return result


def offload_batches(
    dataset: Dataset, s3_client: Any, *, run_id: str, **overrides: Any
) -> tuple[dict[str, Any], list[TransientError]]:
    """Plan a run and offload every batch, each on its own as Airflow maps them over tasks.

    A batch that raises TransientError does not stop the others; the errors are returned with
    the run's summary. A PermanentError propagates at once.
    """
    params = build_params(dataset.config, overrides)
    with connect(dataset.dsn) as conn:
        table = resolve_table(conn, dataset.config.mapping)
        plan = plan_offload(conn, table, params)
    results: list[dict[str, Any] | None] = []
    errors: list[TransientError] = []
    for batch in plan.batches:
        try:
            results.append(
                run_batch(dataset.dsn, s3_client, dataset.config, params, batch.to_dict(), run_id).to_dict()
            )
        except TransientError as error:
            results.append(None)
            errors.append(error)
    with connect(dataset.dsn) as conn:
        remaining = inline_remaining(conn, table)
    return summarize(plan.to_dict(), results, remaining), errors


def offload_until_done(
    dataset: Dataset, s3_client: Any, *, run_id: str = "rerun", max_runs: int = 4, **overrides: Any
) -> list[dict[str, Any]]:
    """Rerun the offload the way Airflow retries failed tasks, until no inline row with bytes is left.

    Returns each run's summary with the text of its batches' TransientErrors under ``errors``. A
    run that failed as a whole, while planning or with a raw psycopg error, has ``inline_rows``
    None.
    """
    outcomes: list[dict[str, Any]] = []
    for attempt in range(max_runs):
        try:
            summary, errors = offload_batches(dataset, s3_client, run_id=f"{run_id}-{attempt}", **overrides)
        except (TransientError, psycopg.OperationalError) as error:
            # Airflow retries a failed task whatever the exception, unless it is AirflowFailException.
            outcomes.append({"inline_rows": None, "errors": [f"{type(error).__name__}: {error}"]})
            time.sleep(0.5)
            continue
        summary["errors"] = [str(error) for error in errors]
        outcomes.append(summary)
        if summary["inline_rows"] == 0:
            break
        time.sleep(0.1)
    return outcomes


def overlapping_attempts(ledger: list[tuple]) -> list[str]:
    """Return the rows on which two attempts (offload or restore) ran at the same time.

    An attempt spans from its ``started`` entry to the final entry with the same attempt id.
    Attempts without a final entry (killed or failed) are left out.
    """
    spans: dict[str, list[Any]] = {}
    for _entry, attempt, row_id, operation, outcome, _sha, recorded_at in ledger:
        if outcome == "started":
            spans[attempt] = [row_id, operation, recorded_at, None]
        elif attempt in spans and spans[attempt][3] is None:
            spans[attempt][3] = recorded_at
    by_row: dict[int, list[tuple[Any, Any, str]]] = {}
    for attempt, (row_id, operation, start, end) in spans.items():
        if end is not None:
            by_row.setdefault(row_id, []).append((start, end, f"{operation} {attempt}"))
    overlaps = []
    for row_id, intervals in by_row.items():
        intervals.sort()
        for (_, end, first), (start, _, second) in zip(intervals, intervals[1:], strict=False):
            if start < end:
                overlaps.append(f"row {row_id}: {first} and {second}")
    return overlaps


def repeated_offloads(ledger: list[tuple]) -> list[str]:
    """Return rows offloaded twice with the same content and no restore in between."""
    last: dict[int, str | None] = {}
    repeated = []
    for _entry, _attempt, row_id, operation, outcome, sha256, _at in ledger:
        if operation == "restore" and outcome == "restored":
            last.pop(row_id, None)
        elif operation == "offload" and outcome == "offloaded":
            if last.get(row_id) == sha256:
                repeated.append(f"row {row_id} ({sha256})")
            last[row_id] = sha256
    return repeated
