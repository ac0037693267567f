from __future__ import annotations

import dataclasses
import socket
from typing import Any

import pytest

from attachment_ops.preflight.model import Status
from attachment_ops.preflight.s3 import check_s3, explain_s3_error
from attachment_ops.storage import S3Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_healthy_bucket_passes(
    s3_settings: S3Settings, s3_client: Any, bucket: str, make_config: Any
) -> None:
    config = make_config(storage={"bucket": bucket}, preflight={"s3_probe_prefix": "_probe-test/"})
    results = check_s3(s3_settings, config)
    assert [(result.name, result.status) for result in results] == [
        ("s3 credentials and bucket", Status.PASS),
        ("s3 write, read, delete", Status.PASS),
    ]
    assert results[1].metrics["key"].startswith("_probe-test/")
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"access_key_id": "no-such-key"}, "InvalidAccessKeyId", "wrong credentials"),
        ({"secret_access_key": "wrong-secret"}, "SignatureDoesNotMatch", "the secret key is wrong"),
    ],
    ids=["access-key", "secret-key"],
)
def test_wrong_credentials_fail(
    s3_settings: S3Settings, bucket: str, make_config: Any, change: dict[str, str], code: str, words: str
) -> None:
    settings = dataclasses.replace(s3_settings, **change)
    results = check_s3(settings, make_config(storage={"bucket": bucket}))
    assert len(results) == 1
    assert results[0].status is Status.FAIL
    assert results[0].error == "PermanentError"
    assert results[0].metrics["code"] == code
    assert words in results[0].value
    assert results[0].hint.startswith("Fix ")


def test_missing_bucket_fails(s3_settings: S3Settings, make_config: Any) -> None:
    results = check_s3(s3_settings, make_config(storage={"bucket": "preflight-absent-bucket"}))
    assert len(results) == 1
    assert results[0].status is Status.FAIL
    assert results[0].error == "PermanentError"
    assert results[0].value.startswith("HEAD on bucket 'preflight-absent-bucket' at ")
    assert "the bucket does not exist at this endpoint (NoSuchBucket)" in results[0].value
    assert results[0].hint.startswith("Create the bucket or fix storage.bucket")


def test_refused_endpoint_fails(s3_settings: S3Settings, make_config: Any) -> None:
    settings = dataclasses.replace(s3_settings, endpoint_url=f"http://127.0.0.1:{free_port()}")
    results = check_s3(settings, make_config(preflight={"s3_timeout_seconds": 2}))
    assert results[0].status is Status.FAIL
    assert results[0].error == "TransientError"
    assert "the connection was refused (nothing listens on that host and port)" in results[0].value
    assert results[0].hint.startswith("Check endpoint_url")


def client_error(
    code: str, status: int, message: str = "", headers: dict[str, str] | None = None
) -> Exception:
    from botocore.exceptions import ClientError

    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
    }
    return ClientError(response, "HeadBucket")


SETTINGS = S3Settings(endpoint_url="http://127.0.0.1:9000", region_name="us-east-1")


@pytest.mark.parametrize(
    ("error", "settings", "reason", "hint"),
    [
        (
            client_error(
                "AuthorizationHeaderMalformed",
                400,
                "region 'us-east-1' is wrong; expecting 'eu-west-1'",
                {"x-amz-bucket-region": "eu-west-1"},
            ),
            SETTINGS,
            "wrong region: the request was signed for us-east-1 but the bucket is in eu-west-1",
            "Set region_name",
        ),
        (
            client_error("301", 301, headers={"x-amz-bucket-region": "ap-south-1"}),
            SETTINGS,
            "the bucket lives at another endpoint or region (ap-south-1) (PermanentRedirect)",
            "Set region_name (and endpoint_url)",
        ),
        (
            client_error("404", 404),
            SETTINGS,
            "the bucket does not exist at this endpoint (NoSuchBucket)",
            "Create",
        ),
        (
            client_error("400", 400),
            SETTINGS,
            "bad request (HTTP 400, 400): usually a wrong region or addressing style",
            "Check region_name and the addressing style",
        ),
        (
            client_error("AccessDenied", 403),
            SETTINGS,
            "access denied: the credentials are valid but lack permission",
            "Grant s3:ListBucket",
        ),
    ],
    ids=["region-header", "redirect", "head-404", "head-400", "access-denied"],
)
def test_explain_client_errors(error: Exception, settings: S3Settings, reason: str, hint: str) -> None:
    explanation = explain_s3_error(error, settings, "b", "HEAD")
    assert reason in explanation.message
    assert explanation.hint.startswith(hint)
    assert explanation.error_class == "PermanentError"


def test_explain_virtual_style_on_ip() -> None:
    from botocore.exceptions import EndpointConnectionError

    settings = dataclasses.replace(SETTINGS, addressing_style="virtual")
    error = EndpointConnectionError(endpoint_url="http://b.127.0.0.1:9000/")
    explanation = explain_s3_error(error, settings, "b", "HEAD")
    assert explanation.hint.startswith("Virtual-hosted addressing puts the bucket into the host name")
    assert explanation.error_class == "TransientError"
