"""S3 faults injected by the proxy into the offload, verification and restore stages.

Each random point runs the whole chain (offload, verification with every object re-read,
restore of a random half) with the fault armed in every stage that sends the targeted request,
after a random number of matching requests. Transient faults must be absorbed by the retries
with nothing lost. Permanent ones must stop the stage at once with a message naming the cause,
and a rerun without the fault must complete.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import pytest

from attachment_ops.errors import PermanentError, TransientError, VerificationError
from attachment_ops.offload.restore import restore_rows
from attachment_ops.storage import S3Settings, make_s3_client
from attachment_ops.verification import verify
from tests.faults.s3_proxy import (
    INTERNAL_ERROR_BODY,
    NO_SUCH_BUCKET_BODY,
    SLOW_DOWN_BODY,
    FaultProxy,
    Rule,
    Signer,
)
from tests.offload.helpers import run_offload
from tests.reliability.dataset import Dataset, assert_intact, audit, offload_until_done, random_rows
from tests.reliability.summary import RECORD

SMALL_ROWS = 12
ROWS = SMALL_ROWS + 1
READ_TIMEOUT_SECONDS = 1
SLOWER_THAN_TIMEOUT = 1.3
BATCH_ROWS = 6
# Requests of each kind a stage sends at least, for 12 small rows and one of three parts, when
# the restore takes half of the rows: the fault fires after a random number below this. The
# offload's only HEAD is the bucket check of each batch, because it confirms each upload from the
# checksum in the upload's response.
MATCHING_REQUESTS = {
    ("offload", "PUT"): SMALL_ROWS + 3,
    ("offload", "HEAD"): -(-ROWS // BATCH_ROWS),
    ("offload", "POST"): 2,
    ("verify", "HEAD"): ROWS,
    ("verify", "GET"): ROWS,
    ("restore", "GET"): ROWS // 2,
}
STAGES = ("offload", "verify", "restore")


@dataclass(frozen=True)
class Fault:
    """A kind of fault: the proxy rule's settings and the (stage, method) pairs it targets."""

    rule: dict[str, Any]
    targets: tuple[tuple[str, str], ...]


TRANSIENT_FAULTS = {
    "503 SlowDown": Fault(
        {"action": "status", "status": 503, "body": SLOW_DOWN_BODY},
        (("offload", "PUT"), ("verify", "HEAD"), ("restore", "GET")),
    ),
    "503 without error code": Fault(
        {"action": "status", "status": 503, "body": b""},
        (("offload", "HEAD"), ("verify", "GET"), ("restore", "GET")),
    ),
    "500 InternalError": Fault(
        {"action": "status", "status": 500, "body": INTERNAL_ERROR_BODY},
        (("offload", "POST"), ("verify", "HEAD"), ("restore", "GET")),
    ),
    "connection reset before response": Fault(
        {"action": "reset"}, (("offload", "PUT"), ("verify", "HEAD"), ("restore", "GET"))
    ),
    "connection reset mid request body": Fault({"action": "reset_request"}, (("offload", "PUT"),)),
    "connection reset mid response body": Fault(
        {"action": "reset_mid_body"}, (("verify", "GET"), ("restore", "GET"))
    ),
    "truncated response body": Fault({"action": "truncate"}, (("verify", "GET"), ("restore", "GET"))),
    "response slower than read timeout": Fault(
        {"action": "delay", "seconds": SLOWER_THAN_TIMEOUT},
        (("offload", "PUT"), ("verify", "HEAD"), ("restore", "GET")),
    ),
    "answer after the client gave up": Fault(
        {"action": "delay_response", "seconds": SLOWER_THAN_TIMEOUT},
        (("offload", "PUT"), ("offload", "POST"), ("restore", "GET")),
    ),
}


@pytest.fixture
def fault_proxy() -> Any:
    proxy = FaultProxy(upstream=os.environ["S3_ENDPOINT_URL"]).start()
    yield proxy
    proxy.stop()


def proxied_client(settings: S3Settings, proxy: FaultProxy, dataset: Dataset) -> Any:
    """A client that talks to the proxy, with the storage settings (read timeout) of ``dataset``."""
    return make_s3_client(
        S3Settings(**{**asdict(settings), "endpoint_url": proxy.url}), dataset.config.section("storage")
    )


def arm(proxy: FaultProxy, fault: Fault, stage: str, rng: Any) -> list[Rule]:
    """Arm one rule per target of ``fault`` in ``stage``; each fires 1 or 2 times after a random count."""
    rules = [
        Rule(
            method=method,
            after=rng.randrange(MATCHING_REQUESTS[(target_stage, method)]),
            times=rng.randint(1, 2),
            **fault.rule,
        )
        for target_stage, method in fault.targets
        if target_stage == stage
    ]
    proxy.rules = rules
    return rules


@pytest.mark.parametrize("kind", list(TRANSIENT_FAULTS))
def test_transient_fault_recovers(kind, point, rng, make_dataset, s3_settings, s3_client, fault_proxy):
    fault = TRANSIENT_FAULTS[kind]
    dataset = make_dataset(
        random_rows(rng, ROWS, large=1),
        storage={"read_timeout_seconds": READ_TIMEOUT_SECONDS},
        offload={"batch_rows": BATCH_ROWS},
    )
    client = proxied_client(s3_settings, fault_proxy, dataset)
    fired: dict[str, int] = {}

    rules = arm(fault_proxy, fault, "offload", rng)
    outcomes = offload_until_done(dataset, client, run_id="offload")
    fired["offload"] = sum(rule.fired for rule in rules)
    assert_intact(dataset, s3_client)

    rules = arm(fault_proxy, fault, "verify", rng)
    result = verify(dataset.dsn, client, dataset.config, scope="all", reread_fraction=1.0)
    fired["verify"] = sum(rule.fired for rule in rules)

    chosen = sorted(rng.sample(sorted(dataset.expected), ROWS // 2))
    rules = arm(fault_proxy, fault, "restore", rng)
    restored = restore_rows(dataset.dsn, client, dataset.config, run_id="restore", row_ids=chosen)
    fired["restore"] = sum(rule.fired for rule in rules)
    fault_proxy.rules = []

    RECORD.fault(f"S3 {kind}", sum(fired.values()))
    for stage, method in fault.targets:
        assert fired[stage] >= 1, f"the fault never reached {method} requests of the {stage} stage"
    assert dataset.inline_ids() == chosen
    assert len(outcomes) <= 2
    assert result.objects_ok == ROWS
    assert restored["rows_restored"] == len(chosen)
    assert_intact(dataset, s3_client)


PERMANENT_FAULTS = {
    "wrong credentials mid-run": (
        {"action": "rewrite_auth"},
        r"InvalidAccessKeyId|denied \(HTTP 403",
    ),
    "bucket deleted mid-run": (
        {"action": "status", "status": 404, "body": NO_SUCH_BUCKET_BODY},
        r"NoSuchBucket|HTTP 404",
    ),
}
# Offload and restore stop at the first permanent error, after the requests already in flight on
# their other threads (four per batch), each tried once, plus aborting an unfinished upload.
MAX_REQUESTS_AFTER_PERMANENT = 8
# Verification checks every object before it reports (a deleted bucket makes each one missing),
# so it may send one request per row and the listing.
MAX_VERIFY_REQUESTS_AFTER_PERMANENT = ROWS + 1
MAX_SECONDS_TO_STOP = 10.0


def stopped_at_once(rule: Rule, started: float) -> tuple[int, float]:
    return rule.fired, time.monotonic() - started


@pytest.mark.parametrize("kind", list(PERMANENT_FAULTS))
def test_permanent_fault_stops_fast(kind, point, rng, make_dataset, s3_settings, s3_client, fault_proxy):
    settings, message = PERMANENT_FAULTS[kind]
    dataset = make_dataset(random_rows(rng, ROWS, large=1))
    client = proxied_client(s3_settings, fault_proxy, dataset)
    stops: list[tuple[int, float]] = []

    # The offload sends at least one HEAD per batch, a PUT per small row and per part, and two POSTs.
    rule = Rule(times=-1, after=rng.randrange(1, SMALL_ROWS + 3), **settings)
    fault_proxy.rules = [rule]
    started = time.monotonic()
    with pytest.raises(PermanentError, match=message) as offload_error:
        offload_until_done(dataset, client, run_id="offload")
    stops.append(stopped_at_once(rule, started))
    fault_proxy.rules = []
    assert dataset.bucket in str(offload_error.value)
    assert_intact(dataset, s3_client)
    offload_until_done(dataset, client, run_id="rerun")
    assert_intact(dataset, s3_client)

    rule = Rule(times=-1, after=rng.randrange(0, ROWS), **settings)
    fault_proxy.rules = [rule]
    started = time.monotonic()
    with pytest.raises((PermanentError, VerificationError)):
        verify(dataset.dsn, client, dataset.config, scope="all", reread_fraction=1.0)
    stops.append(stopped_at_once(rule, started))

    rule = Rule(times=-1, after=rng.randrange(0, ROWS // 2), **settings)
    fault_proxy.rules = [rule]
    started = time.monotonic()
    with pytest.raises(PermanentError, match=message):
        restore_rows(dataset.dsn, client, dataset.config, run_id="restore", row_ids=sorted(dataset.expected))
    stops.append(stopped_at_once(rule, started))
    fault_proxy.rules = []
    assert_intact(dataset, s3_client)
    restore_rows(dataset.dsn, client, dataset.config, run_id="restore-rerun", row_ids=dataset.offloaded_ids())

    RECORD.fault(f"S3 {kind}", sum(fired for fired, _ in stops))
    RECORD.maximum(f"S3 {kind}: offload requests rejected", stops[0][0])
    RECORD.maximum(f"S3 {kind}: restore requests rejected", stops[2][0])
    RECORD.maximum(f"S3 {kind}: max seconds to stop", round(max(seconds for _, seconds in stops), 2))
    assert all(fired >= 1 for fired, _ in stops)
    assert stops[0][0] <= MAX_REQUESTS_AFTER_PERMANENT
    assert stops[1][0] <= MAX_VERIFY_REQUESTS_AFTER_PERMANENT
    assert stops[2][0] <= MAX_REQUESTS_AFTER_PERMANENT
    assert max(seconds for _, seconds in stops) <= MAX_SECONDS_TO_STOP
    final = assert_intact(dataset, s3_client)
    assert final.inline == ROWS


def test_transient_errors_exhausted_stay_transient(make_dataset, rng, s3_settings, s3_client, fault_proxy):
    """A fault that outlasts every retry fails the batch as TransientError, with the rows left inline."""
    dataset = make_dataset(random_rows(rng, 4))
    client = proxied_client(s3_settings, fault_proxy, dataset)
    fault_proxy.rules = [Rule("status", method="PUT", times=-1, status=503, body=SLOW_DOWN_BODY)]

    with pytest.raises(TransientError, match="rows failed after 3 attempts each"):
        run_offload(dataset.dsn, client, dataset.config)

    fired = fault_proxy.rules[0].fired
    fault_proxy.rules = []
    RECORD.fault("S3 503 SlowDown on every request", fired)
    assert dataset.inline_ids() == sorted(dataset.expected)
    assert_intact(dataset, s3_client)


def test_late_create_answer_leaves_no_upload(rng, make_dataset, s3_settings, s3_client, fault_proxy):
    dataset = make_dataset(
        random_rows(rng, 1, large=1), storage={"read_timeout_seconds": READ_TIMEOUT_SECONDS}
    )
    client = proxied_client(s3_settings, fault_proxy, dataset)
    fault_proxy.rules = [
        Rule("delay_response", method="POST", path_contains="?uploads", seconds=SLOWER_THAN_TIMEOUT)
    ]

    summary = run_offload(dataset.dsn, client, dataset.config, run_id="offload")

    RECORD.fault("S3 answer to CreateMultipartUpload after the client gave up", fault_proxy.rules[0].fired)
    assert summary["rows_offloaded"] == 1
    assert_intact(dataset, s3_client)
    listing = s3_client.list_multipart_uploads(Bucket=dataset.bucket, Prefix=dataset.config.prefix)
    assert listing.get("Uploads", []) == []


def test_request_body_corrupted_in_transit(point, rng, make_dataset, s3_settings, s3_client, fault_proxy):
    dataset = make_dataset(random_rows(rng, SMALL_ROWS), offload={"batch_rows": BATCH_ROWS})
    client = proxied_client(s3_settings, fault_proxy, dataset)
    rule = Rule("corrupt_request", method="PUT", after=rng.randrange(SMALL_ROWS))
    fault_proxy.rules = [rule]

    try:
        offload_until_done(dataset, client, run_id="offload")
        handling = "retried"
    except PermanentError as error:
        handling = f"PermanentError: {error}".replace(dataset.bucket, "<bucket>")
    fault_proxy.rules = []
    assert_intact(dataset, s3_client)
    offload_until_done(dataset, client, run_id="rerun")

    RECORD.fault("S3 request body corrupted in transit", rule.fired)
    RECORD.figure("S3 request body corrupted in transit: handling", handling[:200])
    assert rule.fired == 1
    final = assert_intact(dataset, s3_client)
    assert final.offloaded == SMALL_ROWS


@pytest.fixture
def signing_proxy(s3_settings) -> Any:
    proxy = FaultProxy(
        upstream=os.environ["S3_ENDPOINT_URL"],
        resign=Signer(s3_settings.access_key_id, s3_settings.secret_access_key),
    ).start()
    yield proxy
    proxy.stop()


def test_read_back_catches_lying_server(point, rng, make_dataset, s3_settings, s3_client, signing_proxy):
    """A server that stores a damaged body but returns the client's own checksum is caught by read-back."""
    dataset = make_dataset(
        random_rows(rng, SMALL_ROWS), storage={"verify_read_back": True}, offload={"batch_rows": BATCH_ROWS}
    )
    client = proxied_client(s3_settings, signing_proxy, dataset)
    rule = Rule("lying_server", method="PUT", after=rng.randrange(SMALL_ROWS))
    signing_proxy.rules = [rule]

    outcomes = offload_until_done(dataset, client, run_id="offload")
    signing_proxy.rules = []

    RECORD.fault("S3 server returning an unchecked checksum (verify_read_back on)", rule.fired)
    assert rule.fired == 1
    assert outcomes[-1]["inline_rows"] == 0
    final = assert_intact(dataset, s3_client)
    assert final.offloaded == SMALL_ROWS


def test_default_catches_lying_server(rng, make_dataset, s3_settings, s3_client, signing_proxy):
    dataset = make_dataset(random_rows(rng, 4), offload={"batch_rows": BATCH_ROWS})
    client = proxied_client(s3_settings, signing_proxy, dataset)
    signing_proxy.rules = [Rule("lying_server", method="PUT", after=1)]

    offload_until_done(dataset, client, run_id="offload")
    signing_proxy.rules = []

    RECORD.fault("S3 server returning an unchecked checksum (verify_read_back off)")
    result = audit(dataset, s3_client, record=False)
    assert result.corrupted == []
