"""Verification against real Postgres and the real S3 server, over fixture rows built by hand.

Each test creates the attachments table in its own schema, puts objects into its own bucket with
``ChecksumSHA256`` as the offload does, and writes ledger entries into the same schema.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import sql

from attachment_ops import ledger
from attachment_ops.config import MaintenanceConfig, load_config
from attachment_ops.errors import ConfigurationError, MappingError, VerificationError
from attachment_ops.verification import MAX_LISTED, verify

PREFIX = "attachments/"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


@dataclass
class World:
    """One test's table, bucket and ledger, with helpers that mimic what an offload leaves behind."""

    conn: psycopg.Connection
    s3: Any
    bucket: str
    schema: str
    config: MaintenanceConfig

    @property
    def table(self) -> sql.Identifier:
        return sql.Identifier(self.schema, "document_attachments")

    def add_inline(self, row_id: int, data: bytes | None) -> None:
        self.conn.execute(
            sql.SQL("INSERT INTO {} (id, bytes, storage_backend) VALUES (%s, %s, 'db')").format(self.table),
            (row_id, data),
        )

    def record(self, row_id: int, key: str, data: bytes, run_id: str, outcome: str = "offloaded") -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            ledger.record(
                cur,
                self.schema,
                attempt_id=str(uuid.uuid4()),
                run_id=run_id,
                batch_id="b1",
                table_name=self.config.mapping.table,
                row_id=row_id,
                operation="offload",
                outcome=outcome,
                object_key=key,
                size_bytes=len(data),
                sha256=sha256_hex(data),
            )

    def put(self, key: str, data: bytes, *, checksum: bool = True) -> None:
        extra = {"ChecksumSHA256": sha256_b64(data)} if checksum else {}
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)

    def put_multipart(self, key: str, parts: list[bytes]) -> None:
        upload = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256")
        done = []
        for number, part in enumerate(parts, start=1):
            response = self.s3.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=part,
                ChecksumSHA256=sha256_b64(part),
            )
            done.append({"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": sha256_b64(part)})
        self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
        )

    def add_offloaded(
        self,
        row_id: int,
        data: bytes,
        *,
        run_id: str = "run-1",
        in_ledger: bool = True,
        multipart: bool = False,
    ) -> str:
        """Insert a row as an offload leaves it: object stored, backend 's3', key set, bytes NULL."""
        key = f"{PREFIX}{row_id}/{sha256_hex(data)}"
        if multipart:
            self.put_multipart(key, [data[: 5 * 1024 * 1024], data[5 * 1024 * 1024 :]])
        else:
            self.put(key, data)
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, bytes, storage_backend, storage_key) VALUES (%s, NULL, 's3', %s)"
            ).format(self.table),
            (row_id, key),
        )
        if in_ledger:
            self.record(row_id, key, data, run_id)
        return key

    def update(self, assignments: str, row_id: int, *params: Any) -> None:
        self.conn.execute(
            sql.SQL("UPDATE {} SET " + assignments + " WHERE id = %s").format(self.table), (*params, row_id)
        )

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except self.s3.exceptions.ClientError:
            return False
        return True

    def snapshot(self) -> tuple[list[tuple], list[tuple], list[tuple]]:
        rows = self.conn.execute(
            sql.SQL("SELECT id, md5(bytes), storage_backend, storage_key FROM {} ORDER BY id").format(
                self.table
            )
        ).fetchall()
        entries = self.conn.execute(
            sql.SQL("SELECT entry_id, row_id, outcome, object_key FROM {}.ledger ORDER BY entry_id").format(
                sql.Identifier(self.schema)
            )
        ).fetchall()
        listing = self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        objects = sorted((item["Key"], item["ETag"], item["Size"]) for item in listing)
        return rows, entries, objects

    def verify(self, **kwargs: Any):
        kwargs.setdefault("scope", "all")
        kwargs.setdefault("reread_fraction", 0.0)
        return verify(self.conn, self.s3, self.config, **kwargs)


@pytest.fixture
def world(pg_dsn, pg_schema, bucket, s3_client):
    config = load_config(
        {
            "attachments": {"table": f"{pg_schema}.document_attachments"},
            "storage": {"bucket": bucket, "prefix": PREFIX},
            "offload": {"ledger_schema": pg_schema},
        }
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.document_attachments (id bigint PRIMARY KEY, bytes bytea,"
                " storage_backend text NOT NULL DEFAULT 'db', storage_key text,"
                " created_at timestamptz NOT NULL DEFAULT now(), content_type text, filename text)"
            ).format(sql.Identifier(pg_schema))
        )
        ledger.ensure_schema(conn, pg_schema)
        yield World(conn=conn, s3=s3_client, bucket=bucket, schema=pg_schema, config=config)


def blob(size: int) -> bytes:
    return os.urandom(size)


def test_intact_objects_pass(world):
    sizes = {1: 1000, 2: 2000, 3: 3000}
    for row_id, size in sizes.items():
        world.add_offloaded(row_id, blob(size))
    world.add_inline(4, b"x" * 100)
    world.add_inline(5, None)

    result = world.verify()

    assert result.ok is True
    assert result.objects_checked == 3
    assert result.objects_ok == 3
    assert result.verified_by_server_checksum == 3
    assert result.reread_objects == 0
    assert result.orphan_count == 0
    assert result.totals["offloaded_rows"] == 3
    assert result.totals["offloaded_bytes_recorded"] == 6000
    assert result.totals["inline_rows"] == 2
    assert result.totals["inline_bytes"] == 100
    assert result.totals["inline_rows_without_bytes"] == 1


@pytest.mark.parametrize(
    ("fraction", "expected_rereads"),
    [(0.0, 0), (0.5, 2), (0.3, 2), (1.0, 4)],
)
def test_reread_fraction_share(world, fraction, expected_rereads):
    for row_id in range(1, 5):
        world.add_offloaded(row_id, blob(500))

    result = world.verify(reread_fraction=fraction)

    assert result.reread_objects == expected_rereads
    assert result.verified_by_reread == expected_rereads
    assert result.reread_bytes == 500 * expected_rereads
    assert result.objects_ok == 4


@pytest.mark.parametrize("with_checksum", [True, False], ids=["server-checksum", "no-checksum"])
def test_corrupt_object_names_row(world, with_checksum):
    world.add_offloaded(1, blob(4096))
    key = world.add_offloaded(2, blob(4096))
    world.add_offloaded(3, blob(4096))
    world.put(key, blob(4096), checksum=with_checksum)

    with pytest.raises(VerificationError, match=f"checksum_mismatch in 1 row: row 2 \\({key}\\)") as caught:
        world.verify()

    result = caught.value.result
    assert result.failure_counts == {"checksum_mismatch": 1}
    assert result.failures["checksum_mismatch"][0]["row_id"] == 2
    assert result.objects_ok == 2


def test_same_size_overwrite_caught_by_reread(world):
    """A sampled re-read compares the bytes themselves, not only the server's stored checksum."""
    key = world.add_offloaded(1, blob(2048))
    world.put(key, blob(2048), checksum=False)

    with pytest.raises(VerificationError) as caught:
        world.verify(reread_fraction=1.0)

    assert caught.value.result.failures["checksum_mismatch"][0]["source"] == "re-read"


def test_size_mismatch_names_row(world):
    key = world.add_offloaded(7, blob(1000))
    world.put(key, blob(999))

    with pytest.raises(VerificationError, match="size_mismatch in 1 row: row 7") as caught:
        world.verify()

    entry = caught.value.result.failures["size_mismatch"][0]
    assert (entry["expected"], entry["actual"]) == (1000, 999)


def test_missing_object_names_row(world):
    world.add_offloaded(1, blob(100))
    key = world.add_offloaded(2, blob(100))
    world.s3.delete_object(Bucket=world.bucket, Key=key)

    with pytest.raises(VerificationError, match=f"missing_object in 1 row: row 2 \\({key}\\)") as caught:
        world.verify()

    assert caught.value.result.failed_row_ids() == [2]


def test_stray_object_listed_and_kept(world):
    world.add_offloaded(1, blob(100))
    stray = f"{PREFIX}999/{sha256_hex(b'stray')}"
    world.put(stray, b"stray")

    result = world.verify()

    assert result.ok is True
    assert result.orphan_count == 1
    assert result.orphans[0]["key"] == stray
    assert result.orphans[0]["row_id"] == 999
    assert result.orphans[0]["deleted"] is False
    assert world.exists(stray) is True


def test_young_orphan_kept_when_deleting(world):
    stray = f"{PREFIX}999/{sha256_hex(b'stray')}"
    world.put(stray, b"stray")

    result = world.verify(delete_orphans=True, orphan_grace_hours=24)

    assert result.orphans_deleted == 0
    assert result.orphans[0]["kept_because"] == "younger than the grace period of 24 h"
    assert world.exists(stray) is True


def test_old_orphans_deleted_when_asked(world):
    referenced = world.add_offloaded(1, blob(100))
    stray = f"{PREFIX}999/{sha256_hex(b'stray')}"
    foreign = f"{PREFIX}notes.txt"
    world.put(stray, b"stray")
    world.put(foreign, b"not written by the offload")

    result = world.verify(
        delete_orphans=True, orphan_grace_hours=24, now=datetime.now(timezone.utc) + timedelta(hours=48)
    )

    assert result.orphan_count == 2
    assert result.orphans_deleted == 1
    assert world.exists(stray) is False
    assert world.exists(foreign) is True
    assert world.exists(referenced) is True


def test_orphan_with_recent_ledger_kept(world):
    """An object whose row was attempted within the grace period may be about to be flipped to."""
    data = blob(100)
    world.add_inline(5, data)
    key = f"{PREFIX}5/{sha256_hex(data)}"
    world.put(key, data)
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    world.record(5, key, data, "run-2", outcome="started")
    world.conn.execute(
        sql.SQL("UPDATE {}.ledger SET recorded_at = %s").format(sql.Identifier(world.schema)),
        (later - timedelta(minutes=5),),
    )

    result = world.verify(delete_orphans=True, orphan_grace_hours=1, now=later)

    assert result.orphans[0]["kept_because"] == "its row has ledger entries within the grace period"
    assert world.exists(key) is True


def break_without_key(world: World) -> None:
    world.update("storage_key = NULL", 1)


def break_with_inline_bytes(world: World) -> None:
    world.update("bytes = %s", 1, b"left behind")


def break_inline_lost_bytes(world: World) -> None:
    world.update("storage_backend = 'db'", 1)


def break_key_mismatch(world: World) -> None:
    other = f"{PREFIX}1/{'f' * 64}"
    world.put(other, b"other content")
    world.update("storage_key = %s", 1, other)


@pytest.mark.parametrize(
    ("check", "break_row"),
    [
        ("offloaded_without_key", break_without_key),
        ("offloaded_with_inline_bytes", break_with_inline_bytes),
        ("inline_lost_bytes", break_inline_lost_bytes),
        ("ledger_key_mismatch", break_key_mismatch),
    ],
)
def test_invariant_violation_names_row(world, check, break_row):
    world.add_offloaded(1, blob(300))
    world.add_offloaded(2, blob(300))
    break_row(world)

    with pytest.raises(VerificationError, match=f"{check} in 1 row: row 1") as caught:
        world.verify()

    result = caught.value.result
    assert result.failure_counts[check] == 1
    assert result.failures[check][0]["row_id"] == 1
    assert result.failed_row_ids() == [1]


def test_restored_row_without_bytes_fails(world):
    data = blob(300)
    world.add_inline(3, None)
    world.record(3, f"{PREFIX}3/{sha256_hex(data)}", data, "restore-1", outcome="restored")

    with pytest.raises(VerificationError, match="inline_lost_bytes in 1 row: row 3"):
        world.verify()


def test_null_inline_row_without_history_passes(world):
    world.add_inline(1, None)
    world.add_inline(2, b"")

    result = world.verify()

    assert result.ok is True
    assert result.totals["inline_rows_without_bytes"] == 2


def test_unledgered_rows_listed_apart(world):
    world.add_offloaded(1, blob(100))
    key = world.add_offloaded(2, blob(250), in_ledger=False)

    result = world.verify()

    assert result.ok is True
    assert result.unledgered_count == 1
    assert result.unledgered == [{"row_id": 2, "key": key, "size_bytes": 250}]
    assert result.totals["unledgered_rows"] == 1
    assert result.objects_ok == 2


def test_unledgered_missing_object_fails(world):
    key = world.add_offloaded(2, blob(250), in_ledger=False)
    world.s3.delete_object(Bucket=world.bucket, Key=key)

    with pytest.raises(VerificationError, match="missing_object in 1 row: row 2"):
        world.verify()


def test_multipart_object_verified_by_reread(world):
    data = blob(5 * 1024 * 1024 + 10)
    world.add_offloaded(1, data, multipart=True)

    result = world.verify()

    assert result.verified_by_server_checksum == 0
    assert result.verified_by_reread == 1
    assert result.reread_bytes == len(data)
    assert result.objects_ok == 1


def test_multipart_over_budget_reported(world):
    world.add_offloaded(1, blob(5 * 1024 * 1024 + 10), multipart=True)

    result = world.verify(reread_max_bytes=1024)

    assert result.ok is True
    assert result.checksum_not_verified_count == 1
    assert result.checksum_not_verified[0]["row_id"] == 1
    assert result.objects_ok == 0
    assert "reread_max_bytes" in result.notes[0]


def test_scope_run_checks_run_rows(world):
    world.add_offloaded(1, blob(100), run_id="run-a")
    world.add_offloaded(2, blob(100), run_id="run-a")
    world.add_offloaded(3, blob(700), run_id="run-b")

    result = world.verify(scope="run", run_id="run-b")

    assert result.rows_in_scope == 1
    assert result.totals["run_offloaded_rows"] == 1
    assert result.totals["run_offloaded_bytes"] == 700


def test_scope_run_ignores_other_runs(world):
    key = world.add_offloaded(1, blob(100), run_id="run-a")
    world.add_offloaded(2, blob(100), run_id="run-b")
    world.s3.delete_object(Bucket=world.bucket, Key=key)

    result = world.verify(scope="run", run_id="run-b")

    assert result.ok is True


def test_scope_sample_size(world):
    for row_id in range(1, 6):
        world.add_offloaded(row_id, blob(100))

    result = world.verify(scope="sample", sample_size=2)

    assert result.rows_in_scope == 2
    assert result.objects_ok == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scope": "run"}, "needs the run id"),
        ({"scope": "everything"}, "scope 'everything' is invalid"),
        ({"reread_fraction": 1.5}, "reread_fraction must be between 0 and 1"),
        ({"sample_size": 0}, "sample_size must be at least 1"),
    ],
)
def test_invalid_parameters_rejected(world, overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        world.verify(**overrides)


def test_verification_changes_nothing(world):
    world.add_offloaded(1, blob(100))
    missing = world.add_offloaded(2, blob(100))
    world.add_inline(3, b"inline")
    world.put(f"{PREFIX}999/{sha256_hex(b'stray')}", b"stray")
    world.s3.delete_object(Bucket=world.bucket, Key=missing)
    before = world.snapshot()

    with pytest.raises(VerificationError):
        world.verify(reread_fraction=1.0, now=datetime.now(timezone.utc) + timedelta(days=30))

    assert world.snapshot() == before


def test_summary_lists_are_capped(world):
    count = MAX_LISTED + 10
    with world.conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {} (id, storage_backend, storage_key) VALUES (%s, 's3', %s)").format(
                world.table
            ),
            [(row_id, f"{PREFIX}{row_id}/{'0' * 64}") for row_id in range(1, count + 1)],
        )

    with pytest.raises(VerificationError, match=f"and {count - 20} more") as caught:
        world.verify()

    summary = caught.value.result.to_dict()
    assert summary["failure_counts"]["missing_object"] == count
    assert len(summary["failures"]["missing_object"]) == MAX_LISTED
    assert len(json.dumps(summary)) < 20000


def test_missing_ledger_schema_noted(world):
    key = world.add_offloaded(1, blob(100), in_ledger=False)
    config = load_config(
        {
            **world.config.data,
            "offload": {**world.config.data["offload"], "ledger_schema": world.schema + "_absent"},
        }
    )

    result = verify(world.conn, world.s3, config, scope="all")

    assert result.unledgered == [{"row_id": 1, "key": key, "size_bytes": 100}]
    assert "does not exist" in result.notes[0]


def test_missing_table_raises_mapping_error(world):
    config = load_config(
        {
            **world.config.data,
            "attachments": {**world.config.data["attachments"], "table": world.schema + ".absent"},
        }
    )

    with pytest.raises(MappingError, match="absent"):
        verify(world.conn, world.s3, config, scope="all")


def test_conninfo_session_works(world, pg_dsn):
    world.add_offloaded(1, blob(100))

    result = verify(pg_dsn, world.s3, world.config, scope="all")

    assert result.objects_ok == 1
