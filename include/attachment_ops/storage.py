"""S3 client, error classification and retries, shared by every stage that touches the bucket.

botocore 1.36 and newer add CRC32 request checksums by default, which several S3-compatible
servers reject. The client here sends checksums only when an operation requires one, and the
package adds its own SHA-256 (``ChecksumSHA256``) to every upload, so the server checks the body
on receipt and returns the digest on ``HEAD`` with ``ChecksumMode=ENABLED``.
"""

from __future__ import annotations

import base64
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from attachment_ops.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger(__name__)
T = TypeVar("T")

# Error codes after which a retry cannot succeed, each with the cause to report.
PERMANENT_CODES = {
    "AccessDenied": "the credentials lack permission for this bucket or key",
    "AllAccessDisabled": "access to the bucket is disabled",
    "InvalidAccessKeyId": "the access key id is unknown to the server",
    "SignatureDoesNotMatch": "the secret key is wrong, or the region does not match the server",
    "NoSuchBucket": "the bucket does not exist",
    "InvalidBucketName": "the bucket name is invalid",
    "AuthorizationHeaderMalformed": "the region in the connection does not match the bucket's region",
    "PermanentRedirect": "the bucket lives at another endpoint or region",
    "InvalidRequest": "the server rejected the request",
    "InvalidDigest": "the checksum header is malformed",
    "EntityTooLarge": "the object is larger than the server accepts in one request",
    "KMS.NotFoundException": "the KMS key does not exist",
}
# BadDigest and XAmzContentSHA256Mismatch mean the body was damaged on the way: a retry resends it.
TRANSIENT_CODES = {
    "BadDigest",
    "XAmzContentSHA256Mismatch",
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "OperationAborted",
    "503",
    "500",
    "502",
    "504",
}


@dataclass(frozen=True)
class S3Settings:
    """Endpoint, region, addressing style and credentials of the S3 connection."""

    endpoint_url: str | None = None
    region_name: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    addressing_style: str = "path"
    verify: bool | str = True

    def __repr__(self) -> str:
        # Never show the secret in logs or tracebacks.
        return (
            f"S3Settings(endpoint_url={self.endpoint_url!r}, region_name={self.region_name!r}, "
            f"addressing_style={self.addressing_style!r})"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter."""

    max_attempts: int = 5
    base_seconds: float = 0.5
    max_seconds: float = 20.0

    @classmethod
    def from_storage_config(cls, storage: dict[str, Any]) -> RetryPolicy:
        return cls(
            max_attempts=storage["max_attempts"],
            base_seconds=storage["backoff_base_seconds"],
            max_seconds=storage["backoff_max_seconds"],
        )

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1)))


def make_s3_client(settings: S3Settings, storage: dict[str, Any] | None = None) -> BaseClient:
    """Build a boto3 S3 client with pinned checksum behaviour and no hidden retries.

    botocore's own retries are off (one attempt) so that ``call_with_retries`` decides, logs and
    counts every retry.
    """
    import boto3
    from botocore.config import Config

    storage = storage or {}
    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=storage.get("connect_timeout_seconds", 10),
        read_timeout=storage.get("read_timeout_seconds", 120),
        s3={"addressing_style": settings.addressing_style},
        max_pool_connections=32,
        signature_version="s3v4",
    )
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        region_name=settings.region_name or "us-east-1",
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config, verify=settings.verify)


def sha256_base64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def base64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def error_code(error: BaseException) -> str | None:
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    if code:
        return str(code)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(status) if status else None


def http_status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def classify_s3_error(error: BaseException, what: str, bucket: str | None = None) -> Exception:
    """Turn a botocore exception into TransientError or PermanentError naming ``what`` and the fix."""
    from botocore import exceptions as bc

    where = f" (bucket {bucket!r})" if bucket else ""
    if isinstance(error, bc.ClientError):
        code = error_code(error) or "unknown"
        status = http_status(error)
        message = error.response.get("Error", {}).get("Message", "")
        if code in PERMANENT_CODES:
            return PermanentError(
                f"S3 {what}{where} failed with {code}: {PERMANENT_CODES[code]}. {message}".strip()
            )
        if code in TRANSIENT_CODES or (status is not None and (status >= 500 or status == 429)):
            return TransientError(f"S3 {what}{where} failed with {code} (HTTP {status}): {message}".strip())
        if status == 403:
            return PermanentError(f"S3 {what}{where} was denied (HTTP 403, {code}); check the credentials.")
        if status == 404:
            return PermanentError(f"S3 {what}{where} found nothing (HTTP 404, {code}).")
        return PermanentError(f"S3 {what}{where} failed with {code} (HTTP {status}): {message}".strip())
    if isinstance(error, bc.EndpointConnectionError):
        return TransientError(
            f"S3 {what}{where}: could not connect to the endpoint ({error}). Check endpoint_url in the "
            "connection's extra and that the server is up."
        )
    if isinstance(error, bc.NoCredentialsError | bc.PartialCredentialsError):
        return PermanentError(
            f"S3 {what}{where}: no credentials. Set login and password (access key id and secret) on "
            "the S3 connection."
        )
    if isinstance(
        error,
        bc.ConnectionClosedError
        | bc.ReadTimeoutError
        | bc.ConnectTimeoutError
        | bc.ResponseStreamingError
        | bc.IncompleteReadError
        | bc.HTTPClientError,
    ):
        return TransientError(f"S3 {what}{where}: {type(error).__name__}: {error}")
    if isinstance(error, ConnectionError | TimeoutError | OSError):
        return TransientError(f"S3 {what}{where}: {type(error).__name__}: {error}")
    return PermanentError(f"S3 {what}{where}: unexpected {type(error).__name__}: {error}")


def require_bucket(client: BaseClient, bucket: str, policy: RetryPolicy) -> None:
    """Check that ``bucket`` exists before any upload.

    Some S3-compatible servers (SeaweedFS among them) create a missing bucket on the first PUT,
    so a typo in the bucket name would silently scatter objects into a new bucket.

    :raises PermanentError: when the bucket is missing or access to it is denied.
    """
    from botocore import exceptions as bc

    def head() -> None:
        try:
            client.head_bucket(Bucket=bucket)
        except bc.ClientError as error:
            if http_status(error) == 404 or error_code(error) in ("404", "NoSuchBucket"):
                raise PermanentError(
                    f"S3 bucket {bucket!r} does not exist (NoSuchBucket): the bucket does not exist. Create it, "
                    "or set storage.bucket in the maintenance_config Variable to an existing bucket."
                ) from error
            raise

    call_with_retries(head, "check bucket", policy, bucket=bucket)


def call_with_retries(
    operation: Callable[[], T],
    what: str,
    policy: RetryPolicy,
    *,
    bucket: str | None = None,
    on_retry: Callable[[int, Exception], None] | None = None,
) -> T:
    """Run ``operation``; retry transient S3 failures with capped exponential backoff and jitter.

    :raises PermanentError: at once on a permanent failure.
    :raises TransientError: when the last attempt also failed.
    """
    from botocore import exceptions as bc

    attempt = 0
    while True:
        attempt += 1
        try:
            return operation()
        except (bc.BotoCoreError, bc.ClientError, ConnectionError, TimeoutError) as error:
            classified = classify_s3_error(error, what, bucket)
        except TransientError as error:
            classified = error
        except PermanentError:
            raise
        if isinstance(classified, PermanentError) or attempt >= policy.max_attempts:
            raise classified
        delay = policy.delay(attempt)
        log.warning(
            "Retrying %s in %.2f s (attempt %d of %d): %s",
            what,
            delay,
            attempt + 1,
            policy.max_attempts,
            classified,
        )
        if on_retry:
            on_retry(attempt, classified)
        time.sleep(delay)
