"""Reproducible demo attachments: the application's table filled with real files from a seed.

The generator creates the attachments table as the application has it and fills it with files
whose bytes depend only on the seed: the same seed gives byte-identical contents. Sizes follow a
log-normal distribution shaped like production: 9.36 GiB in 3,748 rows, the median well below the
mean and a few tens of MB at the top. The ``demo`` scale shrinks the rows and sizes so that the
whole chain runs in a few minutes. Every file is valid for its content type. PDF, JPEG and PNG
files carry incompressible random payloads, while CSV and plain text compress well under TOAST.

Each row's SHA-256 and size go into a side table ``<table>_expected``, so tests and the
reliability suite can check after any run that nothing was lost (``compare_with_expected``).

Usage::

    python -m attachment_ops.demo_data --dsn postgresql://... --scale demo --seed 1 --reset
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import random
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from attachment_ops.config import GIB, MIB
from attachment_ops.errors import ConfigurationError, MaintenanceError

if TYPE_CHECKING:
    import psycopg
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

DEFAULT_TABLE = "public.document_attachments"
DEFAULT_PREFIX = "attachments/"
EXPECTED_SUFFIX = "_expected"

# created_at values lie in [CREATED_END - CREATED_SPAN, CREATED_END), so runs are reproducible.
CREATED_END = datetime(2026, 11, 30, tzinfo=timezone.utc)
CREATED_SPAN = timedelta(days=730)
# Each of the last RECENT_DAYS days before CREATED_END gets at least one row (when there are at
# least twice as many rows), so a backfill over recent daily intervals always finds work.
RECENT_DAYS = 14

# Generated content is yielded in pieces of about this size. Only an already-offloaded row is held
# whole in memory, and Scale.offloaded_max_bytes caps its size.
CHUNK_BYTES = 1 * MIB
# A new transaction starts after this many bytes or rows, so progress is committed and logged.
BATCH_BYTES = 256 * MIB
BATCH_ROWS = 500

PRODUCTION_ROWS = 3748
PRODUCTION_TOTAL_BYTES = round(9.36 * GIB)

# (content type, file extension, share of rows)
CONTENT_TYPES: tuple[tuple[str, str, float], ...] = (
    ("application/pdf", "pdf", 0.45),
    ("image/jpeg", "jpg", 0.25),
    ("image/png", "png", 0.15),
    ("text/csv", "csv", 0.10),
    ("text/plain", "txt", 0.05),
)
_EXTENSIONS = {content_type: extension for content_type, extension, _ in CONTENT_TYPES}


@dataclass(frozen=True)
class Scale:
    """Shape of one generated data set.

    ``mean_bytes``, ``max_bytes`` and the resulting total are multiplied by ``size_factor``.
    ``min_bytes`` is not, because every file needs room for its format's structure.
    """

    name: str
    rows: int
    mean_bytes: int
    sigma: float
    max_bytes: int
    size_factor: float
    min_bytes: int = 2048
    empty_fraction: float = 0.004
    null_fraction: float = 0.004
    offloaded_fraction: float = 0.02
    offloaded_max_bytes: int = 16 * MIB


SCALES: dict[str, Scale] = {
    "production": Scale(
        name="production",
        rows=PRODUCTION_ROWS,
        mean_bytes=PRODUCTION_TOTAL_BYTES // PRODUCTION_ROWS,
        sigma=1.0,
        max_bytes=64 * MIB,
        size_factor=1.0,
    ),
    # 200 rows at 0.4 of production sizes: about 205 MiB in total.
    "demo": Scale(
        name="demo",
        rows=200,
        mean_bytes=PRODUCTION_TOTAL_BYTES // PRODUCTION_ROWS,
        sigma=1.0,
        max_bytes=64 * MIB,
        size_factor=0.4,
    ),
}


@dataclass(frozen=True)
class PlannedRow:
    """One row to generate. ``size`` is None for a NULL ``bytes`` value and 0 for an empty file."""

    id: int
    company_id: int
    filename: str
    content_type: str
    kind: str  # "inline", "empty", "null" or "offloaded"
    size: int | None
    created_at: datetime

    @property
    def storage_backend(self) -> str:
        return "s3" if self.kind == "offloaded" else "db"


@dataclass(frozen=True)
class ExpectedContent:
    """SHA-256 (hex) and size in bytes of a row's file; both None for a NULL row."""

    sha256: str | None
    size: int | None


@dataclass(frozen=True)
class GenerationResult:
    """Summary of a ``generate`` run. ``expected`` maps each row id to its file's digest and size."""

    table: str
    expected_table: str
    scale: str
    seed: int
    rows: int
    inline_rows: int
    empty_rows: int
    null_rows: int
    offloaded_rows: int
    inline_bytes: int
    offloaded_bytes: int
    uploaded_objects: int
    seconds: float
    expected: dict[int, ExpectedContent] = field(repr=False)


@dataclass(frozen=True)
class Discrepancy:
    """A row whose stored content differs from what the generator recorded."""

    row_id: int
    problem: str


@dataclass(frozen=True)
class ComparisonResult:
    """Outcome of ``compare_with_expected``."""

    checked_inline: int
    checked_offloaded: int
    unchecked_offloaded: int
    discrepancies: list[Discrepancy]

    @property
    def ok(self) -> bool:
        return not self.discrepancies


# --- Plan: sizes, kinds, names and dates -------------------------------------------------------


def resolve_scale(scale: Scale | str) -> Scale:
    if isinstance(scale, Scale):
        return scale
    try:
        return SCALES[scale]
    except KeyError:
        raise ConfigurationError(
            f"Unknown scale {scale!r}. Expected one of: {', '.join(sorted(SCALES))}."
        ) from None


def _rng(seed: int, aspect: str) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random, so each aspect gets an independent
    # stream that does not depend on PYTHONHASHSEED or on the order in which aspects are drawn.
    return random.Random(f"attachment-ops-demo:{seed}:{aspect}")


def special_row_count(rows: int, fraction: float) -> int:
    """Return how many rows of a special kind (empty, NULL, offloaded) a data set of ``rows`` has."""
    if rows < 20:
        return 0
    return max(2, round(rows * fraction))


def plan_rows(
    scale: Scale | str = "demo",
    seed: int = 1,
    *,
    rows: int | None = None,
    size_factor: float | None = None,
) -> list[PlannedRow]:
    """Plan every row of a data set without generating content. The same arguments give the same plan.

    ``rows`` and ``size_factor`` override the scale's values. The total size is
    ``rows * mean_bytes * size_factor`` (within 0.1 %), spread over the rows that have content.

    :raises ConfigurationError: on an unknown scale, fewer than one row or a factor that leaves no
        room for a file's structure.
    """
    shape = resolve_scale(scale)
    count = shape.rows if rows is None else rows
    factor = shape.size_factor if size_factor is None else size_factor
    if count < 1:
        raise ConfigurationError(f"rows must be at least 1, got {count}.")
    if factor <= 0 or shape.mean_bytes * factor < shape.min_bytes:
        raise ConfigurationError(
            f"size_factor {factor} makes the mean file smaller than {shape.min_bytes} bytes. "
            f"Use at least {shape.min_bytes / shape.mean_bytes:.4f}."
        )

    created = _created_times(_rng(seed, "created_at"), count)
    ids = _row_ids(_rng(seed, "ids"), count)

    kind_rng = _rng(seed, "kinds")
    empty_count = special_row_count(count, shape.empty_fraction)
    null_count = special_row_count(count, shape.null_fraction)
    kinds = ["inline"] * count
    chosen = kind_rng.sample(range(count), empty_count + null_count)
    for index in chosen[:empty_count]:
        kinds[index] = "empty"
    for index in chosen[empty_count:]:
        kinds[index] = "null"

    with_content = [index for index in range(count) if kinds[index] == "inline"]
    drawn = lognormal_sizes(
        _rng(seed, "sizes"),
        len(with_content),
        total_bytes=count * shape.mean_bytes * factor,
        sigma=shape.sigma,
        min_bytes=shape.min_bytes,
        max_bytes=max(shape.min_bytes, round(shape.max_bytes * factor)),
    )
    sizes: list[int | None] = [None] * count
    for index, size in zip(with_content, drawn, strict=True):
        sizes[index] = size
    for index in range(count):
        if kinds[index] == "empty":
            sizes[index] = 0

    # Rows already offloaded before this package existed. Their objects are uploaded whole, so
    # only rows up to offloaded_max_bytes qualify.
    eligible = [index for index in with_content if (sizes[index] or 0) <= shape.offloaded_max_bytes]
    offloaded_count = min(special_row_count(count, shape.offloaded_fraction), len(eligible))
    for index in kind_rng.sample(eligible, offloaded_count):
        kinds[index] = "offloaded"

    type_rng = _rng(seed, "content_types")
    content_types = type_rng.choices(
        [content_type for content_type, _, _ in CONTENT_TYPES],
        weights=[share for _, _, share in CONTENT_TYPES],
        k=count,
    )
    company_rng = _rng(seed, "companies")
    companies = company_rng.choices(range(1, 61), weights=[1 / rank for rank in range(1, 61)], k=count)
    names = _filenames(_rng(seed, "filenames"), content_types, companies, created)

    return [
        PlannedRow(
            id=ids[index],
            company_id=companies[index],
            filename=names[index],
            content_type=content_types[index],
            kind=kinds[index],
            size=sizes[index],
            created_at=created[index],
        )
        for index in range(count)
    ]


def lognormal_sizes(
    rng: random.Random,
    count: int,
    *,
    total_bytes: float,
    sigma: float,
    min_bytes: int,
    max_bytes: int,
) -> list[int]:
    """Draw ``count`` log-normal sizes, clipped to [min_bytes, max_bytes], that add up to about ``total_bytes``.

    The draws are rescaled until the clipped sum is within 0.1 % of the target, so the shape
    stays log-normal (median about ``exp(-sigma**2 / 2)`` times the mean) and the total is
    predictable.
    """
    if count == 0:
        return []
    raw = [rng.lognormvariate(0.0, sigma) for _ in range(count)]
    multiplier = total_bytes / sum(raw)
    clipped = raw
    for _ in range(50):
        clipped = [min(max(value * multiplier, min_bytes), max_bytes) for value in raw]
        clipped_total = sum(clipped)
        if abs(clipped_total - total_bytes) <= total_bytes * 0.001:
            break
        multiplier *= total_bytes / clipped_total
    return [round(value) for value in clipped]


def _created_times(rng: random.Random, count: int) -> list[datetime]:
    start = CREATED_END - CREATED_SPAN
    span_us = CREATED_SPAN // timedelta(microseconds=1)
    day_us = timedelta(days=1) // timedelta(microseconds=1)
    recent = RECENT_DAYS if count >= 2 * RECENT_DAYS else 0
    times: list[datetime] = []
    for day in range(recent):
        day_start = CREATED_END - timedelta(days=day + 1)
        times.append(day_start + timedelta(microseconds=rng.randrange(day_us)))
    for _ in range(count - recent):
        # sqrt of a uniform variate gives a density that grows linearly over the two years, as
        # uploads of a growing application do.
        offset = min(int(span_us * math.sqrt(rng.random())), span_us - 1)
        times.append(start + timedelta(microseconds=offset))
    return sorted(times)


def _row_ids(rng: random.Random, count: int) -> list[int]:
    # Gaps, as deleted rows leave them, so code that walks by primary key meets them.
    ids: list[int] = []
    current = 0
    for _ in range(count):
        current += rng.randint(2, 20) if rng.random() < 0.05 else 1
        ids.append(current)
    return ids


_STEMS = (
    "invoice",
    "contract",
    "delivery-note",
    "receipt",
    "scan",
    "offer",
    "Rechnung",
    "facture",
    "Lieferschein",
    "payslip",
    "statement",
    "photo",
    "export",
    "report",
    "purchase order",
)

# Names that break naive code: non-Latin scripts, combining marks, bidirectional controls, emoji,
# path separators, quotes and names far beyond 255 bytes.
_HARD_STEMS = (
    "Überweisung März – Müller & Söhne",
    "請求書_2025年3月分",
    "Счёт-фактура №17 (Ελλάδα)",
    "  leading, double  and trailing spaces ",
    "2025/Q3/../contracts\\signed copy",
    "/absolute/path/like/name",
    "invoice\u202egpj.exe",
    "\u200fفاتورة رقم 42 \u05d7\u05e9\u05d1\u05d5\u05df",
    "📎 scan 🧾 ✅ 👩‍💻",
    "Cafe\u0301 receipt (NFD)",
    'quote"s; name=evil %41%42 100% <b>',
    "tab\tseparated\u00a0no-break space",
    ("Vertrag über die Lieferung von Ersatzteilen und Wartungsleistungen " * 5).strip(),
    "ä" * 260,
    "/".join(["folder"] * 50) + "/file",
)


def _filenames(
    rng: random.Random, content_types: Sequence[str], companies: Sequence[int], created: Sequence[datetime]
) -> list[str]:
    count = len(content_types)
    hard_rows: dict[int, str] = {}
    if count >= 3 * len(_HARD_STEMS):
        for index, stem in zip(rng.sample(range(count), len(_HARD_STEMS)), _HARD_STEMS, strict=True):
            hard_rows[index] = stem
    names: list[str] = []
    for index in range(count):
        extension = _EXTENSIONS[content_types[index]]
        stem = hard_rows.get(index)
        if stem is None and rng.random() < 0.05:
            stem = rng.choice(_HARD_STEMS)
        if stem is None:
            day = created[index].strftime("%Y-%m-%d")
            if rng.random() < 0.3:
                stem = f"Scan {day} {rng.randrange(24):02d}.{rng.randrange(60):02d}"
            else:
                stem = f"{rng.choice(_STEMS)}_{companies[index]}_{day}_{rng.randrange(100000):05d}"
        names.append(f"{stem}.{extension}")
    return names


# --- Content: real files of each type, generated in pieces ------------------------------------


def iter_content(row: PlannedRow, seed: int) -> Iterator[bytes]:
    """Yield the row's file in pieces of about CHUNK_BYTES. The same row and seed give the same bytes.

    Yields nothing for an empty or NULL row.
    """
    if not row.size:
        return
    generator = _GENERATORS.get(row.content_type)
    if generator is None:
        raise ConfigurationError(
            f"Row {row.id} has content type {row.content_type!r}, which the generator cannot make. "
            f"Supported: {', '.join(_GENERATORS)}."
        )
    yield from generator(row.size, _rng(seed, f"content:{row.id}"), row.id)


def _regroup(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a byte stream into pieces of exactly ``size`` bytes, except a shorter last piece."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def _random_pieces(rng: random.Random, size: int) -> Iterator[bytes]:
    remaining = size
    while remaining > 0:
        piece = min(remaining, CHUNK_BYTES)
        yield rng.randbytes(piece)
        remaining -= piece


def _pdf_chunks(size: int, rng: random.Random, row_id: int) -> Iterator[bytes]:
    # One page with a line of text, plus an unreferenced stream object of random bytes that pads
    # the file to its size. Newlines before "xref" absorb the one or two bytes that a change in
    # the number of digits of a length or offset can leave over.
    text = f"BT /F1 18 Tf 72 720 Td (Attachment {row_id}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    head = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(head))
        head += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    padding_number = len(objects) + 1
    offsets.append(len(head))

    def padding_header(length: int) -> bytes:
        return b"%d 0 obj\n<< /Length %d >>\nstream\n" % (padding_number, length)

    padding_footer = b"\nendstream\nendobj\n"

    def tail(xref_offset: int) -> bytes:
        lines = [b"xref\n", b"0 %d\n" % (padding_number + 1), b"0000000000 65535 f \n"]
        lines += [b"%010d 00000 n \n" % offset for offset in offsets]
        lines.append(
            b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n"
            % (padding_number + 1, xref_offset)
        )
        return b"".join(lines)

    def total(length: int) -> int:
        xref_offset = len(head) + len(padding_header(length)) + length + len(padding_footer)
        return xref_offset + len(tail(xref_offset))

    length = max(0, size - total(0))
    while length > 0 and total(length) > size:
        length -= 1
    newlines = size - total(length)
    if newlines < 0:
        raise ConfigurationError(f"Row {row_id}: {size} bytes is too small for a PDF. Use at least 1 KiB.")

    yield bytes(head) + padding_header(length)
    yield from _random_pieces(rng, length)
    xref_offset = len(head) + len(padding_header(length)) + length + len(padding_footer) + newlines
    yield padding_footer + b"\n" * newlines + tail(xref_offset)


# A baseline JPEG of one 8x8 grey block. Its Huffman tables hold one code each ("0" for DC
# difference category 0 and "0" for end-of-block), so the entropy-coded scan is the bits 00 padded
# with ones: 0x3F. Padding goes into COM segments between APP0 and the quantisation table.
_JPEG_HEAD = (
    b"\xff\xd8"  # SOI
    + b"\xff\xe0"
    + struct.pack(">H", 16)
    + b"JFIF\x00\x01\x01\x00"
    + struct.pack(">HH", 1, 1)
    + b"\x00\x00"
)
_JPEG_TAIL = (
    b"\xff\xdb"
    + struct.pack(">H", 67)
    + b"\x00"
    + b"\x01" * 64  # DQT, table 0, all ones
    + b"\xff\xc0"
    + struct.pack(">HBHHB", 11, 8, 8, 8, 1)
    + b"\x01\x11\x00"  # SOF0, 8x8, 1 component
    + b"\xff\xc4"
    + struct.pack(">H", 20)
    + b"\x00"
    + b"\x01"
    + b"\x00" * 15
    + b"\x00"  # DHT DC 0
    + b"\xff\xc4"
    + struct.pack(">H", 20)
    + b"\x10"
    + b"\x01"
    + b"\x00" * 15
    + b"\x00"  # DHT AC 0
    + b"\xff\xda"
    + struct.pack(">H", 8)
    + b"\x01\x01\x00\x00\x3f\x00"  # SOS
    + b"\x3f"  # entropy-coded data
    + b"\xff\xd9"  # EOI
)
_JPEG_MAX_SEGMENT = 2 + 65535  # marker plus the largest length field value


def _com_segment_sizes(padding: int, row_id: int) -> list[int]:
    full, rest = divmod(padding, _JPEG_MAX_SEGMENT)
    sizes = [_JPEG_MAX_SEGMENT] * full
    if 0 < rest < 4:
        if not sizes:
            raise ConfigurationError(f"Row {row_id}: no JPEG segment layout fits {padding} padding bytes.")
        sizes[-1] -= 4 - rest
        sizes.append(4)
    elif rest:
        sizes.append(rest)
    return sizes


def _jpeg_chunks(size: int, rng: random.Random, row_id: int) -> Iterator[bytes]:
    padding = size - len(_JPEG_HEAD) - len(_JPEG_TAIL)
    if padding < 0:
        raise ConfigurationError(f"Row {row_id}: {size} bytes is too small for a JPEG. Use at least 1 KiB.")

    def segments() -> Iterator[bytes]:
        yield _JPEG_HEAD
        for segment_size in _com_segment_sizes(padding, row_id):
            payload = rng.randbytes(segment_size - 4)
            yield b"\xff\xfe" + struct.pack(">H", segment_size - 2) + payload
        yield _JPEG_TAIL

    yield from _regroup(segments(), CHUNK_BYTES)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DEFLATE_STORED_MAX = 65535
_IDAT_MAX = CHUNK_BYTES


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_zlib_length(raw_length: int) -> int:
    blocks = max(1, math.ceil(raw_length / _DEFLATE_STORED_MAX))
    return 2 + raw_length + 5 * blocks + 4


def _png_length(width: int, height: int) -> int:
    zlib_length = _png_zlib_length(height * (1 + 3 * width))
    idat_chunks = math.ceil(zlib_length / _IDAT_MAX)
    return len(_PNG_SIGNATURE) + 25 + zlib_length + 12 * idat_chunks + 12


def _png_chunks(size: int, rng: random.Random, row_id: int) -> Iterator[bytes]:
    # An 8-bit RGB image of random pixels, incompressible like a photo. Its scanlines go into stored
    # (uncompressed) deflate blocks, so the length is exact. A private ancillary chunk "paDd" of
    # random bytes takes the few bytes left over, and decoders skip unknown ancillary chunks.
    width = min(max(math.isqrt(size // 3), 16), 4096)  # roughly square
    row_bytes = 1 + 3 * width
    budget = size - 12  # the padding chunk's length, type and CRC
    height = max(1, budget // row_bytes)
    while height > 1 and _png_length(width, height) > budget:
        height -= 1
    padding = budget - _png_length(width, height)
    if padding < 0:
        raise ConfigurationError(f"Row {row_id}: {size} bytes is too small for a PNG. Use at least 1 KiB.")

    raw_length = height * row_bytes

    def scanlines() -> Iterator[bytes]:
        rows_per_piece = max(1, CHUNK_BYTES // row_bytes)
        for first in range(0, height, rows_per_piece):
            rows = min(rows_per_piece, height - first)
            data = bytearray(rng.randbytes(rows * row_bytes))
            data[0::row_bytes] = bytes(rows)  # filter type 0 (None) at the start of each scanline
            yield bytes(data)

    def zlib_stream() -> Iterator[bytes]:
        yield b"\x78\x01"  # deflate, 32 KiB window, no preset dictionary
        adler = 1
        consumed = 0
        for block in _regroup(scanlines(), _DEFLATE_STORED_MAX):
            consumed += len(block)
            final = 1 if consumed == raw_length else 0
            adler = zlib.adler32(block, adler)
            yield bytes([final]) + struct.pack("<HH", len(block), len(block) ^ 0xFFFF) + block
        yield struct.pack(">I", adler)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    yield _PNG_SIGNATURE + _png_chunk(b"IHDR", header)
    for piece in _regroup(zlib_stream(), _IDAT_MAX):
        yield _png_chunk(b"IDAT", piece)
    yield _png_chunk(b"paDd", rng.randbytes(padding)) + _png_chunk(b"IEND", b"")


_COMPANIES = (
    "Müller GmbH",
    "Société Générale de Transport",
    "株式会社テスト",
    "Nordic Parts AB",
    "ACME Corp",
    "Łódź Logistics",
    "O'Brien & Sons",
    "Café Olé SL",
)
_WORDS = (
    "spare parts",
    "maintenance",
    "freight",
    "consulting hours",
    "licence renewal",
    "office supplies",
    "repair",
    "training",
    "hosting",
    "travel expenses",
    "catering",
    "cleaning",
)
_CURRENCIES = ("EUR", "USD", "CHF", "SEK", "JPY")
_LEVELS = ("INFO", "INFO", "INFO", "WARNING", "DEBUG", "ERROR")
_TEXT_RESERVE = 64  # room kept for the final filler line


def _text_chunks(
    size: int,
    rng: random.Random,
    row_id: int,
    header: bytes,
    line_format: bytes,
    final_prefix: bytes,
    bodies: list[bytes],
) -> Iterator[bytes]:
    if size < len(header) + _TEXT_RESERVE:
        raise ConfigurationError(
            f"Row {row_id}: {size} bytes is too small for a text file. Use at least 1 KiB."
        )
    produced = len(header)
    yield header
    number = 1
    full = False
    while not full:
        lines = []
        for body in rng.choices(bodies, k=2048):
            line = line_format % (number, body)
            if size - produced - len(line) < _TEXT_RESERVE:
                full = True
                break
            lines.append(line)
            produced += len(line)
            number += 1
        yield b"".join(lines)
    prefix = final_prefix % number
    yield prefix + b"x" * (size - produced - len(prefix) - 1) + b"\n"


def _csv_chunks(size: int, rng: random.Random, row_id: int) -> Iterator[bytes]:
    bodies = []
    for _ in range(512):
        issued = CREATED_END - timedelta(days=rng.randrange(730))
        body = (
            f"{rng.choice(_COMPANIES).replace(',', ' ')},{issued:%Y-%m-%d},{rng.randrange(1, 10**7) / 100:.2f},"
            f"{rng.choice(_CURRENCIES)},{rng.choice(_WORDS)} {rng.choice(_WORDS)}"
        )
        bodies.append(body.encode("utf-8"))
    header = b"line,company,issued_on,amount,currency,description\n"
    yield from _text_chunks(size, rng, row_id, header, b"%d,%s\n", b"%d,,,,,", bodies)


def _text_plain_chunks(size: int, rng: random.Random, row_id: int) -> Iterator[bytes]:
    bodies = []
    for _ in range(512):
        stamp = CREATED_END - timedelta(seconds=rng.randrange(730 * 86400))
        body = (
            f"{stamp:%Y-%m-%dT%H:%M:%SZ} {rng.choice(_LEVELS)} worker-{rng.randrange(8)} "
            f"{rng.choice(_WORDS)} for {rng.choice(_COMPANIES)} took {rng.randrange(1, 5000)} ms"
        )
        bodies.append(body.encode("utf-8"))
    header = f"Export of attachment {row_id}\n".encode("ascii")
    yield from _text_chunks(size, rng, row_id, header, b"%07d %s\n", b"%07d ", bodies)


_GENERATORS: dict[str, Callable[[int, random.Random, int], Iterator[bytes]]] = {
    "application/pdf": _pdf_chunks,
    "image/jpeg": _jpeg_chunks,
    "image/png": _png_chunks,
    "text/csv": _csv_chunks,
    "text/plain": _text_plain_chunks,
}


def content_bytes(row: PlannedRow, seed: int) -> bytes:
    """Return the row's whole file, for small rows and tests (``iter_content`` streams it instead)."""
    return b"".join(iter_content(row, seed))


# --- Writing: table, binary COPY, expected digests, objects ------------------------------------

_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_COPY_NULL = struct.pack("!i", -1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_COLUMNS = (
    "id",
    "company_id",
    "filename",
    "content_type",
    "bytes",
    "storage_backend",
    "storage_key",
    "created_at",
)


def _copy_int8(value: int) -> bytes:
    return struct.pack("!iq", 8, value)


def _copy_text(value: str | None) -> bytes:
    if value is None:
        return _COPY_NULL
    encoded = value.encode("utf-8")
    return struct.pack("!i", len(encoded)) + encoded


def _copy_timestamptz(value: datetime) -> bytes:
    # Binary timestamptz: microseconds since 2000-01-01 00:00 UTC as a signed 64-bit integer.
    return _copy_int8((value - _PG_EPOCH) // timedelta(microseconds=1))


def split_table_name(table: str) -> tuple[str, str]:
    """Split 'schema.table' (or a bare name, meaning ``public``) into its two parts."""
    parts = table.split(".")
    if len(parts) == 1 and parts[0]:
        return "public", parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ConfigurationError(f"Table name {table!r} must be 'table' or 'schema.table', unquoted.")


def expected_table_name(table: str) -> str:
    schema, name = split_table_name(table)
    return f"{schema}.{name}{EXPECTED_SUFFIX}"


def create_tables(conn: psycopg.Connection, table: str, *, reset: bool) -> None:
    """Create the attachments table and its ``_expected`` side table.

    With ``reset``, both are dropped first (with their data).

    :raises ConfigurationError: when a table exists and ``reset`` is false, or a name is too long.
    """
    from psycopg import sql

    schema, name = split_table_name(table)
    expected_name = name + EXPECTED_SUFFIX
    if len(expected_name.encode("utf-8")) > 63:
        raise ConfigurationError(
            f"Table name {name!r} is too long: {expected_name!r} exceeds PostgreSQL's 63-byte identifier limit."
        )
    target = sql.Identifier(schema, name)
    expected = sql.Identifier(schema, expected_name)
    with conn.transaction(), conn.cursor() as cur:
        if reset:
            log.info("Dropping %s.%s and %s.%s", schema, name, schema, expected_name)
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(target, expected))
        for identifier in (target, expected):
            qualified = identifier.as_string(conn)
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified,))
            if cur.fetchone()[0]:
                raise ConfigurationError(
                    f"Table {qualified} already exists. Pass --reset (reset=True) to drop and recreate "
                    "it with its data, or choose another --table."
                )
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        cur.execute(
            sql.SQL(
                """
                CREATE TABLE {} (
                    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                    company_id bigint,
                    filename text,
                    content_type text,
                    bytes bytea NULL,
                    storage_backend text NOT NULL DEFAULT 'db' CHECK (storage_backend IN ('db', 's3')),
                    storage_key text,
                    created_at timestamptz NOT NULL DEFAULT now()
                )
                """
            ).format(target)
        )
        cur.execute(sql.SQL("CREATE INDEX ON {} (created_at)").format(target))
        cur.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, sha256 text, size bigint)").format(expected)
        )


class _Uploader:
    """Put the objects of already-offloaded rows, with their SHA-256 checked by the server."""

    def __init__(self, s3_client: BaseClient | None, bucket: str | None, prefix: str) -> None:
        self.s3_client = s3_client
        self.bucket = bucket
        self.prefix = prefix
        self.uploaded = 0

    def put(self, row: PlannedRow, data: bytes, sha256_hex: str) -> str:
        from attachment_ops.storage import RetryPolicy, call_with_retries, sha256_base64

        key = f"{self.prefix}{row.id}/{sha256_hex}"
        if self.s3_client is None:
            return key
        call_with_retries(
            lambda: self.s3_client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=row.content_type,
                ChecksumSHA256=sha256_base64(sha256_hex),
            ),
            f"put_object {key}",
            RetryPolicy(),
            bucket=self.bucket,
        )
        self.uploaded += 1
        return key


def _write_batch(
    conn: psycopg.Connection,
    table: str,
    rows: Sequence[PlannedRow],
    seed: int,
    uploader: _Uploader,
) -> dict[int, ExpectedContent]:
    """Insert ``rows`` and their expected digests in one transaction, streaming each file."""
    from psycopg import sql
    from psycopg.copy import LibpqWriter

    schema, name = split_table_name(table)
    copy_rows = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(schema, name), sql.SQL(", ").join(sql.Identifier(column) for column in _COLUMNS)
    )
    copy_expected = sql.SQL("COPY {} (id, sha256, size) FROM STDIN").format(
        sql.Identifier(schema, name + EXPECTED_SUFFIX)
    )
    expected: dict[int, ExpectedContent] = {}
    with conn.transaction(), conn.cursor() as cur:
        # LibpqWriter waits for the socket after every MiB, so a slow server never lets generated
        # data pile up in memory. psycopg 3.3's default queued writer can hold 1024 buffers of up
        # to 128 KiB, about 128 MiB.
        with cur.copy(copy_rows, writer=LibpqWriter(cur)) as copy:
            copy.write(_COPY_SIGNATURE)
            for row in rows:
                copy.write(
                    struct.pack("!h", len(_COLUMNS))
                    + _copy_int8(row.id)
                    + _copy_int8(row.company_id)
                    + _copy_text(row.filename)
                    + _copy_text(row.content_type)
                )
                key = None
                if row.kind == "null":
                    copy.write(_COPY_NULL)
                    expected[row.id] = ExpectedContent(None, None)
                elif row.kind == "offloaded":
                    data = content_bytes(row, seed)
                    digest = hashlib.sha256(data).hexdigest()
                    key = uploader.put(row, data, digest)
                    copy.write(_COPY_NULL)
                    expected[row.id] = ExpectedContent(digest, len(data))
                else:
                    size = row.size or 0
                    copy.write(struct.pack("!i", size))
                    hasher = hashlib.sha256()
                    written = 0
                    for piece in iter_content(row, seed):
                        hasher.update(piece)
                        written += len(piece)
                        copy.write(piece)
                    if written != size:
                        raise RuntimeError(f"Row {row.id}: generated {written} bytes, planned {size}.")
                    expected[row.id] = ExpectedContent(hasher.hexdigest(), size)
                copy.write(
                    _copy_text(row.storage_backend) + _copy_text(key) + _copy_timestamptz(row.created_at)
                )
            copy.write(_COPY_TRAILER)
        with cur.copy(copy_expected) as copy:
            for row_id, content in expected.items():
                copy.write_row((row_id, content.sha256, content.size))
    return expected


def _batches(rows: Sequence[PlannedRow]) -> Iterator[list[PlannedRow]]:
    batch: list[PlannedRow] = []
    batch_bytes = 0
    for row in rows:
        batch.append(row)
        batch_bytes += row.size or 0
        if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_ROWS:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


def generate(
    conninfo: str,
    *,
    table: str = DEFAULT_TABLE,
    scale: Scale | str = "demo",
    seed: int = 1,
    rows: int | None = None,
    size_factor: float | None = None,
    reset: bool = False,
    s3_client: BaseClient | None = None,
    bucket: str | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> GenerationResult:
    """Create ``table`` and fill it with the planned rows; record each file's SHA-256 in ``<table>_expected``.

    Rows are written with binary COPY in transactions of up to BATCH_BYTES, streaming each file,
    so memory stays at a few MiB per row plus at most ``offloaded_max_bytes`` for an offloaded
    row. Already-offloaded rows get ``storage_backend = 's3'``, ``bytes`` NULL and the key
    ``<prefix><id>/<sha256 hex>``. With ``s3_client``, their objects are uploaded to ``bucket``
    before the row that points at them commits. Without a client, the keys point at nothing.

    :raises ConfigurationError: on a bad scale, table name, prefix, or an existing table without ``reset``.
    :raises TransientError, PermanentError: on a database or S3 failure, classified as retryable or not.
    """
    import psycopg

    from attachment_ops.db import classify_pg_error, connect

    if s3_client is not None and not bucket:
        raise ConfigurationError("An S3 client was given without a bucket. Pass bucket= (--bucket).")
    if prefix and not prefix.endswith("/"):
        raise ConfigurationError(f"prefix {prefix!r} must end with '/', e.g. {prefix + '/'!r}.")
    shape = resolve_scale(scale)
    planned = plan_rows(shape, seed, rows=rows, size_factor=size_factor)
    total_bytes = sum(row.size or 0 for row in planned)
    log.info(
        "Generating %d rows (%.1f MiB, scale %s, seed %d) into %s",
        len(planned),
        total_bytes / MIB,
        shape.name,
        seed,
        table,
    )
    if s3_client is None and any(row.kind == "offloaded" for row in planned):
        log.warning(
            "No S3 client given: the already-offloaded rows will point at keys that do not exist, so "
            "verification will report them as missing."
        )

    started = time.monotonic()
    uploader = _Uploader(s3_client, bucket, prefix)
    expected: dict[int, ExpectedContent] = {}
    try:
        with connect(conninfo, autocommit=True, statement_timeout_ms=0) as conn:
            create_tables(conn, table, reset=reset)
            written = 0
            written_rows = 0
            for batch in _batches(planned):
                expected.update(_write_batch(conn, table, batch, seed, uploader))
                written += sum(row.size or 0 for row in batch)
                written_rows += len(batch)
                elapsed = max(time.monotonic() - started, 1e-6)
                rate = written / MIB / elapsed
                eta = (total_bytes - written) / MIB / rate if rate > 0 else 0.0
                log.info(
                    "Inserted %d of %d rows, %.1f of %.1f MiB (%.1f MiB/s, about %.0f s left)",
                    written_rows,
                    len(planned),
                    written / MIB,
                    total_bytes / MIB,
                    rate,
                    eta,
                )
            _finish_table(conn, table)
    except psycopg.Error as error:
        raise classify_pg_error(error, f"write demo rows into {table}") from error

    result = GenerationResult(
        table=table,
        expected_table=expected_table_name(table),
        scale=shape.name,
        seed=seed,
        rows=len(planned),
        inline_rows=sum(1 for row in planned if row.kind == "inline"),
        empty_rows=sum(1 for row in planned if row.kind == "empty"),
        null_rows=sum(1 for row in planned if row.kind == "null"),
        offloaded_rows=sum(1 for row in planned if row.kind == "offloaded"),
        inline_bytes=sum(row.size or 0 for row in planned if row.kind in ("inline", "empty")),
        offloaded_bytes=sum(row.size or 0 for row in planned if row.kind == "offloaded"),
        uploaded_objects=uploader.uploaded,
        seconds=time.monotonic() - started,
        expected=expected,
    )
    log.info(
        "Generated %d rows in %s: %d inline (%.1f MiB), %d empty, %d NULL, %d offloaded (%d objects "
        "uploaded) in %.1f s",
        result.rows,
        table,
        result.inline_rows,
        result.inline_bytes / MIB,
        result.empty_rows,
        result.null_rows,
        result.offloaded_rows,
        result.uploaded_objects,
        result.seconds,
    )
    return result


def _finish_table(conn: psycopg.Connection, table: str) -> None:
    # Move the identity past the generated ids, so rows the application (or a test) inserts
    # later get fresh ids, then give the planner statistics.
    from psycopg import sql

    schema, name = split_table_name(table)
    target = sql.Identifier(schema, name)
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT setval(pg_get_serial_sequence(%s, 'id'), GREATEST(max(id), 1)) FROM {}").format(
                target
            ),
            (target.as_string(conn),),
        )
        cur.execute(sql.SQL("ANALYZE {}").format(target))


# --- Checking: is everything still where the expected table says? -----------------------------


def table_exists(conninfo: str, table: str = DEFAULT_TABLE) -> bool:
    """Return whether ``table`` exists (``schema.table`` or a bare name in ``public``)."""
    from psycopg import sql

    from attachment_ops.db import connect, fetch_one

    schema, name = split_table_name(table)
    with connect(conninfo) as conn:
        qualified = sql.Identifier(schema, name).as_string(conn)
        row = fetch_one(conn, "SELECT to_regclass(%s) IS NOT NULL", (qualified,))
    return bool(row and row[0])


def read_expected(conninfo: str, table: str = DEFAULT_TABLE) -> dict[int, ExpectedContent]:
    """Read ``<table>_expected`` back: row id to SHA-256 and size."""
    from psycopg import sql

    from attachment_ops.db import connect, fetch_all

    schema, name = split_table_name(table)
    with connect(conninfo) as conn:
        rows = fetch_all(
            conn,
            sql.SQL("SELECT id, sha256, size FROM {} ORDER BY id").format(
                sql.Identifier(schema, name + EXPECTED_SUFFIX)
            ),
        )
    return {row_id: ExpectedContent(sha256, size) for row_id, sha256, size in rows}


def _object_digest(s3_client: BaseClient, bucket: str, key: str) -> tuple[str, int]:
    from attachment_ops.storage import RetryPolicy, call_with_retries

    def read() -> tuple[str, int]:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
        hasher = hashlib.sha256()
        size = 0
        for piece in body.iter_chunks(CHUNK_BYTES):
            hasher.update(piece)
            size += len(piece)
        return hasher.hexdigest(), size

    return call_with_retries(read, f"get_object {key}", RetryPolicy(), bucket=bucket)


def compare_with_expected(
    conninfo: str,
    table: str = DEFAULT_TABLE,
    *,
    s3_client: BaseClient | None = None,
    bucket: str | None = None,
) -> ComparisonResult:
    """Check every row recorded in ``<table>_expected`` against the table and, if given, the bucket.

    Inline rows are hashed by the server (``sha256(bytes)``), so no content crosses the network.
    Offloaded rows are read back from ``bucket`` and hashed when ``s3_client`` is given, and only
    counted as unchecked otherwise. Rows added to the table after generation are ignored.
    """
    from psycopg import sql

    from attachment_ops.db import connect
    from attachment_ops.errors import PermanentError

    schema, name = split_table_name(table)
    query = sql.SQL(
        "SELECT e.id, e.sha256, e.size, t.id IS NOT NULL, t.storage_backend, t.storage_key,"
        " encode(sha256(t.bytes), 'hex'), octet_length(t.bytes)"
        " FROM {} e LEFT JOIN {} t ON t.id = e.id ORDER BY e.id"
    ).format(sql.Identifier(schema, name + EXPECTED_SUFFIX), sql.Identifier(schema, name))
    discrepancies: list[Discrepancy] = []
    checked_inline = checked_offloaded = unchecked_offloaded = 0
    with connect(conninfo, statement_timeout_ms=0) as conn, conn.cursor() as cur:
        cur.execute(query)
        for row_id, sha256, size, present, backend, key, actual_sha, actual_size in cur:
            if not present:
                discrepancies.append(Discrepancy(row_id, "row is missing from the table"))
                continue
            if backend == "db":
                checked_inline += 1
                if actual_sha != sha256 or actual_size != size:
                    discrepancies.append(
                        Discrepancy(
                            row_id,
                            f"inline content has SHA-256 {actual_sha} and {actual_size} bytes, "
                            f"expected {sha256} and {size} bytes",
                        )
                    )
                continue
            if actual_sha is not None:
                discrepancies.append(
                    Discrepancy(row_id, f"storage_backend is {backend!r} but bytes is not NULL")
                )
            if not key:
                discrepancies.append(
                    Discrepancy(row_id, f"storage_backend is {backend!r} but storage_key is empty")
                )
                continue
            if s3_client is None:
                unchecked_offloaded += 1
                continue
            checked_offloaded += 1
            try:
                object_sha, object_size = _object_digest(s3_client, bucket or "", key)
            except PermanentError as error:
                discrepancies.append(Discrepancy(row_id, f"object {key!r} cannot be read: {error}"))
                continue
            if object_sha != sha256 or object_size != size:
                discrepancies.append(
                    Discrepancy(
                        row_id,
                        f"object {key!r} has SHA-256 {object_sha} and {object_size} bytes, "
                        f"expected {sha256} and {size} bytes",
                    )
                )
    return ComparisonResult(checked_inline, checked_offloaded, unchecked_offloaded, discrepancies)


# --- Command line ------------------------------------------------------------------------------


def _s3_client_from_arguments(arguments: argparse.Namespace) -> BaseClient | None:
    if not arguments.bucket:
        return None
    from attachment_ops.storage import S3Settings, make_s3_client

    if not arguments.s3_endpoint_url:
        raise ConfigurationError(
            "--bucket needs an S3 endpoint: pass --s3-endpoint-url or set S3_ENDPOINT_URL. The "
            "generator never falls back to a default endpoint."
        )
    access_key = os.environ.get("S3_ACCESS_KEY") or os.environ.get("AWS_ACCESS_KEY_ID")
    secret_key = os.environ.get("S3_SECRET_KEY") or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret_key:
        raise ConfigurationError(
            "--bucket needs S3 credentials: set S3_ACCESS_KEY and S3_SECRET_KEY (or AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY) in the environment."
        )
    settings = S3Settings(
        endpoint_url=arguments.s3_endpoint_url,
        region_name=arguments.s3_region,
        access_key_id=access_key,
        secret_access_key=secret_key,
    )
    return make_s3_client(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m attachment_ops.demo_data",
        description="Create the attachments table and fill it with reproducible demo files.",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("APP_PG_DSN"),
        help="libpq connection string or URI of the application database (default: $APP_PG_DSN)",
    )

    parser.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="demo",
        help="data set shape: demo (about 200 rows, 205 MiB) or production (3,748 rows, 9.36 GiB)",
    )
    parser.add_argument(
        "--table", default=DEFAULT_TABLE, help=f"schema.table to create (default {DEFAULT_TABLE})"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="random seed: the same seed gives byte-identical files"
    )
    parser.add_argument(
        "--rows", type=int, help="number of rows, overriding the scale's (sizes keep their mean)"
    )
    parser.add_argument(
        "--size-factor",
        type=float,
        help="multiplier on file sizes, overriding the scale's (demo 0.4, production 1)",
    )
    parser.add_argument("--reset", action="store_true", help="drop the table and its _expected table first")
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="exit successfully without changes when the table already exists (for one-shot containers)",
    )

    parser.add_argument("--bucket", help="upload the objects of already-offloaded rows to this bucket")
    parser.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("S3_ENDPOINT_URL"),
        help="S3 endpoint for --bucket (default: $S3_ENDPOINT_URL)",
    )
    parser.add_argument(
        "--s3-region",
        default=os.environ.get("S3_REGION", "us-east-1"),
        help="S3 region for --bucket (default: $S3_REGION or us-east-1)",
    )
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"key prefix of the objects (default {DEFAULT_PREFIX})"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the generator from the command line; return the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    arguments = build_parser().parse_args(argv)
    if not arguments.dsn:
        log.error("No database given: pass --dsn or set APP_PG_DSN.")
        return 2
    try:
        if arguments.skip_existing and not arguments.reset and table_exists(arguments.dsn, arguments.table):
            print(f"{arguments.table} already exists; nothing generated (--skip-existing).")
            return 0
        s3_client = _s3_client_from_arguments(arguments)
        result = generate(
            arguments.dsn,
            table=arguments.table,
            scale=arguments.scale,
            seed=arguments.seed,
            rows=arguments.rows,
            size_factor=arguments.size_factor,
            reset=arguments.reset,
            s3_client=s3_client,
            bucket=arguments.bucket,
            prefix=arguments.prefix,
        )
    except MaintenanceError as error:
        log.error("%s: %s", type(error).__name__, error)
        return 1
    print(
        f"{result.table}: {result.rows} rows, {result.inline_bytes / MIB:.1f} MiB inline, "
        f"{result.offloaded_rows} offloaded ({result.uploaded_objects} objects uploaded); "
        f"digests in {result.expected_table}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
