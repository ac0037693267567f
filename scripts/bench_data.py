"""Data sets of the benchmark: its own table, bucket and ledger schema, reset between measured runs.

The benchmark never touches the demo's ``public.document_attachments`` or the ``attachments``
bucket. It generates ``bench.document_attachments`` with the demo generator, keeps a pristine copy
of the columns an offload changes (``bytes``, ``storage_backend``, ``storage_key``), and before
each measured run restores them with one ``UPDATE ... FROM`` the copy, drops the ledger schema and
empties the bucket except for the objects of the rows that the generator created offloaded.
"""

from __future__ import annotations

import logging
import os
import random
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "bench"
TABLE = f"{SCHEMA}.document_attachments"
PRISTINE_TABLE = f"{SCHEMA}.document_attachments_pristine"
BIG_TABLE = f"{SCHEMA}.document_attachments_big"
BUCKET = "bench-attachments"
# The offload writes under OFFLOAD_PREFIX. The generator's already-offloaded rows point at objects
# under PRESET_PREFIX, which the resets keep, so verification finds them.
OFFLOAD_PREFIX = "attachments/"
PRESET_PREFIX = "preset/"
LEDGER_SCHEMA = "bench_ledger"
# Large enough that one run covers every row of the production data set (3,748 rows).
ROW_LIMIT = 100_000

BIG_BLOB_BYTES = 600 * 1000 * 1000
# The memory run copies at most this many rows next to the large blob, so it stays short at the
# production scale too. The main rounds already cover the whole table.
BIG_TABLE_ROWS = 200
BIG_BLOB_CHUNK_BYTES = 1024 * 1024
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)


@dataclass(frozen=True)
class DataSet:
    """Inline rows with content, which every measured variant moves: count, bytes and largest value."""

    table: str
    scale: str
    seed: int
    rows: int
    bytes: int
    largest_bytes: int


def s3_client() -> BaseClient:
    """Build an S3 client for the local endpoint in S3_ENDPOINT_URL, with the package's settings."""
    from attachment_ops.storage import S3Settings, make_s3_client

    return make_s3_client(
        S3Settings(
            endpoint_url=os.environ["S3_ENDPOINT_URL"],
            region_name=os.environ.get("S3_REGION", "us-east-1"),
            access_key_id=os.environ["S3_ACCESS_KEY"],
            secret_access_key=os.environ["S3_SECRET_KEY"],
        )
    )


def maintenance_config(table: str = TABLE, **sections: dict[str, Any]) -> dict[str, Any]:
    """Return the ``maintenance_config`` overrides that aim every stage at the benchmark's own objects."""
    config: dict[str, Any] = {
        "attachments": {"table": table},
        "storage": {"bucket": BUCKET, "prefix": OFFLOAD_PREFIX},
        "offload": {"ledger_schema": LEDGER_SCHEMA},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def ensure_bucket(client: BaseClient) -> None:
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=BUCKET)
    except ClientError:
        log.info("Creating bucket %s", BUCKET)
        client.create_bucket(Bucket=BUCKET)


def empty_bucket(client: BaseClient, keep_prefix: str | None = PRESET_PREFIX) -> int:
    """Delete every object and unfinished multipart upload of the bucket, except under ``keep_prefix``."""
    deleted = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys = [
            {"Key": item["Key"]}
            for item in page.get("Contents", [])
            if not (keep_prefix and item["Key"].startswith(keep_prefix))
        ]
        for start in range(0, len(keys), 1000):
            client.delete_objects(
                Bucket=BUCKET, Delete={"Objects": keys[start : start + 1000], "Quiet": True}
            )
        deleted += len(keys)
    uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    for upload in uploads:
        client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    return deleted


def generate(scale: str, seed: int) -> None:
    """Create the benchmark table with the demo generator, then the pristine copy of its movable columns."""
    import psycopg

    command = [
        sys.executable,
        "-m",
        "attachment_ops.demo_data",
        "--dsn",
        os.environ["APP_PG_DSN"],
        "--scale",
        scale,
        "--seed",
        str(seed),
        "--table",
        TABLE,
        "--reset",
        "--bucket",
        BUCKET,
        "--prefix",
        PRESET_PREFIX,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include")}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    with psycopg.connect(os.environ["APP_PG_DSN"], autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {PRISTINE_TABLE}")
        conn.execute(
            f"CREATE TABLE {PRISTINE_TABLE} AS SELECT id, bytes, storage_backend, storage_key FROM {TABLE}"
        )
        conn.execute(f"ALTER TABLE {PRISTINE_TABLE} ADD PRIMARY KEY (id)")


def describe(table: str = TABLE, scale: str = "", seed: int = 0) -> DataSet:
    """Count the rows an offload of ``table`` moves: inline, with content, in any size."""
    import psycopg

    with psycopg.connect(os.environ["APP_PG_DSN"], autocommit=True) as conn:
        rows, size, largest = conn.execute(
            f"SELECT count(*), coalesce(sum(octet_length(bytes)), 0), coalesce(max(octet_length(bytes)), 0)"
            f" FROM {table} WHERE storage_backend = 'db' AND bytes IS NOT NULL"
        ).fetchone()
    return DataSet(
        table=table, scale=scale, seed=seed, rows=rows, bytes=int(size), largest_bytes=int(largest)
    )


def reset_state(client: BaseClient, expected: DataSet) -> float:
    """Restore the table from its pristine copy, drop the ledger, empty the bucket, return the seconds.

    :raises RuntimeError: when the restored table does not hold the rows and bytes of ``expected``.
    """
    import psycopg

    started = time.monotonic()
    with psycopg.connect(os.environ["APP_PG_DSN"], autocommit=True) as conn:
        restored = conn.execute(
            f"UPDATE {TABLE} AS t SET bytes = p.bytes, storage_backend = p.storage_backend,"
            f" storage_key = p.storage_key FROM {PRISTINE_TABLE} AS p WHERE t.id = p.id AND"
            " (t.storage_backend IS DISTINCT FROM p.storage_backend"
            " OR t.storage_key IS DISTINCT FROM p.storage_key"
            " OR (t.bytes IS NULL) <> (p.bytes IS NULL))"
        ).rowcount
        conn.execute(f"DROP SCHEMA IF EXISTS {LEDGER_SCHEMA} CASCADE")
        # VACUUM makes the space of the old row versions reusable, so the table does not grow run
        # after run, and refreshes the statistics the planner uses for the id range scans.
        conn.execute(f"VACUUM ANALYZE {TABLE}")
    admin_dsn = os.environ.get("ADMIN_PG_DSN")
    if admin_dsn:
        # After a checkpoint now, the next timed one is checkpoint_timeout away, so one is less
        # likely to start in the middle of a measured run.
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute("CHECKPOINT")
    deleted = empty_bucket(client)
    now = describe(TABLE)
    if (now.rows, now.bytes) != (expected.rows, expected.bytes):
        raise RuntimeError(
            f"{TABLE} contains {now.rows} inline rows ({now.bytes} bytes) after the reset, expected "
            f"{expected.rows} ({expected.bytes} bytes). Run the benchmark again: it regenerates the table."
        )
    seconds = time.monotonic() - started
    log.info("Reset: %d rows restored, %d objects deleted in %.1f s", restored, deleted, seconds)
    return seconds


def _big_blob_chunks(size: int, seed: int) -> Any:
    rng = random.Random(seed)
    left = size
    while left > 0:
        piece = min(BIG_BLOB_CHUNK_BYTES, left)
        yield rng.randbytes(piece)
        left -= piece


def _copy_field(value: bytes) -> bytes:
    return struct.pack("!i", len(value)) + value


def create_big_table(client: BaseClient, seed: int, blob_bytes: int = BIG_BLOB_BYTES) -> DataSet:
    """Copy the first BIG_TABLE_ROWS pristine rows into BIG_TABLE, plus a row of ``blob_bytes`` random bytes.

    The blob is streamed to the server with a binary COPY in 1 MiB pieces, so this process never
    keeps the whole value in memory. Random bytes do not compress, so TOAST stores the value uncompressed.
    """
    import psycopg
    from psycopg.copy import LibpqWriter

    empty_bucket(client)
    with psycopg.connect(os.environ["APP_PG_DSN"], autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {LEDGER_SCHEMA} CASCADE")
        conn.execute(f"DROP TABLE IF EXISTS {BIG_TABLE}")
        conn.execute(f"CREATE TABLE {BIG_TABLE} (LIKE {TABLE} INCLUDING ALL)")
        conn.execute(
            f"INSERT INTO {BIG_TABLE} (id, company_id, filename, content_type, bytes, storage_backend,"
            f" storage_key, created_at) SELECT t.id, t.company_id, t.filename, t.content_type, p.bytes,"
            f" p.storage_backend, p.storage_key, t.created_at FROM {TABLE} AS t JOIN {PRISTINE_TABLE} AS p"
            " USING (id) ORDER BY id LIMIT %s",
            (BIG_TABLE_ROWS,),
        )
        conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{BIG_TABLE}', 'id'), (SELECT max(id) FROM {BIG_TABLE}))"
        )
        copy_sql = (
            f"COPY {BIG_TABLE} (filename, content_type, storage_backend, bytes) FROM STDIN (FORMAT BINARY)"
        )
        with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql, writer=LibpqWriter(cur)) as copy:
            copy.write(_COPY_SIGNATURE)
            copy.write(
                struct.pack("!h", 4)
                + _copy_field(b"big-scan.bin")
                + _copy_field(b"application/octet-stream")
                + _copy_field(b"db")
                + struct.pack("!i", blob_bytes)
            )
            for piece in _big_blob_chunks(blob_bytes, seed):
                copy.write(piece)
            copy.write(struct.pack("!h", -1))
        conn.execute(f"VACUUM ANALYZE {BIG_TABLE}")
    return describe(BIG_TABLE, scale="demo + one large blob", seed=seed)


def drop_big_table() -> None:
    import psycopg

    with psycopg.connect(os.environ["APP_PG_DSN"], autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {BIG_TABLE}")


def server_versions() -> dict[str, str]:
    """Return the PostgreSQL server version and the SeaweedFS (weed) version."""
    import psycopg

    versions: dict[str, str] = {}
    with psycopg.connect(os.environ["APP_PG_DSN"], autocommit=True) as conn:
        versions["postgres"] = str(conn.execute("SHOW server_version").fetchone()[0])
        settings = conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers', 'wal_level',"
            " 'synchronous_commit', 'max_wal_size') ORDER BY name"
        ).fetchall()
        versions["postgres_settings"] = ", ".join(
            f"{name}={setting}{' x ' + unit if unit else ''}" for name, setting, unit in settings
        )
    weed = Path(sys.executable).parent / "weed"
    try:
        output = subprocess.run([str(weed), "version"], capture_output=True, text=True, timeout=20).stdout
        versions["seaweedfs"] = output.strip().splitlines()[0] if output.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired) as error:
        versions["seaweedfs"] = f"unknown ({error})"
    return versions
