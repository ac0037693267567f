"""Object keys, upload headers and the checks that prove an object contains the bytes that were read."""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from botocore.client import BaseClient

from attachment_ops.storage import RetryPolicy, call_with_retries

READ_CHUNK_BYTES = 1024 * 1024


def object_key(prefix: str, row_id: int, sha256_hex: str) -> str:
    """Return the key of one row's content: deterministic per row and content.

    A retry of the same row and content writes the same key, so it can only overwrite its own
    earlier attempt. Two rows with identical content get different keys, so restoring or
    deleting one never touches the other's object.
    """
    return f"{prefix}{row_id}/{sha256_hex}"


MAX_FILENAME_BYTES = 255


def _shorten_filename(name: str, max_bytes: int = MAX_FILENAME_BYTES) -> str:
    """Cut ``name`` to at most ``max_bytes`` of UTF-8, keeping a short extension."""
    if len(name.encode("utf-8")) <= max_bytes:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension.encode("utf-8")) > 16:
        stem, extension = name, ""
    suffix = f".{extension}" if extension else ""
    room = max_bytes - len(suffix.encode("utf-8"))
    shortened = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
    return shortened + suffix


def content_disposition(filename: str | None) -> str | None:
    """Build an RFC 6266 ``attachment`` header that carries any filename as ASCII.

    The plain ``filename`` parameter gets an ASCII fallback; ``filename*`` carries the original
    name percent-encoded in UTF-8 (RFC 8187). Control characters, including newlines, are
    dropped, and a path is cut to its last segment, as a browser would save it. Names longer
    than 255 UTF-8 bytes (the usual file system limit) are shortened, keeping the extension, so
    the header stays far below Amazon S3's 8 KB limit on request headers.
    """
    if filename is None:
        return None
    cleaned = "".join(ch for ch in filename if unicodedata.category(ch)[0] != "C")
    cleaned = cleaned.replace("\\", "/").rsplit("/", 1)[-1].strip() or "attachment"
    if cleaned in (".", ".."):
        cleaned = "attachment"
    cleaned = _shorten_filename(cleaned)
    fallback = unicodedata.normalize("NFKD", cleaned).encode("ascii", "ignore").decode("ascii")
    fallback = re.sub(r'["%;\\]', "_", fallback).strip() or "attachment"
    fallback = fallback[:150]
    encoded = quote(cleaned, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def content_type_header(value: str | None) -> str:
    """Return the stored content type when it looks like ``type/subtype``, else a safe default.

    Only printable ASCII passes: a carriage return or any other control character would make
    botocore reject the header, and the row would fail on every attempt.
    """
    if value is None:
        return "application/octet-stream"
    stripped = value.strip()
    printable = all(" " <= ch <= "~" for ch in stripped)
    if printable and re.fullmatch(r"[A-Za-z0-9][\w.+-]*/[\w.+-]+(\s*;.*)?", stripped):
        return stripped
    return "application/octet-stream"


def composite_sha256(part_digests: list[bytes]) -> str:
    """Return the checksum S3 reports for a multipart upload: SHA-256 of the part digests, ``-N``."""
    combined = hashlib.sha256(b"".join(part_digests)).digest()
    return f"{base64.b64encode(combined).decode('ascii')}-{len(part_digests)}"


def hash_object(client: BaseClient, bucket: str, key: str, policy: RetryPolicy) -> tuple[int, str]:
    """Read an object back in chunks and return its size and SHA-256 hex (memory stays one chunk)."""

    def read() -> tuple[int, str]:
        response = client.get_object(Bucket=bucket, Key=key)
        digest = hashlib.sha256()
        size = 0
        for chunk in response["Body"].iter_chunks(READ_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    return call_with_retries(read, f"read back {key}", policy, bucket=bucket)


def verify_object(
    client: BaseClient,
    bucket: str,
    key: str,
    *,
    size: int,
    sha256_hex: str,
    expected_checksum: str,
    policy: RetryPolicy,
    always_read_back: bool = False,
    upload_checksum: str | None = None,
) -> str:
    """Confirm that ``key`` contains exactly ``size`` bytes with SHA-256 ``sha256_hex``.

    Uses the server's stored checksum (``expected_checksum``: base64 SHA-256, or the composite
    ``…-N`` form for multipart) when HEAD returns one; otherwise, or with ``always_read_back``,
    reads the object back and hashes it. An ETag is never trusted as a content hash.

    ``upload_checksum`` is the checksum the upload's response returned. S3 computes it from the
    body it received and rejects a body that does not match the checksum sent (BadDigest), so a
    returned value equal to ``expected_checksum`` confirms the stored bytes without a HEAD.

    :returns: how it was verified: ``"upload_checksum"``, ``"checksum"`` or ``"read_back"``.
    :raises VerificationError: when the size or the checksum differs.
    """
    from attachment_ops.errors import VerificationError

    if upload_checksum is not None and upload_checksum == expected_checksum and not always_read_back:
        return "upload_checksum"
    head: dict[str, Any] = call_with_retries(
        lambda: client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"),
        f"HEAD {key}",
        policy,
        bucket=bucket,
    )
    stored_size = head.get("ContentLength")
    if stored_size != size:
        raise VerificationError(f"Object {key} has {stored_size} bytes, expected {size}.")
    stored = head.get("ChecksumSHA256")
    # A server may report a full-object checksum for a multipart upload (or the reverse); when
    # the two forms differ, only a read-back can decide.
    same_form = stored is not None and ("-" in stored) == ("-" in expected_checksum)
    if same_form and not always_read_back:
        if stored != expected_checksum:
            raise VerificationError(
                f"Object {key} has SHA-256 checksum {stored}, expected {expected_checksum}."
            )
        return "checksum"
    read_size, read_hex = hash_object(client, bucket, key, policy)
    if read_size != size or read_hex != sha256_hex:
        raise VerificationError(
            f"Object {key} read back as {read_size} bytes with SHA-256 {read_hex}, expected {size} bytes "
            f"with {sha256_hex}."
        )
    return "read_back"
