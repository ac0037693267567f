"""Fixtures for offload tests: an attachments table in a fresh schema, a bucket and a config."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql

from attachment_ops.config import MaintenanceConfig, load_config

BASE_TIME = datetime(2025, 1, 1, tzinfo=timezone.utc)


@dataclass
class Attachments:
    """One test's attachments table, its bucket and the bytes each row held when created."""

    dsn: str
    schema: str
    table: str
    bucket: str
    config: MaintenanceConfig
    expected: dict[int, bytes | None]

    @property
    def qualified(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.table)

    def rows(self) -> dict[int, tuple]:
        """Map id to (backend, key, bytes) as stored now."""
        with psycopg.connect(self.dsn) as conn:
            result = conn.execute(
                sql.SQL("SELECT id, storage_backend, storage_key, bytes FROM {} ORDER BY id").format(
                    self.qualified
                )
            ).fetchall()
        return {row[0]: (row[1], row[2], None if row[3] is None else bytes(row[3])) for row in result}

    def ledger(self) -> list[tuple]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(
                sql.SQL(
                    "SELECT row_id, outcome, object_key, size_bytes, sha256 FROM {}.ledger ORDER BY entry_id"
                ).format(sql.Identifier(self.config.section("offload")["ledger_schema"]))
            ).fetchall()


def make_table(dsn: str, schema: str, table: str = "document_attachments") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, company_id bigint, filename text, content_type text,"
                " bytes bytea, storage_backend text NOT NULL DEFAULT 'db', storage_key text,"
                " created_at timestamptz NOT NULL)"
            ).format(sql.Identifier(schema, table))
        )


def insert_rows(dsn: str, schema: str, rows: list[tuple], table: str = "document_attachments") -> None:
    """Insert (id, filename, content_type, bytes, created_at) tuples."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (id, company_id, filename, content_type, bytes, created_at)"
                " VALUES (%s, 1, %s, %s, %s, %s)"
            ).format(sql.Identifier(schema, table)),
            rows,
        )


def random_rows(count: int, seed: int = 7, sizes: list[int] | None = None) -> list[tuple]:
    generator = random.Random(seed)
    rows = []
    for index in range(count):
        size = sizes[index] if sizes else generator.randint(0, 300_000)
        rows.append(
            (
                index + 1,
                f"file {index + 1}.pdf",
                "application/pdf",
                generator.randbytes(size),
                BASE_TIME + timedelta(days=index),
            )
        )
    return rows


@pytest.fixture
def attachments(pg_dsn, pg_schema, bucket) -> Attachments:
    """Twelve rows of random sizes created one day apart from 2025-01-01, plus the config to move them."""
    make_table(pg_dsn, pg_schema)
    rows = random_rows(12)
    insert_rows(pg_dsn, pg_schema, rows)
    config = load_config(
        {
            "attachments": {"table": f"{pg_schema}.document_attachments"},
            "storage": {"bucket": bucket, "max_attempts": 3, "backoff_base_seconds": 0.05},
            "offload": {"ledger_schema": f"{pg_schema}_ledger"},
        }
    )
    yield Attachments(
        dsn=pg_dsn,
        schema=pg_schema,
        table="document_attachments",
        bucket=bucket,
        config=config,
        expected={row[0]: row[3] for row in rows},
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(f"{pg_schema}_ledger"))
        )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def object_bytes(s3_client, bucket: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def env(name: str) -> str:
    return os.environ[name]
