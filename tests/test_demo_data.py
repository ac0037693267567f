"""Tests of the demo data generator: distribution, file formats, reproducibility, the database.

The file checks parse each format independently of the generator: PDF cross-reference offsets,
JPEG segment lengths, PNG chunk CRCs and the zlib stream of the image data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import statistics
import struct
import subprocess
import sys
import zlib
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from attachment_ops import demo_data
from attachment_ops.config import GIB, MIB
from attachment_ops.demo_data import CREATED_END, CREATED_SPAN, PlannedRow
from attachment_ops.errors import ConfigurationError, PermanentError

ROOT = Path(__file__).resolve().parent.parent

# --- Independent format checks ----------------------------------------------------------------


def check_pdf(data: bytes) -> None:
    assert data.startswith(b"%PDF-")
    assert data.rstrip(b"\r\n").endswith(b"%%EOF")
    match = re.search(rb"startxref\s+(\d+)\s+%%EOF\s*$", data[-64:])
    assert match is not None
    xref_offset = int(match.group(1))
    assert data[xref_offset : xref_offset + 5] == b"xref\n"
    header = re.match(rb"xref\n0 (\d+)\n", data[xref_offset:])
    assert header is not None
    count = int(header.group(1))
    entries_start = xref_offset + header.end()
    for number in range(1, count):
        entry = data[entries_start + 20 * number : entries_start + 20 * (number + 1)]
        assert entry.endswith(b" 00000 n \n")
        offset = int(entry[:10])
        assert data[offset:].startswith(b"%d 0 obj" % number)
    assert b"/Root 1 0 R" in data[entries_start + 20 * count :]


def check_jpeg(data: bytes) -> None:
    assert data[:2] == b"\xff\xd8"
    assert data[-2:] == b"\xff\xd9"
    position = 2
    seen = []
    while True:
        assert data[position] == 0xFF
        marker = data[position + 1]
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        assert length >= 2
        seen.append(marker)
        position += 2 + length
        if marker == 0xDA:  # start of scan, followed by entropy-coded data up to EOI
            break
        assert position < len(data)
    assert seen[0] == 0xE0
    assert 0xC0 in seen
    assert 0xDB in seen
    assert b"\xff" not in data[position:-2].replace(b"\xff\x00", b"")


def check_png(data: bytes) -> None:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position = 8
    kinds = []
    image_data = bytearray()
    header = b""
    while position < len(data):
        length = struct.unpack(">I", data[position : position + 4])[0]
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        crc = struct.unpack(">I", data[position + 8 + length : position + 12 + length])[0]
        assert crc == zlib.crc32(kind + body)
        kinds.append(kind)
        if kind == b"IHDR":
            header = body
        if kind == b"IDAT":
            image_data += body
        position += 12 + length
    assert position == len(data)
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    width, height, depth, color_type = struct.unpack(">IIBB", header[:10])
    assert (depth, color_type) == (8, 2)
    pixels = zlib.decompress(bytes(image_data))
    row_bytes = 1 + 3 * width
    assert len(pixels) == height * row_bytes
    assert max(pixels[0::row_bytes]) <= 4


def check_csv(data: bytes) -> None:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    assert rows[0] == ["line", "company", "issued_on", "amount", "currency", "description"]
    assert {len(row) for row in rows} == {6}


def check_text(data: bytes) -> None:
    text = data.decode("utf-8")
    assert text.endswith("\n")


CHECKS = {
    "application/pdf": check_pdf,
    "image/jpeg": check_jpeg,
    "image/png": check_png,
    "text/csv": check_csv,
    "text/plain": check_text,
}


def planned(content_type: str, size: int, row_id: int = 7) -> PlannedRow:
    return PlannedRow(row_id, 1, "x", content_type, "inline", size, CREATED_END)


# --- The plan: sizes, kinds, names, dates ------------------------------------------------------


@pytest.fixture(scope="module")
def production_plan() -> list[PlannedRow]:
    return demo_data.plan_rows("production", 1)


def test_production_row_count(production_plan):
    assert len(production_plan) == 3748


def test_production_total_size(production_plan):
    total = sum(row.size or 0 for row in production_plan)
    assert abs(total - 9.36 * GIB) <= 0.01 * 9.36 * GIB


def test_production_median_below_mean(production_plan):
    sizes = [row.size for row in production_plan if row.size]
    assert statistics.median(sizes) < 0.75 * statistics.mean(sizes)


def test_production_largest_tens_of_mb(production_plan):
    largest = max(row.size or 0 for row in production_plan)
    assert 20 * MIB <= largest <= 64 * MIB


def test_production_mean_about_2_5_mb(production_plan):
    sizes = [row.size or 0 for row in production_plan]
    assert 2.4e6 <= statistics.mean(sizes) <= 2.8e6


@pytest.mark.parametrize(
    ("kind", "count"),
    [("empty", 15), ("null", 15), ("offloaded", 75), ("inline", 3643)],
)
def test_production_special_row_counts(production_plan, kind, count):
    assert sum(1 for row in production_plan if row.kind == kind) == count


def test_empty_rows_have_zero_size(production_plan):
    assert {row.size for row in production_plan if row.kind == "empty"} == {0}


def test_null_rows_have_no_size(production_plan):
    assert {row.size for row in production_plan if row.kind == "null"} == {None}


def test_offloaded_rows_fit_one_put(production_plan):
    sizes = [row.size or 0 for row in production_plan if row.kind == "offloaded"]
    assert max(sizes) <= 16 * MIB


def test_demo_scale_row_count():
    assert 150 <= len(demo_data.plan_rows("demo", 1)) <= 250


def test_demo_scale_total_size():
    total = sum(row.size or 0 for row in demo_data.plan_rows("demo", 1))
    assert 150e6 <= total <= 300e6


def test_created_at_within_two_years(production_plan):
    stamps = [row.created_at for row in production_plan]
    assert CREATED_END - CREATED_SPAN <= min(stamps)
    assert max(stamps) < CREATED_END


@pytest.mark.parametrize("days_back", range(1, 15))
def test_recent_days_each_have_rows(days_back):
    plan = demo_data.plan_rows("demo", 1)
    day_start = CREATED_END - timedelta(days=days_back)
    assert any(day_start <= row.created_at < day_start + timedelta(days=1) for row in plan)


def test_ids_increase_with_created_at(production_plan):
    ids = [row.id for row in production_plan]
    assert ids == sorted(set(ids))
    stamps = [row.created_at for row in production_plan]
    assert stamps == sorted(stamps)


def test_ids_have_gaps(production_plan):
    assert production_plan[-1].id > len(production_plan)


@pytest.mark.parametrize(
    ("trait", "predicate"),
    [
        ("non-ASCII letters", lambda name: any(ord(char) > 127 for char in name)),
        ("spaces", lambda name: " " in name),
        ("slashes", lambda name: "/" in name),
        ("backslashes", lambda name: "\\" in name),
        ("right-to-left mark", lambda name: "\u200f" in name),
        ("right-to-left override", lambda name: "\u202e" in name),
        ("emoji", lambda name: any(0x1F300 <= ord(char) <= 0x1FAFF for char in name)),
        ("hundreds of characters", lambda name: len(name) >= 300),
        ("over 255 UTF-8 bytes", lambda name: len(name.encode("utf-8")) > 255),
        ("double quote", lambda name: '"' in name),
    ],
)
def test_demo_filenames_include_trait(trait, predicate):
    names = [row.filename for row in demo_data.plan_rows("demo", 1)]
    assert any(predicate(name) for name in names), trait


@pytest.mark.parametrize("content_type", [content_type for content_type, _, _ in demo_data.CONTENT_TYPES])
def test_demo_plan_uses_content_type(content_type):
    assert any(row.content_type == content_type for row in demo_data.plan_rows("demo", 1))


def test_plan_same_seed_equal():
    assert demo_data.plan_rows("demo", 5) == demo_data.plan_rows("demo", 5)


def test_plan_other_seed_differs():
    first = [row.size for row in demo_data.plan_rows("demo", 5)]
    second = [row.size for row in demo_data.plan_rows("demo", 6)]
    assert first != second


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"scale": "huge"}, "Unknown scale 'huge'"),
        ({"rows": 0}, "rows must be at least 1"),
        ({"size_factor": 0.0001}, "size_factor 0.0001"),
    ],
)
def test_plan_rejects_bad_arguments(arguments, message):
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        demo_data.plan_rows(**{"scale": "demo", **arguments})


# --- Files: valid structure at every size ------------------------------------------------------

FORMAT_SIZES = [2048, 2 * 65537 + 2, 2 * 65537 + 3, 1 * MIB + 5, 3 * MIB + 17]


@pytest.mark.parametrize("size", FORMAT_SIZES)
@pytest.mark.parametrize("content_type", sorted(CHECKS))
def test_file_has_exact_size(content_type, size):
    assert len(demo_data.content_bytes(planned(content_type, size), 1)) == size


@pytest.mark.parametrize("size", FORMAT_SIZES)
@pytest.mark.parametrize("content_type", sorted(CHECKS))
def test_file_structure_is_valid(content_type, size):
    CHECKS[content_type](demo_data.content_bytes(planned(content_type, size), 1))


@pytest.mark.parametrize("content_type", sorted(CHECKS))
def test_file_pieces_stay_small(content_type):
    pieces = list(demo_data.iter_content(planned(content_type, 5 * MIB), 1))
    assert max(len(piece) for piece in pieces) <= demo_data.CHUNK_BYTES + 64


@pytest.mark.parametrize("content_type", sorted(CHECKS))
def test_file_same_seed_identical(content_type):
    row = planned(content_type, 200_000)
    assert demo_data.content_bytes(row, 3) == demo_data.content_bytes(row, 3)


@pytest.mark.parametrize("content_type", sorted(CHECKS))
def test_file_other_seed_differs(content_type):
    row = planned(content_type, 200_000)
    assert demo_data.content_bytes(row, 3) != demo_data.content_bytes(row, 4)


# --- The database: generate, read back, compare -----------------------------------------------

SMALL = {"scale": "demo", "rows": 40, "size_factor": 0.05}


def fetch(dsn: str, query: sql.Composable, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


@pytest.fixture
def generated(pg_dsn, pg_schema, s3_client, bucket):
    table = f"{pg_schema}.attachments"
    result = demo_data.generate(pg_dsn, table=table, seed=11, s3_client=s3_client, bucket=bucket, **SMALL)
    return table, result


def test_generated_row_count(pg_dsn, generated):
    table, _ = generated
    schema, name = table.split(".")
    assert fetch(pg_dsn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))[0][0] == 40


@pytest.mark.parametrize(
    ("condition", "count"),
    [
        ("octet_length(bytes) = 0", 2),
        ("bytes IS NULL AND storage_backend = 'db'", 2),
        ("bytes IS NULL AND storage_backend = 's3' AND storage_key IS NOT NULL", 2),
        ("octet_length(bytes) > 0 AND storage_backend = 'db'", 34),
    ],
)
def test_generated_special_rows(pg_dsn, generated, condition, count):
    table, _ = generated
    schema, name = table.split(".")
    query = sql.SQL("SELECT count(*) FROM {} WHERE " + condition).format(sql.Identifier(schema, name))
    assert fetch(pg_dsn, query)[0][0] == count


def test_generated_files_match_content_type(pg_dsn, generated):
    table, _ = generated
    schema, name = table.split(".")
    query = sql.SQL("SELECT id, content_type, bytes FROM {} WHERE octet_length(bytes) > 0").format(
        sql.Identifier(schema, name)
    )
    for row_id, content_type, data in fetch(pg_dsn, query):
        try:
            CHECKS[content_type](data)
        except AssertionError as error:
            raise AssertionError(f"row {row_id} ({content_type}) is not a valid file") from error


def test_offloaded_keys_name_id_and_digest(pg_dsn, generated):
    table, result = generated
    schema, name = table.split(".")
    query = sql.SQL("SELECT id, storage_key FROM {} WHERE storage_backend = 's3'").format(
        sql.Identifier(schema, name)
    )
    for row_id, key in fetch(pg_dsn, query):
        assert key == f"attachments/{row_id}/{result.expected[row_id].sha256}"


def test_generated_matches_expected(pg_dsn, generated, s3_client, bucket):
    table, _ = generated
    comparison = demo_data.compare_with_expected(pg_dsn, table, s3_client=s3_client, bucket=bucket)
    assert comparison.discrepancies == []
    assert comparison.checked_inline == 38
    assert comparison.checked_offloaded == 2


def test_expected_table_matches_result(pg_dsn, generated):
    table, result = generated
    assert demo_data.read_expected(pg_dsn, table) == result.expected


def test_comparison_finds_each_loss(pg_dsn, generated, s3_client, bucket):
    table, _ = generated
    schema, name = table.split(".")
    target = sql.Identifier(schema, name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        changed = conn.execute(
            sql.SQL("SELECT min(id) FROM {} WHERE octet_length(bytes) > 0").format(target)
        ).fetchone()[0]
        conn.execute(
            sql.SQL("UPDATE {} SET bytes = bytes || '\\x00' WHERE id = %s").format(target), (changed,)
        )
        deleted = conn.execute(
            sql.SQL("DELETE FROM {} WHERE id = (SELECT max(id) FROM {}) RETURNING id").format(target, target)
        ).fetchone()[0]
        missing_id, key = conn.execute(
            sql.SQL("SELECT id, storage_key FROM {} WHERE storage_backend = 's3' ORDER BY id LIMIT 1").format(
                target
            )
        ).fetchone()
    s3_client.delete_object(Bucket=bucket, Key=key)

    comparison = demo_data.compare_with_expected(pg_dsn, table, s3_client=s3_client, bucket=bucket)

    assert sorted(item.row_id for item in comparison.discrepancies) == sorted([changed, deleted, missing_id])


def test_null_row_after_offload_is_loss(pg_dsn, generated):
    table, _ = generated
    schema, name = table.split(".")
    target = sql.Identifier(schema, name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row_id = conn.execute(
            sql.SQL("SELECT min(id) FROM {} WHERE octet_length(bytes) > 0").format(target)
        ).fetchone()[0]
        conn.execute(
            sql.SQL(
                "UPDATE {} SET bytes = NULL, storage_backend = 's3', storage_key = NULL WHERE id = %s"
            ).format(target),
            (row_id,),
        )
    comparison = demo_data.compare_with_expected(pg_dsn, table)
    assert [item.row_id for item in comparison.discrepancies] == [row_id]


def test_toast_compresses_text_only(pg_dsn, generated):
    table, _ = generated
    schema, name = table.split(".")
    query = sql.SQL(
        "SELECT content_type LIKE 'text/%%', sum(pg_column_size(bytes))::float / sum(octet_length(bytes))"
        " FROM {} WHERE octet_length(bytes) > 4096 GROUP BY 1"
    ).format(sql.Identifier(schema, name))
    ratios = dict(fetch(pg_dsn, query))
    assert ratios[True] < 0.5
    assert ratios[False] > 0.99


def test_identity_continues_after_ids(pg_dsn, generated):
    table, result = generated
    schema, name = table.split(".")
    query = sql.SQL("INSERT INTO {} (company_id) VALUES (1) RETURNING id").format(
        sql.Identifier(schema, name)
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        new_id = conn.execute(query).fetchone()[0]
    assert new_id > max(result.expected)


def test_same_seed_identical_tables(pg_dsn, pg_schema):
    for name in ("first", "second"):
        demo_data.generate(pg_dsn, table=f"{pg_schema}.{name}", seed=21, **SMALL)
    query = (
        "SELECT id, company_id, filename, content_type, sha256(bytes), storage_backend, storage_key, created_at"
        " FROM {} ORDER BY id"
    )
    first = fetch(pg_dsn, sql.SQL(query).format(sql.Identifier(pg_schema, "first")))
    second = fetch(pg_dsn, sql.SQL(query).format(sql.Identifier(pg_schema, "second")))
    assert first == second


def test_other_seed_other_contents(pg_dsn, pg_schema):
    first = demo_data.generate(pg_dsn, table=f"{pg_schema}.first", seed=21, **SMALL)
    second = demo_data.generate(pg_dsn, table=f"{pg_schema}.second", seed=22, **SMALL)
    digests = {content.sha256 for content in first.expected.values()} - {None}
    other = {content.sha256 for content in second.expected.values()} - {None}
    assert digests & other <= {hashlib.sha256(b"").hexdigest()}


def test_existing_table_needs_reset(pg_dsn, pg_schema):
    table = f"{pg_schema}.attachments"
    demo_data.generate(pg_dsn, table=table, seed=1, **SMALL)
    with pytest.raises(ConfigurationError, match="already exists. Pass --reset"):
        demo_data.generate(pg_dsn, table=table, seed=1, **SMALL)


def test_reset_replaces_table(pg_dsn, pg_schema):
    table = f"{pg_schema}.attachments"
    demo_data.generate(pg_dsn, table=table, seed=1, **SMALL)
    result = demo_data.generate(
        pg_dsn, table=table, seed=1, reset=True, scale="demo", rows=25, size_factor=0.05
    )
    assert len(demo_data.read_expected(pg_dsn, table)) == result.rows == 25


def test_reserved_schema_is_permanent(pg_dsn):
    with pytest.raises(PermanentError, match="unacceptable schema name"):
        demo_data.generate(pg_dsn, table="pg_catalog.demo_attachments", **SMALL)


def test_client_without_bucket_rejected(pg_dsn, pg_schema, s3_client):
    with pytest.raises(ConfigurationError, match="without a bucket"):
        demo_data.generate(pg_dsn, table=f"{pg_schema}.t", s3_client=s3_client, **SMALL)


def test_long_table_name_rejected(pg_dsn, pg_schema):
    with pytest.raises(ConfigurationError, match="63-byte identifier limit"):
        demo_data.generate(pg_dsn, table=f"{pg_schema}.{'a' * 60}", **SMALL)


# --- The command line and its memory use --------------------------------------------------------


# Prints the process's peak resident memory (VmHWM, KiB) at exit. VmHWM belongs to the process
# image started by exec, unlike ru_maxrss, which also counts the forked copy of pytest.
PEAK_MEMORY_WRAPPER = """
import atexit, runpy, sys
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("VmHWM", line.split()[1])
atexit.register(report)
sys.argv = ["demo_data", *sys.argv[1:]]
runpy.run_module("attachment_ops.demo_data", run_name="__main__")
"""


def run_cli(arguments: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "include"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_WRAPPER, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        timeout=300,
    )


def test_cli_generates_table(pg_dsn, pg_schema):
    result = run_cli(
        [
            "--dsn",
            pg_dsn,
            "--table",
            f"{pg_schema}.cli",
            "--rows",
            "30",
            "--size-factor",
            "0.02",
            "--seed",
            "3",
        ]
    )
    assert result.returncode == 0, result.stdout
    assert f"{pg_schema}.cli: 30 rows" in result.stdout


def test_cli_skip_existing_leaves_table(pg_dsn, pg_schema):
    table = f"{pg_schema}.cli"
    demo_data.generate(pg_dsn, table=table, seed=1, **SMALL)
    result = run_cli(["--dsn", pg_dsn, "--table", table, "--rows", "30", "--skip-existing"])
    assert result.returncode == 0, result.stdout
    assert "already exists; nothing generated" in result.stdout
    assert len(demo_data.read_expected(pg_dsn, table)) == 40


def test_cli_bucket_needs_endpoint(pg_dsn, pg_schema):
    result = run_cli(
        [
            "--dsn",
            pg_dsn,
            "--table",
            f"{pg_schema}.cli",
            "--rows",
            "30",
            "--bucket",
            "b",
            "--s3-endpoint-url",
            "",
        ],
        env={"S3_ENDPOINT_URL": ""},
    )
    assert result.returncode == 1
    assert "--bucket needs an S3 endpoint" in result.stdout


def test_cli_large_row_bounded_memory(pg_dsn, pg_schema):
    # One row of about 100 MiB: the generator streams it, so peak memory stays far below its size.
    result = run_cli(["--dsn", pg_dsn, "--table", f"{pg_schema}.big", "--rows", "1", "--size-factor", "40"])
    assert result.returncode == 0, result.stdout
    assert "102.3 MiB inline" in result.stdout
    peak_kib = int(re.search(r"VmHWM (\d+)", result.stdout).group(1))
    assert peak_kib < 80 * 1024
