"""S3 checks: credentials and bucket, then a small probe object written, read back, compared and deleted.

Failures are explained in plain words with the fix: a wrong endpoint, region, addressing style,
credentials or bucket name each produce their own message.
"""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from attachment_ops.config import MaintenanceConfig
from attachment_ops.errors import PermanentError, TransientError
from attachment_ops.preflight.disk import describe_source
from attachment_ops.preflight.model import CheckResult, Status
from attachment_ops.storage import S3Settings, classify_s3_error, error_code, http_status, sha256_base64

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

GROUP = "s3"
T = TypeVar("T")
# Preflight retries a transient error a little, so that one 503 does not stop a maintenance run.
_ATTEMPTS = 3
_BACKOFF_SECONDS = 0.3


@dataclass(frozen=True)
class S3Explanation:
    """A failed S3 call in plain words: what is wrong, the fix, and the package error class."""

    message: str
    hint: str
    error_class: str


def _describe_target(settings: S3Settings, bucket: str) -> str:
    return (
        f"bucket {bucket!r} at {settings.endpoint_url or 'the AWS default endpoint'} "
        f"(region {settings.region_name or 'us-east-1'}, {settings.addressing_style}-style addressing)"
    )


def _walk(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def explain_s3_error(error: BaseException, settings: S3Settings, bucket: str, action: str) -> S3Explanation:
    """Explain a botocore exception from ``action`` on ``bucket``."""
    from botocore import exceptions as bc

    classified = classify_s3_error(error, action, bucket)
    error_class = type(classified).__name__
    target = _describe_target(settings, bucket)
    endpoint_host = urlsplit(settings.endpoint_url or "").hostname or ""

    if isinstance(error, bc.EndpointConnectionError | bc.ConnectTimeoutError | bc.ReadTimeoutError):
        chain = _walk(error)
        if isinstance(error, bc.ConnectTimeoutError | bc.ReadTimeoutError):
            reason = "the endpoint did not answer in time"
        elif any(isinstance(item, socket.gaierror) for item in chain):
            reason = "the host name does not resolve"
        elif any(isinstance(item, ConnectionRefusedError) for item in chain):
            reason = "the connection was refused (nothing listens on that host and port)"
        else:
            reason = "could not connect"
        hint = "Check endpoint_url in the S3 connection's extra: scheme, host and port of the S3 server."
        if settings.addressing_style == "virtual" and (_is_ip(endpoint_host) or endpoint_host == "localhost"):
            hint = (
                "Virtual-hosted addressing puts the bucket into the host name, which cannot work with an IP "
                "address or localhost endpoint: set the addressing style to path."
            )
        return S3Explanation(f"{action} on {target}: {reason}", hint, error_class)

    if isinstance(error, bc.NoCredentialsError | bc.PartialCredentialsError):
        return S3Explanation(
            f"{action} on {target}: no credentials",
            "Set login and password (access key id and secret key) on the S3 connection.",
            error_class,
        )

    if not isinstance(error, bc.ClientError):
        return S3Explanation(
            f"{action} on {target}: {classified}", "Check the S3 connection settings.", error_class
        )

    code = error_code(error) or ""
    status = http_status(error)
    server_message = error.response.get("Error", {}).get("Message", "")
    bucket_region = (
        error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
    )
    said = f" The server said: {server_message}" if server_message else ""
    explanations = {
        "InvalidAccessKeyId": (
            "wrong credentials: the server does not know the access key id",
            "Fix login (access key id) and password (secret key) on the S3 connection.",
        ),
        "SignatureDoesNotMatch": (
            "the server rejected the request signature: the secret key is wrong, or the region "
            f"{settings.region_name or 'us-east-1'} is not the one the server signs with",
            "Fix the secret key (password) on the S3 connection. If it is right, set region_name in its extra "
            "to the server's region.",
        ),
        "AuthorizationHeaderMalformed": (
            f"wrong region: the request was signed for {settings.region_name or 'us-east-1'}"
            + (f" but the bucket is in {bucket_region}" if bucket_region else " but the bucket is elsewhere"),
            "Set region_name in the S3 connection's extra to the bucket's region.",
        ),
        "PermanentRedirect": (
            "the bucket lives at another endpoint or region"
            + (f" ({bucket_region})" if bucket_region else ""),
            "Set region_name (and endpoint_url) to the bucket's region, or switch the addressing style.",
        ),
        "NoSuchBucket": (
            "the bucket does not exist at this endpoint",
            "Create the bucket or fix storage.bucket. If it exists, check endpoint_url and the addressing "
            f"style (configured: {settings.addressing_style}).",
        ),
        "AccessDenied": (
            "access denied: the credentials are valid but lack permission",
            "Grant s3:ListBucket on the bucket and s3:PutObject, s3:GetObject, s3:DeleteObject on its keys.",
        ),
        "InvalidBucketName": (
            "the bucket name is invalid",
            "Fix storage.bucket: 3-63 characters of lower-case letters, digits, dots and hyphens.",
        ),
    }
    # HEAD responses have no body, so the status code is the only clue.
    if not code or code == str(status):
        if status == 404:
            code = "NoSuchBucket"
        elif status == 301:
            code = "PermanentRedirect"
    if code in explanations:
        reason, hint = explanations[code]
        return S3Explanation(f"{action} on {target}: {reason} ({code}).{said}".rstrip(), hint, error_class)
    if status == 403:
        return S3Explanation(
            f"{action} on {target}: denied (HTTP 403): wrong credentials, or no permission on the bucket",
            "Check login and password on the S3 connection and the key's permissions on the bucket.",
            error_class,
        )
    if status == 400:
        return S3Explanation(
            f"{action} on {target}: bad request (HTTP 400, {code}): usually a wrong region or addressing style.{said}",
            "Check region_name and the addressing style in the S3 connection's extra.",
            error_class,
        )
    return S3Explanation(
        f"{action} on {target}: {classified}",
        "See the server's message and fix the setting it names.",
        error_class,
    )


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _call(operation: Callable[[], T], what: str, bucket: str) -> T:
    """Run an S3 call, retrying transient failures a few times with a short jittered backoff."""
    from botocore import exceptions as bc

    attempt = 1
    while True:
        try:
            return operation()
        except (bc.BotoCoreError, bc.ClientError) as error:
            if attempt == _ATTEMPTS or not isinstance(classify_s3_error(error, what, bucket), TransientError):
                raise
            # Endpoint errors count as transient, but a refused connection does not heal in a second.
            if isinstance(error, bc.EndpointConnectionError):
                raise
            delay = random.uniform(0, _BACKOFF_SECONDS * 2 ** (attempt - 1))
            log.warning("Retrying S3 %s on bucket %s in %.2f s: %s", what, bucket, delay, error)
            time.sleep(delay)
            attempt += 1


def check_s3(
    settings: S3Settings, config: MaintenanceConfig, *, client: BaseClient | None = None
) -> list[CheckResult]:
    """Check credentials and bucket with HEAD, then write, read back, compare and delete a probe object.

    The probe key is ``<preflight.s3_probe_prefix><uuid>.probe``. The upload carries its SHA-256
    (``ChecksumSHA256``), so the server verifies the body too. S3 errors become FAIL rows, not
    exceptions.
    """
    from attachment_ops.storage import make_s3_client

    preflight = config.section("preflight")
    bucket = config.bucket
    if client is None:
        timeout = preflight["s3_timeout_seconds"]
        try:
            client = make_s3_client(
                settings, {"connect_timeout_seconds": timeout, "read_timeout_seconds": timeout}
            )
        except ValueError as error:
            # botocore rejects a malformed endpoint_url while it builds the client.
            log.warning("S3 preflight could not build a client: %s", error)
            explanation = S3Explanation(
                f"invalid S3 settings for {_describe_target(settings, bucket)}: {error}",
                "Fix endpoint_url in the S3 connection's extra: a full URL such as http://127.0.0.1:9000.",
                "ConfigurationError",
            )
            return [_failure("s3 credentials and bucket", explanation, {"bucket": bucket})]
    bucket_result = _bucket_result(client, settings, bucket)
    if bucket_result.status is not Status.PASS:
        return [bucket_result]
    return [bucket_result, _probe_result(client, settings, bucket, preflight["s3_probe_prefix"])]


def _failure(name: str, explanation: S3Explanation, metrics: dict[str, Any]) -> CheckResult:
    return CheckResult(
        group=GROUP,
        name=name,
        status=Status.FAIL,
        value=explanation.message,
        threshold="must succeed",
        source="the S3 connection; storage.bucket",
        hint=explanation.hint,
        metrics=metrics,
        error=explanation.error_class,
    )


def _bucket_result(client: BaseClient, settings: S3Settings, bucket: str) -> CheckResult:
    from botocore import exceptions as bc

    name = "s3 credentials and bucket"
    metrics = {
        "bucket": bucket,
        "endpoint_url": settings.endpoint_url,
        "region": settings.region_name,
        "addressing_style": settings.addressing_style,
    }
    started = time.monotonic()
    try:
        _call(lambda: client.head_bucket(Bucket=bucket), "HEAD", bucket)
    except bc.ClientError as error:
        # HEAD has no body, so ask again with a GET whose error body names the cause.
        code = error_code(error) or ""
        if http_status(error) in (400, 403) and (not code or code.isdigit()):
            try:
                client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            except (bc.BotoCoreError, bc.ClientError) as detailed:
                error = detailed
        explanation = explain_s3_error(error, settings, bucket, "HEAD")
        log.warning("S3 preflight failed: %s", explanation.message)
        return _failure(name, explanation, metrics | {"code": error_code(error)})
    except bc.BotoCoreError as error:
        explanation = explain_s3_error(error, settings, bucket, "HEAD")
        log.warning("S3 preflight failed: %s", explanation.message)
        return _failure(name, explanation, metrics)
    elapsed_ms = (time.monotonic() - started) * 1000
    return CheckResult(
        group=GROUP,
        name=name,
        status=Status.PASS,
        value=f"{_describe_target(settings, bucket)} answered HEAD in {elapsed_ms:.0f} ms",
        threshold="must succeed",
        source="the S3 connection; storage.bucket",
        metrics=metrics | {"elapsed_ms": round(elapsed_ms, 1)},
    )


def _probe_result(client: BaseClient, settings: S3Settings, bucket: str, prefix: str) -> CheckResult:
    from botocore import exceptions as bc

    name = "s3 write, read, delete"
    key = f"{prefix}{uuid.uuid4().hex}.probe"
    body = f"attachment_ops preflight probe {key} {time.time():.3f}\n".encode()
    digest = hashlib.sha256(body).hexdigest()
    metrics: dict[str, Any] = {"bucket": bucket, "key": key, "size_bytes": len(body)}
    started = time.monotonic()
    action = "PUT probe object"
    written = False
    try:
        _call(
            lambda: client.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ChecksumSHA256=sha256_base64(digest),
                ContentType="text/plain",
            ),
            action,
            bucket,
        )
        written = True
        action = "GET probe object"
        response = _call(lambda: client.get_object(Bucket=bucket, Key=key), action, bucket)
        read_back = response["Body"].read()
        action = "DELETE probe object"
        _call(lambda: client.delete_object(Bucket=bucket, Key=key), action, bucket)
        written = False
    except (bc.BotoCoreError, bc.ClientError) as error:
        explanation = explain_s3_error(error, settings, bucket, action)
        log.warning("S3 preflight probe failed: %s", explanation.message)
        if written:
            explanation = S3Explanation(
                f"{explanation.message}; probe object {key!r} may be left behind",
                explanation.hint,
                explanation.error_class,
            )
        return _failure(name, explanation, metrics)
    elapsed_ms = (time.monotonic() - started) * 1000
    metrics["elapsed_ms"] = round(elapsed_ms, 1)
    read_digest = hashlib.sha256(read_back).hexdigest()
    if read_digest != digest:
        return CheckResult(
            group=GROUP,
            name=name,
            status=Status.FAIL,
            value=f"read back {len(read_back)} bytes with SHA-256 {read_digest[:16]}..., wrote {len(body)} "
            f"bytes with SHA-256 {digest[:16]}...",
            threshold="read-back SHA-256 equals the written one",
            source="the S3 connection",
            hint="The server or a proxy changes object bodies: check for a transforming proxy or a broken gateway.",
            metrics=metrics,
            error=PermanentError.__name__,
        )
    return CheckResult(
        group=GROUP,
        name=name,
        status=Status.PASS,
        value=f"{len(body)}-byte probe under {prefix!r} written with SHA-256, read back equal, deleted in "
        f"{elapsed_ms:.0f} ms",
        threshold="read-back SHA-256 equals the written one",
        source=describe_source("preflight", "s3_probe_prefix", prefix),
        metrics=metrics,
    )
