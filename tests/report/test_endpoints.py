from __future__ import annotations

import statistics

import pytest

from attachment_ops.errors import ConfigurationError
from attachment_ops.report.endpoints import (
    EndpointSpec,
    MeasurementSettings,
    Target,
    parse_endpoints,
    proxy_overhead,
    run_http_benchmark,
)
from attachment_ops.report.stats import percentile_nearest_rank
from tests.report.bench_server import BASIC_SECRET, BASIC_USER, BEARER_SECRET, gzip_body


def measure(targets, *specs, **settings):
    values = {"warmup": 2, "samples": 12, "timeout_seconds": 5.0, **settings}
    return run_http_benchmark(list(specs), targets, MeasurementSettings(**values))["endpoints"]


def direct(server) -> dict[str, Target]:
    return {"api": Target("api", server.base_url)}


@pytest.mark.parametrize("size", [0, 1, 14715, 225_000])
def test_payload_bytes_match_served(bench_server, size):
    spec = EndpointSpec("payload", "/payload", query={"size": size})
    (result,) = measure(direct(bench_server), spec)
    assert result["n"] == 12
    assert result["payload_bytes"] == size
    assert result["payload_bytes_min"] == size
    assert result["wire_bytes"] is None


def test_gzip_bytes_on_wire(bench_server):
    spec = EndpointSpec("compressed", "/gzip", query={"size": 325_000})
    (result,) = measure(direct(bench_server), spec)
    assert result["payload_bytes"] == 325_000
    assert result["wire_bytes"] == len(gzip_body(325_000))
    assert result["content_encoding"] == "gzip"
    assert result["large_payload"] is True


@pytest.mark.parametrize(("size", "flagged"), [(100_000, False), (100_001, True)])
def test_large_payload_threshold(bench_server, size, flagged):
    spec = EndpointSpec("payload", "/payload", query={"size": size})
    (result,) = measure(direct(bench_server), spec, samples=1, warmup=0, large_payload_bytes=100_000)
    assert result["large_payload"] is flagged


def test_statistics_match_recorded_samples(bench_server):
    spec = EndpointSpec("payload", "/payload", query={"size": 2048, "delay_ms": 2})
    (result,) = measure(direct(bench_server), spec)
    samples = result["samples_ms"]
    assert len(samples) == 12
    assert samples == [r["elapsed_ms"] for r in result["requests"]]
    assert result["mean_ms"] == statistics.fmean(samples)
    assert result["min_ms"] == min(samples)
    assert result["max_ms"] == max(samples)
    assert result["p50_ms"] == percentile_nearest_rank(samples, 50)
    assert result["p95_ms"] == percentile_nearest_rank(samples, 95)
    assert result["p99_ms"] == percentile_nearest_rank(samples, 99)
    assert result["stddev_ms"] == statistics.stdev(samples)
    assert result["p95_sufficient"] is False


def test_warmup_and_samples_reach_server(bench_server):
    spec = EndpointSpec("payload", "/payload", query={"size": 10})
    measure(direct(bench_server), spec, warmup=3, samples=5)
    assert len(bench_server.requests_to("/payload")) == 8


def test_one_persistent_connection(bench_server):
    specs = [
        EndpointSpec("first", "/payload", query={"size": 10}),
        EndpointSpec("second", "/gzip", query={"size": 1000}),
    ]
    measure(direct(bench_server), *specs, warmup=1, samples=4)
    ports = {request.client_port for request in bench_server.requests}
    assert len(bench_server.requests) == 10
    assert len(ports) == 1


def test_delays_respected_in_order(bench_server):
    fast = EndpointSpec("fast", "/payload", query={"size": 10})
    slow = EndpointSpec("slow", "/payload", query={"size": 10, "delay_ms": 30})
    fast_result, slow_result = measure(direct(bench_server), fast, slow, warmup=1, samples=5)
    # time.sleep never returns early, so 30 ms is a lower bound; no upper bound is asserted.
    assert slow_result["min_ms"] >= 30.0
    assert slow_result["p50_ms"] > fast_result["p50_ms"]


def test_server_errors_kept_out(bench_server):
    spec = EndpointSpec("sometimes 500", "/every_third_500")
    (result,) = measure(direct(bench_server), spec, warmup=0, samples=12)
    successes = [r for r in result["requests"] if r["status"] == 200]
    assert result["errors"]["http_5xx"] == 4
    assert result["n"] == 8
    assert result["samples_ms"] == [r["elapsed_ms"] for r in successes]
    assert result["status_counts"] == {"200": 8, "500": 4}
    assert result["error_messages"] == {"http_5xx": "HTTP 500"}


@pytest.mark.parametrize(
    ("status", "kind"), [(500, "http_5xx"), (503, "http_5xx"), (404, "http_4xx"), (401, "http_4xx")]
)
def test_error_status_counted(bench_server, status, kind):
    (result,) = measure(
        direct(bench_server), EndpointSpec("failing", f"/status/{status}"), warmup=0, samples=3
    )
    assert result["errors"][kind] == 3
    assert result["n"] == 0
    assert result["samples_ms"] == []
    assert result["mean_ms"] is None


def test_redirect_counts_as_sample(bench_server):
    (result,) = measure(direct(bench_server), EndpointSpec("moved", "/status/302"), warmup=0, samples=2)
    assert result["n"] == 2
    assert result["error_count"] == 0


def test_timeouts_kept_out(bench_server):
    spec = EndpointSpec("every second slow", "/flaky", query={"every": 2, "delay_ms": 1500})
    (result,) = measure(direct(bench_server), spec, warmup=0, samples=6, timeout_seconds=0.3)
    successes = [r for r in result["requests"] if r["error"] is None]
    assert result["errors"]["timeout"] == 3
    assert result["n"] == 3
    assert result["samples_ms"] == [r["elapsed_ms"] for r in successes]
    assert result["aborted"] is False


def test_repeated_timeouts_abort_endpoint(bench_server):
    spec = EndpointSpec("always slow", "/payload", query={"size": 1, "delay_ms": 1500})
    (result,) = measure(
        direct(bench_server), spec, warmup=0, samples=12, timeout_seconds=0.2, abort_after_errors=2
    )
    assert result["errors"]["timeout"] == 2
    assert result["attempted"] == 2
    assert result["aborted"] is True
    assert result["n"] == 0


def test_refused_connections_counted(refused_url):
    targets = {"api": Target("api", refused_url)}
    (result,) = measure(
        targets, EndpointSpec("nothing listens", "/"), warmup=0, samples=5, abort_after_errors=3
    )
    assert result["errors"]["refused"] == 3
    assert result["aborted"] is True
    assert result["samples_ms"] == []


def test_refused_during_warmup_aborts(refused_url):
    targets = {"api": Target("api", refused_url)}
    (result,) = measure(
        targets, EndpointSpec("nothing listens", "/"), warmup=2, samples=5, abort_after_errors=3
    )
    assert result["warmup_errors"]["refused"] == 2
    assert result["errors"]["refused"] == 1
    assert result["attempted"] == 1


@pytest.mark.parametrize(
    "target_kwargs",
    [{"bearer_token": BEARER_SECRET}, {"basic_auth": (BASIC_USER, BASIC_SECRET)}],
    ids=["bearer", "basic"],
)
def test_authentication_is_sent(bench_server, target_kwargs):
    targets = {"api": Target("api", bench_server.base_url, **target_kwargs)}
    (result,) = measure(targets, EndpointSpec("secured", "/secured"), warmup=0, samples=3)
    assert result["n"] == 3
    assert result["auth"] == next(iter(target_kwargs)).split("_")[0]


def test_missing_auth_is_4xx(bench_server):
    (result,) = measure(direct(bench_server), EndpointSpec("secured", "/secured"), warmup=0, samples=2)
    assert result["errors"]["http_4xx"] == 2


def test_extra_headers_sent(bench_server):
    targets = {"api": Target("api", bench_server.base_url, headers={"X-Tenant": "t1"})}
    measure(targets, EndpointSpec("payload", "/payload", query={"size": 1}), warmup=0, samples=1)
    assert bench_server.requests[0].headers["X-Tenant"] == "t1"
    assert bench_server.requests[0].headers["Accept-Encoding"] == "gzip"


def test_base_path_and_query_joined(bench_server):
    targets = {"api": Target("api", bench_server.base_url + "/")}
    spec = EndpointSpec("payload", "/payload", query={"size": 3, "delay_ms": 0})
    (result,) = measure(targets, spec, warmup=0, samples=1)
    assert result["payload_bytes"] == 3
    assert result["url"] == bench_server.base_url + "/payload"


def test_missing_target_skips_endpoint(bench_server):
    specs = [EndpointSpec("page", "/payload", query={"size": 1}, connection="api_proxy")]
    result = run_http_benchmark(
        specs,
        direct(bench_server),
        MeasurementSettings(warmup=0, samples=1),
        unavailable={"api_proxy": "not defined"},
    )
    assert result["endpoints"][0]["skipped"] == "not defined"
    assert result["endpoints"][0]["n"] == 0


def test_proxy_overhead_per_name():
    endpoints = [
        {"name": "page", "connection": "api", "n": 12, "mean_ms": 6.5, "p95_ms": 8.0, "payload_bytes": 14715},
        {
            "name": "page",
            "connection": "api_proxy",
            "n": 12,
            "mean_ms": 9.25,
            "p95_ms": 11.5,
            "payload_bytes": 14715,
        },
        {"name": "direct only", "connection": "api", "n": 12, "mean_ms": 1.0, "p95_ms": 2.0},
        {"name": "proxy failed", "connection": "api", "n": 12, "mean_ms": 1.0, "p95_ms": 2.0},
        {"name": "proxy failed", "connection": "api_proxy", "n": 0, "mean_ms": None, "p95_ms": None},
    ]
    (pair,) = proxy_overhead(endpoints)
    assert pair["name"] == "page"
    assert pair["mean_overhead_ms"] == 2.75
    assert pair["p95_overhead_ms"] == 3.5
    assert pair["mean_ratio"] == 9.25 / 6.5


def test_closed_loop_stated(bench_server):
    result = run_http_benchmark(
        [EndpointSpec("payload", "/payload", query={"size": 1})],
        direct(bench_server),
        MeasurementSettings(warmup=0, samples=1),
    )
    assert result["method"]["loop"] == "closed"
    assert "coordinated omission" in result["method"]["note"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": "/x"}, "name must be a non-empty string"),
        ({"name": "x", "path": "x"}, "path must be a string starting with '/'"),
        ({"name": "x", "path": "/x", "method": "FETCH"}, "method must be one of"),
        ({"name": "x", "path": "/x", "connection": "db"}, "connection must be 'api'"),
        ({"name": "x", "path": "/x", "query": "a=1"}, "query must be an object"),
        ({"name": "x", "path": "/x", "timeout": 3}, "unknown keys"),
    ],
)
def test_invalid_endpoint_rejected(entry, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_endpoints([entry])


def test_duplicate_endpoint_rejected():
    entries = [{"name": "x", "path": "/a"}, {"name": "x", "path": "/b"}]
    with pytest.raises(ConfigurationError, match="repeats endpoint 'x'"):
        parse_endpoints(entries)


def test_endpoint_defaults_applied():
    (spec,) = parse_endpoints([{"name": "x", "path": "/a", "method": "head"}])
    assert spec == EndpointSpec("x", "/a", method="HEAD", query=None, connection="api")


def test_target_hides_secrets():
    target = Target("api", "http://user:url-secret@127.0.0.1:8080/api", bearer_token=BEARER_SECRET)
    assert BEARER_SECRET not in repr(target)
    assert "url-secret" not in repr(target)
    assert target.display_url == "http://127.0.0.1:8080/api"


def test_target_rejects_both_auths():
    with pytest.raises(ConfigurationError, match="both a bearer token and basic"):
        Target("api", "http://127.0.0.1", bearer_token="a", basic_auth=("u", "p"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"samples": 0}, "report.samples must be at least 1"),
        ({"warmup": -1}, "report.warmup must be 0 or more"),
        ({"timeout_seconds": 0}, "report.timeout_seconds must be positive"),
        ({"abort_after_errors": 0}, "report.abort_after_errors must be at least 1"),
    ],
)
def test_invalid_settings_rejected(settings, message):
    with pytest.raises(ConfigurationError, match=message):
        MeasurementSettings(**settings).validate()
