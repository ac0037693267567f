"""Offload invariants against the real Postgres and the real S3 server."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from attachment_ops.config import load_config
from attachment_ops.errors import PermanentError
from attachment_ops.offload import worker
from attachment_ops.offload.objects import content_disposition, object_key
from attachment_ops.storage import S3Settings, make_s3_client
from tests.faults.s3_proxy import INTERNAL_ERROR_BODY, FaultProxy, Rule
from tests.offload.conftest import BASE_TIME, insert_rows, make_table, object_bytes, sha256
from tests.offload.helpers import run_offload

ROOT = Path(__file__).resolve().parents[2]


def bucket_listing(s3_client, bucket: str) -> dict[str, str]:
    listing = s3_client.list_objects_v2(Bucket=bucket)
    return {item["Key"]: item["ETag"] for item in listing.get("Contents", [])}


def test_happy_path_moves_every_byte(attachments, s3_client):
    summary = run_offload(attachments.dsn, s3_client, attachments.config, batch_rows=5)

    rows = attachments.rows()
    assert summary["rows_offloaded"] == 12
    assert summary["bytes_offloaded"] == sum(len(data) for data in attachments.expected.values())
    assert summary["inline_rows"] == 0
    for row_id, original in attachments.expected.items():
        backend, key, inline = rows[row_id]
        assert backend == "s3"
        assert inline is None
        assert key == object_key("attachments/", row_id, sha256(original))
        assert sha256(object_bytes(s3_client, attachments.bucket, key)) == sha256(original)


def test_ledger_records_each_flip(attachments, s3_client):
    run_offload(attachments.dsn, s3_client, attachments.config)

    offloaded = [entry for entry in attachments.ledger() if entry[1] == "offloaded"]
    assert sorted(entry[0] for entry in offloaded) == list(range(1, 13))
    for row_id, _outcome, key, size, digest in offloaded:
        assert key == object_key("attachments/", row_id, digest)
        assert size == len(attachments.expected[row_id])
        assert digest == sha256(attachments.expected[row_id])


def test_rerun_is_a_no_op(attachments, s3_client):
    run_offload(attachments.dsn, s3_client, attachments.config, run_id="first")
    before_rows = attachments.rows()
    before_objects = bucket_listing(s3_client, attachments.bucket)

    summary = run_offload(attachments.dsn, s3_client, attachments.config, run_id="second")

    assert summary["planned_rows"] == 0
    assert summary["rows_offloaded"] == 0
    assert attachments.rows() == before_rows
    assert bucket_listing(s3_client, attachments.bucket) == before_objects


def test_dry_run_changes_nothing(attachments, s3_client):
    before_rows = attachments.rows()

    summary = run_offload(attachments.dsn, s3_client, attachments.config, dry_run=True, limit=7)

    assert attachments.rows() == before_rows
    assert bucket_listing(s3_client, attachments.bucket) == {}
    with psycopg.connect(attachments.dsn) as conn:
        ledger_exists = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{attachments.schema}_ledger.ledger",)
        ).fetchone()[0]
    assert ledger_exists is False
    assert summary["would_move_rows"] == 7


def test_dry_run_predicts_real_run(attachments, s3_client):
    predicted = run_offload(attachments.dsn, s3_client, attachments.config, dry_run=True, limit=7)

    moved = run_offload(attachments.dsn, s3_client, attachments.config, limit=7)

    assert predicted["would_move_rows"] == moved["rows_offloaded"]
    assert predicted["would_move_bytes"] == moved["bytes_offloaded"]


def test_null_and_empty_blobs(pg_dsn, pg_schema, bucket, s3_client):
    make_table(pg_dsn, pg_schema)
    insert_rows(
        pg_dsn,
        pg_schema,
        [
            (1, "empty.txt", "text/plain", b"", BASE_TIME),
            (2, "missing.txt", "text/plain", None, BASE_TIME),
            (3, "one.bin", None, b"x", BASE_TIME),
        ],
    )
    config = load_config(
        {
            "attachments": {"table": f"{pg_schema}.document_attachments"},
            "storage": {"bucket": bucket},
            "offload": {"ledger_schema": f"{pg_schema}_ledger"},
        }
    )

    summary = run_offload(pg_dsn, s3_client, config)

    with psycopg.connect(pg_dsn) as conn:
        rows = dict(
            (row[0], row[1:])
            for row in conn.execute(
                sql.SQL("SELECT id, storage_backend, bytes FROM {} ORDER BY id").format(
                    sql.Identifier(pg_schema, "document_attachments")
                )
            ).fetchall()
        )
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(f"{pg_schema}_ledger")))
        conn.commit()
    assert summary["rows_offloaded"] == 2
    assert summary["skipped"] == {"null content": 1}
    assert rows[2] == ("db", None)
    assert rows[1] == ("s3", None)
    empty_key = object_key("attachments/", 1, sha256(b""))
    assert object_bytes(s3_client, bucket, empty_key) == b""
    head = s3_client.head_object(Bucket=bucket, Key=object_key("attachments/", 3, sha256(b"x")))
    assert head["ContentType"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"),
        (
            "Überweisung März.pdf",
            "attachment; filename=\"Uberweisung Marz.pdf\"; filename*=UTF-8''%C3%9Cberweisung%20M%C3%A4rz.pdf",
        ),
        ("a/b/../c.txt", "attachment; filename=\"c.txt\"; filename*=UTF-8''c.txt"),
        ("line\nbreak.txt", "attachment; filename=\"linebreak.txt\"; filename*=UTF-8''linebreak.txt"),
        ("..", "attachment; filename=\"attachment\"; filename*=UTF-8''attachment"),
        ("\u202egnp.exe", "attachment; filename=\"gnp.exe\"; filename*=UTF-8''gnp.exe"),
        ('quote"semi;.txt', "attachment; filename=\"quote_semi_.txt\"; filename*=UTF-8''quote%22semi%3B.txt"),
    ],
)
def test_content_disposition_cases(filename, expected):
    assert content_disposition(filename) == expected


def test_awkward_filenames_reach_the_object(pg_dsn, pg_schema, bucket, s3_client):
    names = ["日本語 ファイル.pdf", "emoji 📎.png", "x" * 1000, "new\nline.csv", "../../etc/passwd"]
    make_table(pg_dsn, pg_schema)
    insert_rows(
        pg_dsn,
        pg_schema,
        [(i + 1, name, "application/pdf", f"body {i}".encode(), BASE_TIME) for i, name in enumerate(names)],
    )
    config = load_config(
        {
            "attachments": {"table": f"{pg_schema}.document_attachments"},
            "storage": {"bucket": bucket},
            "offload": {"ledger_schema": f"{pg_schema}_ledger"},
        }
    )

    summary = run_offload(pg_dsn, s3_client, config)

    assert summary["rows_offloaded"] == 5
    for index, name in enumerate(names):
        key = object_key("attachments/", index + 1, sha256(f"body {index}".encode()))
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ContentDisposition"] == content_disposition(name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(f"{pg_schema}_ledger")))


def _change_row_during_verify(monkeypatch, attachments, row_id: int, statement: str) -> None:
    """Run ``statement`` on ``row_id`` from another session right after the upload, before the flip."""
    real_verify = worker.verify_object

    def verify_then_change(*args, **kwargs):
        result = real_verify(*args, **kwargs)
        if args[2].startswith(f"attachments/{row_id}/"):
            with psycopg.connect(attachments.dsn, autocommit=True) as other:
                other.execute(
                    sql.SQL(statement).format(sql.Identifier(attachments.schema, attachments.table)),
                    (row_id,),
                )
        return result

    monkeypatch.setattr(worker, "verify_object", verify_then_change)


def test_row_updated_before_flip_stays(attachments, s3_client, monkeypatch):
    _change_row_during_verify(
        monkeypatch, attachments, 3, "UPDATE {} SET bytes = 'new content' WHERE id = %s"
    )

    summary = run_offload(attachments.dsn, s3_client, attachments.config, batch_rows=20)

    backend, key, inline = attachments.rows()[3]
    assert summary["changed_ids"] == [3]
    assert summary["rows_offloaded"] == 11
    assert (backend, key, inline) == ("db", None, b"new content")
    stale_key = object_key("attachments/", 3, sha256(attachments.expected[3]))
    assert stale_key not in bucket_listing(s3_client, attachments.bucket)


def test_row_deleted_before_flip_stays_deleted(attachments, s3_client, monkeypatch):
    _change_row_during_verify(monkeypatch, attachments, 4, "DELETE FROM {} WHERE id = %s")

    summary = run_offload(attachments.dsn, s3_client, attachments.config, batch_rows=20)

    assert summary["changed_ids"] == [4]
    assert 4 not in attachments.rows()
    assert summary["rows_offloaded"] == 11


def _offload_in_process(dsn, settings, config_data, run_id, queue):
    from attachment_ops.config import MaintenanceConfig

    client = make_s3_client(settings)
    queue.put(run_offload(dsn, client, MaintenanceConfig(config_data), run_id=run_id, batch_rows=2))


def test_parallel_runs_never_share_rows(attachments, s3_settings, s3_client):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(
            target=_offload_in_process,
            args=(attachments.dsn, s3_settings, attachments.config.data, f"p{n}", queue),
        )
        for n in range(3)
    ]
    for process in processes:
        process.start()
    summaries = [queue.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)

    offloaded = [entry for entry in attachments.ledger() if entry[1] == "offloaded"]
    assert sorted(entry[0] for entry in offloaded) == list(range(1, 13))
    assert sum(summary["rows_offloaded"] for summary in summaries) == 12
    for row_id, (backend, key, _) in attachments.rows().items():
        assert backend == "s3"
        assert sha256(object_bytes(s3_client, attachments.bucket, key)) == sha256(
            attachments.expected[row_id]
        )


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path[:0] = [{include!r}, {root!r}]
    from attachment_ops.config import MaintenanceConfig
    from attachment_ops.offload import worker
    from attachment_ops.storage import S3Settings, make_s3_client
    from tests.offload.helpers import run_offload
    import json

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(worker, {point!r}, die)
    settings = S3Settings(**json.loads({settings!r}))
    config = MaintenanceConfig(json.loads({config!r}))
    run_offload({dsn!r}, make_s3_client(settings), config, run_id="killed", batch_rows=4)
    """
)


@pytest.mark.parametrize("point", ["_flip", "verify_object"])
def test_kill_before_flip_then_rerun(attachments, s3_settings, s3_client, point):
    import json
    from dataclasses import asdict

    script = KILL_SCRIPT.format(
        include=str(ROOT / "include"),
        root=str(ROOT),
        point=point,
        settings=json.dumps(asdict(s3_settings)),
        config=json.dumps(attachments.config.data),
        dsn=attachments.dsn,
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL

    after_kill = attachments.rows()
    assert all(after_kill[row_id] == ("db", None, data) for row_id, data in attachments.expected.items())

    summary = run_offload(attachments.dsn, s3_client, attachments.config, run_id="rerun")

    assert summary["rows_offloaded"] == 12
    for row_id, (backend, key, inline) in attachments.rows().items():
        assert (backend, inline) == ("s3", None)
        assert sha256(object_bytes(s3_client, attachments.bucket, key)) == sha256(
            attachments.expected[row_id]
        )


@pytest.fixture
def fault_proxy():
    proxy = FaultProxy(upstream=os.environ["S3_ENDPOINT_URL"]).start()
    yield proxy
    proxy.stop()


def test_transient_s3_errors_are_retried(attachments, s3_settings, s3_client, fault_proxy):
    fault_proxy.rules = [
        Rule(action="status", method="PUT", times=2, status=503),
        Rule(action="status", method="PUT", times=1, status=503, body=b""),
        Rule(action="status", method="HEAD", times=1, status=500, body=INTERNAL_ERROR_BODY),
        Rule(action="reset", method="PUT", times=1),
    ]
    proxied = make_s3_client(
        S3Settings(
            endpoint_url=fault_proxy.url,
            region_name="us-east-1",
            access_key_id=s3_settings.access_key_id,
            secret_access_key=s3_settings.secret_access_key,
        )
    )

    summary = run_offload(attachments.dsn, proxied, attachments.config)

    assert [rule.fired for rule in fault_proxy.rules] == [2, 1, 1, 1]
    assert summary["rows_offloaded"] == 12
    assert summary["failed_rows"] == 0
    for row_id, (_, key, _) in attachments.rows().items():
        assert sha256(object_bytes(s3_client, attachments.bucket, key)) == sha256(
            attachments.expected[row_id]
        )


def test_wrong_credentials_fail_fast(attachments, s3_settings):
    client = make_s3_client(
        S3Settings(
            endpoint_url=s3_settings.endpoint_url,
            region_name="us-east-1",
            access_key_id="wrong-key",
            secret_access_key="wrong-secret",
        )
    )

    with pytest.raises(
        PermanentError, match=r"InvalidAccessKeyId|SignatureDoesNotMatch|denied.*credentials"
    ) as raised:
        run_offload(attachments.dsn, client, attachments.config)

    assert attachments.bucket in str(raised.value)
    assert all(row[0] == "db" for row in attachments.rows().values())


def test_missing_bucket_fails_fast(attachments, s3_client):
    config = load_config(
        {
            **attachments.config.data,
            "storage": {**attachments.config.data["storage"], "bucket": "no-such-bucket-x1"},
        }
    )

    with pytest.raises(PermanentError, match="NoSuchBucket.*bucket does not exist"):
        run_offload(attachments.dsn, s3_client, config)

    assert all(row[0] == "db" for row in attachments.rows().values())


def test_backfill_windows_cover_their_rows(attachments, s3_client):
    moved: list[int] = []
    for day in (2, 3, 5):
        start = BASE_TIME + timedelta(days=day)
        run_offload(
            attachments.dsn,
            s3_client,
            attachments.config,
            run_id=f"backfill-{day}",
            created_from=start.isoformat(),
            created_to=(start + timedelta(days=1)).isoformat(),
        )
        moved = sorted(row_id for row_id, row in attachments.rows().items() if row[0] == "s3")

    # Row n was created on BASE_TIME + (n - 1) days.
    assert moved == [3, 4, 6]


def test_limit_leaves_rest_for_next_run(attachments, s3_client):
    summary = run_offload(attachments.dsn, s3_client, attachments.config, limit=5, batch_rows=2)

    assert summary["rows_offloaded"] == 5
    assert summary["batches"] == 3
    assert summary["left_for_next_run_rows"] == 7
    assert summary["inline_rows"] == 7


def test_max_batches_caps_the_plan(attachments, s3_client):
    summary = run_offload(attachments.dsn, s3_client, attachments.config, batch_rows=1, max_batches=4)

    assert summary["batches"] == 4
    assert summary["rows_offloaded"] == 4
    assert summary["left_for_next_run_rows"] == 8


def test_large_blob_goes_multipart(pg_dsn, pg_schema, bucket, s3_client):
    data = os.urandom(13 * 1024 * 1024 + 123)
    make_table(pg_dsn, pg_schema)
    insert_rows(pg_dsn, pg_schema, [(1, "big.bin", "application/octet-stream", data, BASE_TIME)])
    config = load_config(
        {
            "attachments": {"table": f"{pg_schema}.document_attachments"},
            "storage": {
                "bucket": bucket,
                "multipart_threshold_bytes": 5 * 1024 * 1024,
                "part_size_bytes": 5 * 1024 * 1024,
            },
            "offload": {"ledger_schema": f"{pg_schema}_ledger"},
        }
    )

    summary = run_offload(pg_dsn, s3_client, config)

    key = object_key("attachments/", 1, hashlib.sha256(data).hexdigest())
    head = s3_client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert summary["rows_offloaded"] == 1
    assert head["ChecksumSHA256"].endswith("-3")
    assert object_bytes(s3_client, bucket, key) == data
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(f"{pg_schema}_ledger")))


def test_head_checksum_confirms_by_default(attachments, s3_client):
    summary = run_offload(attachments.dsn, s3_client, attachments.config)

    assert summary["verified_by"] == {"checksum": 12}


def test_trusted_upload_checksum_skips_head(attachments, s3_client):
    storage = {**attachments.config.data["storage"], "trust_upload_checksum": True}
    config = load_config({**attachments.config.data, "storage": storage})

    summary = run_offload(attachments.dsn, s3_client, config)

    assert summary["verified_by"] == {"upload_checksum": 12}


def test_read_back_verification_when_configured(attachments, s3_client):
    config = load_config(
        {
            **attachments.config.data,
            "storage": {**attachments.config.data["storage"], "verify_read_back": True},
        }
    )

    summary = run_offload(attachments.dsn, s3_client, config)

    assert summary["verified_by"] == {"read_back": 12}


@pytest.mark.parametrize(
    ("upload_checksum", "expected"),
    [(None, "checksum"), ("d3Jvbmc=", "checksum"), ("same", "upload_checksum")],
)
def test_verify_object_paths(bucket, s3_client, upload_checksum, expected):
    from attachment_ops.offload.objects import verify_object
    from attachment_ops.storage import RetryPolicy, sha256_base64

    data = b"payload"
    checksum = sha256_base64(sha256(data))
    s3_client.put_object(Bucket=bucket, Key="k", Body=data, ChecksumSHA256=checksum)

    how = verify_object(
        s3_client,
        bucket,
        "k",
        size=len(data),
        sha256_hex=sha256(data),
        expected_checksum=checksum,
        policy=RetryPolicy(max_attempts=1),
        upload_checksum=checksum if upload_checksum == "same" else upload_checksum,
    )

    assert how == expected
