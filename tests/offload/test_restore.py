"""Restore: offloaded rows come back inline byte for byte, under the same verify-then-flip rule."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from attachment_ops.errors import ConfigurationError, TransientError
from attachment_ops.offload.restore import restore_rows
from tests.offload.helpers import run_offload


def test_restore_of_run_brings_bytes_back(attachments, s3_client):
    run_offload(attachments.dsn, s3_client, attachments.config, run_id="offload-1", limit=8)

    summary = restore_rows(
        attachments.dsn, s3_client, attachments.config, run_id="restore-1", source_run_id="offload-1"
    )

    assert summary["rows_restored"] == 8
    assert summary["bytes_restored"] == sum(len(attachments.expected[i]) for i in range(1, 9))
    for row_id, (backend, key, inline) in attachments.rows().items():
        assert (backend, key) == ("db", None)
        assert inline == attachments.expected[row_id]


def test_restore_by_ids_touches_only_them(attachments, s3_client):
    run_offload(attachments.dsn, s3_client, attachments.config)

    summary = restore_rows(attachments.dsn, s3_client, attachments.config, run_id="r", row_ids=[2, 5])

    rows = attachments.rows()
    assert summary["rows_restored"] == 2
    assert sorted(i for i, row in rows.items() if row[0] == "db") == [2, 5]
    assert rows[5][2] == attachments.expected[5]


def test_restore_refuses_corrupt_object(attachments, s3_client):
    run_offload(attachments.dsn, s3_client, attachments.config)
    key = attachments.rows()[3][1]
    original = s3_client.get_object(Bucket=attachments.bucket, Key=key)["Body"].read()
    s3_client.put_object(Bucket=attachments.bucket, Key=key, Body=bytes(reversed(original)))

    with pytest.raises(TransientError, match="could not be restored and stay offloaded: 3"):
        restore_rows(attachments.dsn, s3_client, attachments.config, run_id="r", row_ids=[3, 4])

    rows = attachments.rows()
    assert rows[3][0] == "s3"
    assert rows[4] == ("db", None, attachments.expected[4])


def test_restore_dry_run_writes_nothing(attachments, s3_client):
    run_offload(attachments.dsn, s3_client, attachments.config, run_id="offload-1")
    before = attachments.rows()

    summary = restore_rows(
        attachments.dsn, s3_client, attachments.config, run_id="r", source_run_id="offload-1", dry_run=True
    )

    assert summary["rows_selected"] == 12
    assert attachments.rows() == before


def test_restore_needs_a_selection(attachments, s3_client):
    with pytest.raises(ConfigurationError, match="row_ids or a source run_id"):
        restore_rows(attachments.dsn, s3_client, attachments.config, run_id="r")


def test_identical_content_restores_independently(attachments, s3_client):
    with psycopg.connect(attachments.dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET bytes = 'same bytes' WHERE id IN (1, 2)").format(attachments.qualified)
        )
    run_offload(attachments.dsn, s3_client, attachments.config)
    key_two = attachments.rows()[2][1]

    restore_rows(attachments.dsn, s3_client, attachments.config, run_id="r", row_ids=[1])

    rows = attachments.rows()
    assert rows[1] == ("db", None, b"same bytes")
    assert rows[2][0] == "s3"
    assert rows[1][1] != key_two
    assert s3_client.get_object(Bucket=attachments.bucket, Key=key_two)["Body"].read() == b"same bytes"
