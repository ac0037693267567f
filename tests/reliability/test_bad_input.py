"""Bad input: odd blobs, names, types, ids, mappings and storage targets, through every stage.

Each case records how the product handled it in the suite's summary.
"""

from __future__ import annotations

import os
import socket
import time
import tracemalloc
import unicodedata
from typing import Any
from urllib.parse import unquote

import psycopg
import pytest
from psycopg import sql

from attachment_ops.config import load_config
from attachment_ops.errors import MappingError, PermanentError, TransientError, VerificationError
from attachment_ops.offload import worker
from attachment_ops.offload.objects import object_key
from attachment_ops.offload.restore import restore_rows
from attachment_ops.reclaim import vacuum_analyze
from attachment_ops.storage import S3Settings, make_s3_client
from attachment_ops.verification import verify
from tests.faults.s3_proxy import AUTHORIZATION_HEADER_MALFORMED_BODY, FaultProxy, Rule
from tests.offload.helpers import run_offload
from tests.reliability.dataset import MIB, PART_BYTES, Content, Dataset, RowSpec, assert_intact
from tests.reliability.summary import RECORD

BIGINT_MIN = -9223372036854775808
BIGINT_MAX = 9223372036854775807


def round_trip(dataset: Dataset, s3_client: Any, row_ids: list[int] | None = None) -> dict[str, Any]:
    """Offload, verify every object by reading it back, restore, and audit after each step."""
    offloaded = run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload")
    assert_intact(dataset, s3_client)
    verified = verify(dataset.dsn, s3_client, dataset.config, scope="all", reread_fraction=1.0)
    restored = restore_rows(
        dataset.dsn, s3_client, dataset.config, run_id="restore", row_ids=row_ids or dataset.offloaded_ids()
    )
    assert_intact(dataset, s3_client)
    return {"offloaded": offloaded, "verified": verified, "restored": restored}


def test_null_empty_and_one_byte_blobs(make_dataset, s3_client):
    rows = [
        RowSpec(1, None),
        RowSpec(2, b""),
        RowSpec(3, b"\x00"),
        RowSpec(4, b"x"),
        RowSpec(5, b"\xff"),
        RowSpec(6, None),
        RowSpec(7, b""),
    ]
    dataset = make_dataset(rows)

    result = round_trip(dataset, s3_client)

    assert result["offloaded"]["rows_offloaded"] == 5
    assert result["offloaded"]["skipped"] == {"null content": 2}
    assert result["verified"].objects_ok == 5
    assert result["restored"]["rows_restored"] == 5
    assert dataset.inline_ids() == [1, 2, 3, 4, 5, 6, 7]
    RECORD.bad_input("NULL blob", "not moved (skipped as null content); stays inline NULL")
    RECORD.bad_input("empty blob", "offloaded as a 0-byte object, verified, restored as empty bytes")
    RECORD.bad_input("one-byte blob", "offloaded, verified and restored byte for byte")


def test_large_blob_in_bounded_memory(make_dataset, s3_client, large_blob_bytes, rng):
    # randbytes takes at most 2**31 bits at a time, so a few hundred MB are drawn in pieces.
    data = b"".join(
        rng.randbytes(min(MIB, large_blob_bytes - offset)) for offset in range(0, large_blob_bytes, MIB)
    )
    dataset = make_dataset([RowSpec(1, data, "big.bin")])
    del data

    tracemalloc.start()
    started = time.monotonic()
    offloaded = run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload")
    offload_seconds = time.monotonic() - started
    _, offload_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    verified = verify(dataset.dsn, s3_client, dataset.config, scope="all")
    restored = restore_rows(dataset.dsn, s3_client, dataset.config, run_id="restore", row_ids=[1])
    _, restore_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    megabytes = large_blob_bytes // 1_000_000
    RECORD.figure(f"{megabytes} MB blob: offload seconds", round(offload_seconds, 2))
    RECORD.figure(f"{megabytes} MB blob: offload peak Python MiB", round(offload_peak / MIB, 1))
    RECORD.figure(f"{megabytes} MB blob: verify and restore peak Python MiB", round(restore_peak / MIB, 1))
    RECORD.bad_input(
        f"{megabytes} MB blob",
        f"multipart in {PART_BYTES // MIB} MiB parts, verified by re-reading, restored; "
        f"peak Python memory {offload_peak / MIB:.0f} MiB offloading, {restore_peak / MIB:.0f} MiB restoring",
    )
    assert offloaded["rows_offloaded"] == 1
    assert verified.verified_by_reread == 1
    assert restored["rows_restored"] == 1
    # Workers hold one part and its hash at a time, never the whole value.
    assert offload_peak < 4 * PART_BYTES
    assert restore_peak < 4 * PART_BYTES
    assert_intact(dataset, s3_client)


def test_identical_content_rows_independent(make_dataset, s3_client):
    same = b"the same attachment " * 500
    dataset = make_dataset([RowSpec(row_id, same) for row_id in (1, 2, 3, 4)] + [RowSpec(5, b"other")])
    run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload")
    keys = dict(dataset.fetch("SELECT id, storage_key FROM {table}"))

    restore_rows(dataset.dsn, s3_client, dataset.config, run_id="restore", row_ids=[1])
    dataset.fetch("DELETE FROM {table} WHERE id = 2 RETURNING id")
    dataset.deleted.add(2)
    cleaned = verify(
        dataset.dsn, s3_client, dataset.config, scope="all", delete_orphans=True, orphan_grace_hours=0
    )

    assert len(set(keys.values())) == 5
    assert cleaned.orphans_deleted == 2
    assert sorted(dataset.offloaded_ids()) == [3, 4, 5]
    audit = assert_intact(dataset, s3_client)
    assert audit.offloaded == 3
    RECORD.bad_input(
        "identical content in 4 rows",
        "one key per row; restoring one and deleting another removed only their own objects",
    )


AWKWARD_NAMES = {
    "unicode": "Überweisung März 日本語.pdf",
    "right-to-left mark": "invoice\u202efdp.exe",
    "emoji": "scan 📎🧾.png",
    "newline": "line one\nline two.txt",
    "slashes": "reports/2025/q1.pdf",
    "dot-dot": "../../etc/passwd",
    "only dots": "..",
    "1000 ASCII characters": "a" * 996 + ".pdf",
    "<script> tag": "<script>alert(1)</script>.html",
}


def disposition_name(header: str) -> str:
    """Return the UTF-8 filename carried in ``filename*`` of a Content-Disposition value."""
    encoded = header.split("filename*=UTF-8''", 1)[1]
    return unquote(encoded)


def test_awkward_filenames(make_dataset, s3_client):
    names = list(AWKWARD_NAMES.values())
    dataset = make_dataset(
        [RowSpec(index + 1, f"body {index}".encode(), name) for index, name in enumerate(names)]
    )

    run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload")
    headers = {}
    for row_id, key in dataset.fetch("SELECT id, storage_key FROM {table} ORDER BY id"):
        headers[row_id] = s3_client.head_object(Bucket=dataset.bucket, Key=key)["ContentDisposition"]
    restore_rows(dataset.dsn, s3_client, dataset.config, run_id="restore", row_ids=dataset.offloaded_ids())

    stored_names = dict(dataset.fetch("SELECT id, filename FROM {table}"))
    assert stored_names == {index + 1: name for index, name in enumerate(names)}
    for row_id, header in headers.items():
        carried = disposition_name(header)
        assert header.isascii(), row_id
        assert header.startswith('attachment; filename="'), row_id
        assert "/" not in carried, row_id
        assert "\\" not in carried, row_id
        assert carried not in ("", ".", ".."), row_id
        assert all(unicodedata.category(ch)[0] != "C" for ch in carried), row_id
    assert disposition_name(headers[1]) == AWKWARD_NAMES["unicode"]
    assert disposition_name(headers[2]) == "invoicefdp.exe"
    assert disposition_name(headers[7]) == "attachment"
    assert_intact(dataset, s3_client)
    RECORD.bad_input(
        f"filenames ({', '.join(AWKWARD_NAMES)})",
        "kept unchanged in the table; sent as an RFC 6266 Content-Disposition with an ASCII fallback, "
        "control and format characters dropped, path cut to its last segment, '..' replaced",
    )


@pytest.fixture
def plain_proxy() -> Any:
    proxy = FaultProxy(upstream=os.environ["S3_ENDPOINT_URL"]).start()
    yield proxy
    proxy.stop()


def proxied(settings: S3Settings, proxy: FaultProxy, **changes: Any) -> Any:
    values = {
        "endpoint_url": proxy.url,
        "region_name": settings.region_name,
        "access_key_id": settings.access_key_id,
        "secret_access_key": settings.secret_access_key,
        **changes,
    }
    return make_s3_client(S3Settings(**values))


# Amazon S3 documents a limit of 8 KB on a PUT request's header section (S3 User Guide,
# "Working with object metadata"); Ceph RGW documents 16,000 bytes.
AWS_PUT_HEADER_LIMIT = 8 * 1024


@pytest.mark.parametrize("name", ["📎" * 1000, "日" * 1000], ids=["emoji", "cjk"])
def test_long_filename_fits_put_headers(name, make_dataset, s3_settings, plain_proxy):
    dataset = make_dataset([RowSpec(1, b"body", name)])

    run_offload(dataset.dsn, proxied(s3_settings, plain_proxy), dataset.config, run_id="offload")

    largest = max(size for method, _, size in plain_proxy.header_sizes if method == "PUT")
    RECORD.maximum("PUT header bytes for a 1000-character filename", largest)
    script = "emoji" if name.startswith("📎") else "CJK"
    RECORD.bad_input(
        f"filename of 1000 {script} characters",
        f"offloaded; the name is cut to 255 UTF-8 bytes, so PUT headers are {largest} bytes, within 8 KB",
    )
    assert largest <= AWS_PUT_HEADER_LIMIT


CONTENT_TYPES = [
    (None, "application/octet-stream"),
    ("", "application/octet-stream"),
    ("not a type", "application/octet-stream"),
    ("text/html\r\nX-Injected: yes", "application/octet-stream"),
    ("application/pdf", "application/pdf"),
    ("text/plain; charset=utf-8", "text/plain; charset=utf-8"),
    ("a/" + "b" * 1000, "a/" + "b" * 1000),
]


def test_content_types(make_dataset, s3_client):
    dataset = make_dataset(
        [RowSpec(index + 1, b"data", "f.bin", given) for index, (given, _) in enumerate(CONTENT_TYPES)]
    )

    round_trip(dataset, s3_client)
    run_offload(dataset.dsn, s3_client, dataset.config, run_id="again")

    stored = {}
    for row_id, key in dataset.fetch("SELECT id, storage_key FROM {table} ORDER BY id"):
        stored[row_id] = s3_client.head_object(Bucket=dataset.bucket, Key=key)["ContentType"]
    assert stored == {index + 1: expected for index, (_, expected) in enumerate(CONTENT_TYPES)}
    RECORD.bad_input("content type: missing or empty", "object gets application/octet-stream")
    RECORD.bad_input("content type: invalid or with CR LF", "object gets application/octet-stream")
    RECORD.bad_input("content type: 1000 characters", "kept as given")


def test_content_type_with_carriage_return(make_dataset, s3_client):
    dataset = make_dataset([RowSpec(1, b"data", "f.txt", "text/plain; name=a\rb")])

    try:
        summary = run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload")
    except TransientError:
        RECORD.bad_input(
            "content type with a lone carriage return",
            "known fault: every upload attempt fails (HTTPClientError, transient), so the row is never offloaded",
        )
        raise

    assert summary["rows_offloaded"] == 1


def test_bigint_edge_ids(make_dataset, s3_client):
    ids = [BIGINT_MIN, BIGINT_MIN + 1, -1, 0, 1, BIGINT_MAX - 1, BIGINT_MAX]
    dataset = make_dataset([RowSpec(row_id, f"row {row_id}".encode()) for row_id in ids])

    result = round_trip(dataset, s3_client)

    keys = {key for (key,) in dataset.fetch("SELECT object_key FROM {ledger} WHERE outcome = 'offloaded'")}
    assert result["offloaded"]["rows_offloaded"] == len(ids)
    assert result["offloaded"]["batches"] == 2
    assert (
        object_key(dataset.config.prefix, BIGINT_MIN, Content.of(f"row {BIGINT_MIN}".encode()).sha256) in keys
    )
    assert result["restored"]["rows_restored"] == len(ids)
    RECORD.bad_input(
        "ids at both ends of bigint", "offloaded, verified and restored; keys carry the signed id"
    )


def test_negative_id_orphans_cleaned(make_dataset, s3_client):
    dataset = make_dataset(
        [RowSpec(BIGINT_MIN, b"lowest"), RowSpec(-7, b"negative"), RowSpec(7, b"positive")]
    )
    run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload")
    restore_rows(dataset.dsn, s3_client, dataset.config, run_id="restore", row_ids=[BIGINT_MIN, -7, 7])

    cleaned = verify(
        dataset.dsn, s3_client, dataset.config, scope="all", delete_orphans=True, orphan_grace_hours=0
    )

    assert cleaned.orphan_count == 3
    assert cleaned.orphans_deleted == 3
    assert sorted(orphan["row_id"] for orphan in cleaned.orphans) == [BIGINT_MIN, -7, 7]
    RECORD.bad_input("orphans of negative ids", "recognised as the offload's keys and deleted when asked")


def test_orphan_cleanup_spares_inflight_offload(make_dataset, s3_client, monkeypatch):
    """Deleting orphans while an offload is between its upload and its flip must keep that object."""
    dataset = make_dataset([RowSpec(1, b"first version"), RowSpec(2, b"other row")])
    run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload", limit=1)
    restore_rows(dataset.dsn, s3_client, dataset.config, run_id="restore", row_ids=[1])
    real_verify_object = worker.verify_object
    cleanups = []

    def verify_then_clean(*args: Any, **kwargs: Any) -> str:
        outcome = real_verify_object(*args, **kwargs)
        cleanups.append(
            verify(
                dataset.dsn, s3_client, dataset.config, scope="all", delete_orphans=True, orphan_grace_hours=0
            )
        )
        return outcome

    monkeypatch.setattr(worker, "verify_object", verify_then_clean)
    run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload-again", limit=1)

    assert len(cleanups) == 1
    assert cleanups[0].orphans_deleted == 0
    assert dataset.offloaded_ids() == [1]
    assert_intact(dataset, s3_client)
    RECORD.bad_input(
        "orphan cleanup during an offload",
        "objects of rows an offload or restore is working on are kept (row lock)",
    )


def make_variant(dataset: Dataset, statement: str) -> None:
    with psycopg.connect(dataset.dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(statement).format(table=dataset.identifier, schema=sql.Identifier(dataset.schema))
        )


MAPPINGS = {
    "missing table": (None, {"table": "{schema}.no_such_table"}, "was not found"),
    "missing column": (None, {"content_column": "no_such_column"}, "Column 'no_such_column'"),
    "view": (
        "CREATE VIEW {schema}.attachments_view AS SELECT * FROM {table}",
        {"table": "{schema}.attachments_view"},
        "is a view, not a table",
    ),
    "table without primary key": (
        "CREATE TABLE {schema}.no_key (id bigint, bytes bytea, storage_backend text, storage_key text,"
        " filename text, content_type text, created_at timestamptz)",
        {"table": "{schema}.no_key"},
        "no primary key or unique index",
    ),
    "key column not unique": (
        "CREATE TABLE {schema}.dup_key (id bigint, bytes bytea, storage_backend text, storage_key text,"
        " filename text, content_type text, created_at timestamptz); CREATE INDEX ON {schema}.dup_key (id)",
        {"table": "{schema}.dup_key"},
        "no primary key or unique index",
    ),
    "content column NOT NULL": (
        "CREATE TABLE {schema}.not_null (id bigint PRIMARY KEY, bytes bytea NOT NULL, storage_backend text,"
        " storage_key text, filename text, content_type text, created_at timestamptz)",
        {"table": "{schema}.not_null"},
        "DROP NOT NULL",
    ),
    "content column of wrong type": (None, {"content_column": "filename"}, "expected bytea"),
}


@pytest.mark.parametrize("case", list(MAPPINGS))
def test_bad_mapping_rejected(case, make_dataset, s3_client):
    statement, mapping, message = MAPPINGS[case]
    dataset = make_dataset([RowSpec(1, b"keep me"), RowSpec(2, b"and me")])
    if statement:
        for part in statement.split("; "):
            make_variant(dataset, part)
    overrides = {key: value.format(schema=dataset.schema) for key, value in mapping.items()}
    config = load_config(
        {**dataset.config.data, "attachments": {**dataset.config.data["attachments"], **overrides}}
    )

    stages = {
        "offload": lambda: run_offload(dataset.dsn, s3_client, config),
        "verify": lambda: verify(dataset.dsn, s3_client, config, scope="all"),
        "restore": lambda: restore_rows(dataset.dsn, s3_client, config, run_id="r", row_ids=[1]),
        "vacuum": lambda: vacuum_analyze(dataset.dsn, config),
    }
    for stage, call in stages.items():
        with pytest.raises(MappingError, match=message):
            call()
        assert dataset.inline_ids() == [1, 2], stage
    assert_intact(dataset, s3_client)
    RECORD.bad_input(
        f"mapping: {case}", f"MappingError before any work in offload, verify, restore, VACUUM: '{message}'"
    )


def closed_port() -> int:
    """Return a 127.0.0.1 port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_wrong_bucket_fails_fast(make_dataset, s3_client):
    dataset = make_dataset([RowSpec(1, b"data")])
    missing = f"{dataset.bucket}-missing"
    config = load_config(
        {**dataset.config.data, "storage": {**dataset.config.data["storage"], "bucket": missing}}
    )

    started = time.monotonic()
    with pytest.raises(PermanentError, match=rf"bucket '{missing}' does not exist.*storage.bucket"):
        run_offload(dataset.dsn, s3_client, config)
    elapsed = time.monotonic() - started

    assert elapsed < 5
    assert missing not in [bucket["Name"] for bucket in s3_client.list_buckets()["Buckets"]]
    assert_intact(dataset, s3_client)
    RECORD.bad_input(
        "wrong bucket", f"PermanentError naming the bucket after {elapsed:.1f} s; nothing written"
    )


def test_wrong_region_on_this_server(make_dataset, s3_settings, plain_proxy, s3_client):
    dataset = make_dataset([RowSpec(1, b"data"), RowSpec(2, b"more")])

    summary = run_offload(
        dataset.dsn,
        proxied(s3_settings, plain_proxy, region_name="eu-west-3"),
        dataset.config,
        run_id="offload",
    )

    assert summary["rows_offloaded"] == 2
    assert_intact(dataset, s3_client)
    RECORD.bad_input(
        "wrong region (SeaweedFS)", "accepted: this server ignores the signing region; objects verified"
    )


def test_wrong_region_as_aws_answers(make_dataset, s3_settings, plain_proxy, s3_client):
    dataset = make_dataset([RowSpec(1, b"data")])
    plain_proxy.rules = [Rule("status", times=-1, status=400, body=AUTHORIZATION_HEADER_MALFORMED_BODY)]

    with pytest.raises(PermanentError, match=r"check bucket .* failed with 400 \(HTTP 400\)") as raised:
        run_offload(dataset.dsn, proxied(s3_settings, plain_proxy, region_name="eu-west-3"), dataset.config)

    # The bucket check is a HEAD request, whose error response has no body to carry the code.
    assert plain_proxy.rules[0].fired == 1
    assert_intact(dataset, s3_client)
    message = str(raised.value).replace(dataset.bucket, "<bucket>")
    RECORD.bad_input("wrong region (answered as AWS does)", f"PermanentError at the first request: {message}")


def test_closed_endpoint_fails_fast(make_dataset, s3_settings, s3_client):
    dataset = make_dataset([RowSpec(1, b"data")])
    port = closed_port()
    client = make_s3_client(
        S3Settings(
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name=s3_settings.region_name,
            access_key_id=s3_settings.access_key_id,
            secret_access_key=s3_settings.secret_access_key,
        ),
        dataset.config.section("storage"),
    )

    started = time.monotonic()
    with pytest.raises(TransientError, match=r"could not connect to the endpoint.*Check endpoint_url"):
        run_offload(dataset.dsn, client, dataset.config)
    elapsed = time.monotonic() - started

    assert elapsed < 10
    assert_intact(dataset, s3_client)
    RECORD.bad_input(
        "endpoint on a closed port",
        f"TransientError 'could not connect to the endpoint' after {dataset.config.section('storage')['max_attempts']} "
        f"attempts ({elapsed:.1f} s); nothing written",
    )


def test_application_emptied_file_passes_verification(make_dataset, s3_client):
    dataset = make_dataset([RowSpec(1, b"original content"), RowSpec(2, b"other")])
    run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload")
    dataset.fetch(
        "UPDATE {table} SET bytes = '', storage_backend = 'db', storage_key = NULL WHERE id = 1 RETURNING id"
    )
    dataset.expected[1] = Content.of(b"")

    try:
        result = verify(dataset.dsn, s3_client, dataset.config, scope="all")
    except VerificationError:
        RECORD.bad_input(
            "offloaded file replaced with an empty one by the application",
            "known fault: verification fails with inline_lost_bytes",
        )
        raise

    assert result.ok
    assert_intact(dataset, s3_client)
