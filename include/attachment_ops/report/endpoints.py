"""HTTP latency measurement of the configured API endpoints, direct and through the proxy.

Each endpoint is measured by one client on one persistent connection (``httpx.Client``). A few
warm-up requests are sent and not counted. Then each sample is timed with ``time.perf_counter_ns``
from just before the request is sent until the last body byte is read.
The loop is closed: each request starts only after the previous response ended, so slow periods
are under-sampled (coordinated omission) and the figures describe one sequential client, not a
service under load.

Responses with a status below 400 count as samples. Timeouts, refused connections, 4xx, 5xx and
other transport errors are counted by kind and kept out of the timings.

Authentication comes from the resolved ``Target`` and is sent in headers only. It never appears in
logs or in the returned figures: every message taken from an exception is scrubbed of the secrets
first.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from attachment_ops.errors import ConfigurationError
from attachment_ops.report.stats import summarize

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

CONNECTION_KEYS = ("api", "api_proxy")
ERROR_KINDS = ("timeout", "refused", "http_5xx", "http_4xx", "other")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CLOSED_LOOP_NOTE = (
    "Closed loop: each request starts after the previous response has been read, on one persistent "
    "connection per endpoint, so slow periods are under-sampled (coordinated omission). The figures "
    "describe one sequential client, not the service under load."
)
REDACTED = "***"


@dataclass(frozen=True)
class Target:
    """Base URL, authentication and extra headers of one API connection, resolved from Airflow.

    ``bearer_token`` and ``basic_auth`` are mutually exclusive. ``__repr__`` hides both.
    """

    key: str
    base_url: str
    bearer_token: str | None = None
    basic_auth: tuple[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    verify: bool | str = True
    conn_id: str | None = None

    def __post_init__(self) -> None:
        if self.bearer_token and self.basic_auth:
            raise ConfigurationError(
                f"Target {self.key!r} has both a bearer token and basic credentials; set one of them."
            )
        scheme = urlsplit(self.base_url).scheme
        if scheme not in ("http", "https"):
            raise ConfigurationError(
                f"Target {self.key!r} base URL must start with http:// or https://, got scheme {scheme!r}."
            )

    def __repr__(self) -> str:
        return f"Target(key={self.key!r}, base_url={self.display_url!r}, auth={self.auth_kind!r})"

    @property
    def auth_kind(self) -> str:
        if self.bearer_token:
            return "bearer"
        if self.basic_auth:
            return "basic"
        return "none"

    @property
    def display_url(self) -> str:
        """Base URL without any user information, safe to log and to report."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def secret_values(self) -> list[str]:
        """Return every secret value this target sends, longest first, for scrubbing messages."""
        values: list[str] = []
        if self.bearer_token:
            values.append(self.bearer_token)
        if self.basic_auth:
            values.extend(self.basic_auth[1:])
        parts = urlsplit(self.base_url)
        if parts.password:
            values.append(parts.password)
        for name, value in self.headers.items():
            if name.lower() in ("authorization", "proxy-authorization", "cookie", "x-api-key"):
                values.append(value)
        return sorted((v for v in values if v), key=len, reverse=True)


@dataclass(frozen=True)
class EndpointSpec:
    """One endpoint to measure, as configured in ``report.endpoints``."""

    name: str
    path: str
    method: str = "GET"
    query: Mapping[str, Any] | None = None
    connection: str = "api"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.connection})"


def parse_endpoints(raw: Sequence[Any]) -> list[EndpointSpec]:
    """Validate ``report.endpoints`` and return one ``EndpointSpec`` per entry.

    :raises ConfigurationError: on a missing or mistyped field, an unknown connection key, or two
        entries with the same name and connection.
    """
    specs: list[EndpointSpec] = []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(raw):
        where = f"report.endpoints[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigurationError(f"{where} must be an object with name and path, got {entry!r}.")
        unknown = set(entry) - {"name", "method", "path", "query", "connection"}
        if unknown:
            raise ConfigurationError(
                f"{where} has unknown keys {sorted(unknown)}; allowed: name, method, path, query, connection."
            )
        name = entry.get("name")
        path = entry.get("path")
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"{where}.name must be a non-empty string, got {name!r}.")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(f"{where}.path must be a string starting with '/', got {path!r}.")
        method = entry.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
            raise ConfigurationError(
                f"{where}.method must be one of {', '.join(HTTP_METHODS)}, got {method!r}."
            )
        query = entry.get("query")
        if query is not None and not isinstance(query, Mapping):
            raise ConfigurationError(
                f"{where}.query must be an object of parameter names to values, got {query!r}."
            )
        connection = entry.get("connection", "api")
        if connection not in CONNECTION_KEYS:
            raise ConfigurationError(
                f"{where}.connection must be 'api' (direct) or 'api_proxy' (through the proxy), got "
                f"{connection!r}."
            )
        if (name, connection) in seen:
            raise ConfigurationError(f"{where} repeats endpoint {name!r} on connection {connection!r}.")
        seen.add((name, connection))
        specs.append(
            EndpointSpec(name=name, path=path, method=method.upper(), query=query, connection=connection)
        )
    return specs


@dataclass(frozen=True)
class MeasurementSettings:
    """Loop settings taken from the ``report`` configuration section."""

    warmup: int = 2
    samples: int = 12
    timeout_seconds: float = 10.0
    large_payload_bytes: int = 100000
    high_spread_cv: float = 0.5
    abort_after_errors: int = 3

    @classmethod
    def from_report_config(cls, report: Mapping[str, Any]) -> MeasurementSettings:
        settings = cls(
            warmup=report["warmup"],
            samples=report["samples"],
            timeout_seconds=report["timeout_seconds"],
            large_payload_bytes=report["large_payload_bytes"],
            high_spread_cv=report["high_spread_cv"],
            abort_after_errors=report["abort_after_errors"],
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.warmup < 0:
            raise ConfigurationError(f"report.warmup must be 0 or more, got {self.warmup}.")
        if self.samples < 1:
            raise ConfigurationError(f"report.samples must be at least 1, got {self.samples}.")
        if self.timeout_seconds <= 0:
            raise ConfigurationError(f"report.timeout_seconds must be positive, got {self.timeout_seconds}.")
        if self.abort_after_errors < 1:
            raise ConfigurationError(
                f"report.abort_after_errors must be at least 1, got {self.abort_after_errors}."
            )


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def classify_status(status: int) -> str | None:
    """Return the error kind of an HTTP status, or None when the response counts as a sample."""
    if status >= 500:
        return "http_5xx"
    if status >= 400:
        return "http_4xx"
    return None


def _classify_exception(error: Exception) -> str:
    import httpx

    if isinstance(error, httpx.TimeoutException):
        return "timeout"
    if isinstance(error, httpx.ConnectError):
        return "refused"
    return "other"


def build_client(target: Target, timeout_seconds: float) -> httpx.Client:
    """Build a client that keeps one connection to ``target`` open across requests.

    ``Accept-Encoding: gzip`` is sent unless the target's headers set it, so that compressed sizes
    are comparable between runs whatever decoders httpx has installed.
    """
    import httpx

    headers = {"Accept-Encoding": "gzip", "User-Agent": "attachment-ops-benchmark"}
    headers.update(target.headers)
    if target.bearer_token:
        headers["Authorization"] = f"Bearer {target.bearer_token}"
    auth = httpx.BasicAuth(*target.basic_auth) if target.basic_auth else None
    return httpx.Client(
        base_url=target.base_url,
        headers=headers,
        auth=auth,
        timeout=httpx.Timeout(timeout_seconds),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        follow_redirects=False,
        verify=target.verify,
        trust_env=False,
    )


def _send_once(client: httpx.Client, spec: EndpointSpec, secrets: Sequence[str]) -> dict[str, Any]:
    """Send one request, read the whole body and return its timing, status and byte counts."""
    import httpx

    url = spec.path.lstrip("/")
    params = dict(spec.query) if spec.query else None
    started = time.perf_counter_ns()
    try:
        with client.stream(spec.method, url, params=params) as response:
            decoded_bytes = 0
            for chunk in response.iter_bytes():
                decoded_bytes += len(chunk)
            elapsed_ns = time.perf_counter_ns() - started
            encoding = response.headers.get("content-encoding")
            result: dict[str, Any] = {
                "elapsed_ms": elapsed_ns / 1e6,
                "status": response.status_code,
                "bytes": decoded_bytes,
                "wire_bytes": response.num_bytes_downloaded if encoding else None,
                "content_encoding": encoding,
                "error": classify_status(response.status_code),
            }
            return result
    except httpx.HTTPError as error:
        elapsed_ns = time.perf_counter_ns() - started
        message = scrub(f"{type(error).__name__}: {error}", secrets)
        return {
            "elapsed_ms": elapsed_ns / 1e6,
            "status": None,
            "bytes": None,
            "wire_bytes": None,
            "content_encoding": None,
            "error": _classify_exception(error),
            "message": message,
        }


class _TransportErrorStreak:
    """Count timeouts and refused connections in a row; other outcomes reset the count."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def record(self, kind: str | None) -> bool:
        """Record one outcome and return True when the streak has reached the limit."""
        if kind in ("timeout", "refused"):
            self.count += 1
        else:
            self.count = 0
        return self.count >= self.limit


def _count_errors(outcomes: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(ERROR_KINDS, 0)
    for outcome in outcomes:
        if outcome["error"]:
            counts[outcome["error"]] += 1
    return counts


def measure_endpoint(
    client: httpx.Client, target: Target, spec: EndpointSpec, settings: MeasurementSettings
) -> dict[str, Any]:
    """Run the warm-up and the samples of one endpoint and return its figures.

    Timings of failed requests are kept in ``requests`` but left out of the statistics. After
    ``abort_after_errors`` timeouts or refused connections in a row the endpoint is abandoned, so
    a dead endpoint costs a few timeouts instead of a full run.
    """
    secrets = target.secret_values()
    streak = _TransportErrorStreak(settings.abort_after_errors)
    aborted = False

    warmup_outcomes: list[dict[str, Any]] = []
    for _ in range(settings.warmup):
        outcome = _send_once(client, spec, secrets)
        warmup_outcomes.append(outcome)
        if streak.record(outcome["error"]):
            aborted = True
            break

    requests: list[dict[str, Any]] = []
    for _ in range(0 if aborted else settings.samples):
        outcome = _send_once(client, spec, secrets)
        requests.append(outcome)
        if streak.record(outcome["error"]):
            aborted = True
            break

    errors = _count_errors(requests)
    warmup_errors = _count_errors(warmup_outcomes)
    error_messages: dict[str, str] = {}
    for outcome in [*warmup_outcomes, *requests]:
        kind = outcome["error"]
        if kind and kind not in error_messages:
            error_messages[kind] = outcome.get("message") or f"HTTP {outcome['status']}"

    successes = [r for r in requests if not r["error"]]
    samples_ms = [r["elapsed_ms"] for r in successes]
    byte_counts = [r["bytes"] for r in successes]
    wire_counts = [r["wire_bytes"] for r in successes if r["wire_bytes"] is not None]
    encodings = sorted({r["content_encoding"] for r in successes if r["content_encoding"]})
    status_counts: dict[str, int] = {}
    for request in requests:
        key = str(request["status"]) if request["status"] is not None else request["error"]
        status_counts[key] = status_counts.get(key, 0) + 1

    payload_bytes = max(byte_counts) if byte_counts else None
    figures: dict[str, Any] = {
        "name": spec.name,
        "connection": spec.connection,
        "conn_id": target.conn_id,
        "method": spec.method,
        "path": spec.path,
        "query": dict(spec.query) if spec.query else None,
        "url": target.display_url.rstrip("/") + spec.path,
        "auth": target.auth_kind,
        "warmup": settings.warmup,
        "warmup_errors": warmup_errors,
        "warmup_error_count": sum(warmup_errors.values()),
        "attempted": len(requests),
        "aborted": aborted,
        "errors": errors,
        "error_count": sum(errors.values()),
        "error_messages": error_messages,
        "status_counts": status_counts,
        "payload_bytes": payload_bytes,
        "payload_bytes_min": min(byte_counts) if byte_counts else None,
        "wire_bytes": max(wire_counts) if wire_counts else None,
        "content_encoding": ", ".join(encodings) or None,
        "large_payload": payload_bytes is not None and payload_bytes > settings.large_payload_bytes,
        "samples_ms": samples_ms,
        "requests": requests,
    }
    figures.update(summarize(samples_ms, high_spread_cv=settings.high_spread_cv))
    log.info(
        "Measured %s %s via %s: n=%d, mean=%s ms, p95=%s ms, errors=%d, payload=%s bytes%s",
        spec.method,
        spec.name,
        spec.connection,
        figures["n"],
        _format_ms(figures["mean_ms"]),
        _format_ms(figures["p95_ms"]),
        figures["error_count"],
        payload_bytes,
        ", aborted after repeated timeouts or refused connections" if aborted else "",
    )
    return figures


def _format_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _skipped(spec: EndpointSpec, reason: str) -> dict[str, Any]:
    return {
        "name": spec.name,
        "connection": spec.connection,
        "method": spec.method,
        "path": spec.path,
        "skipped": reason,
        "n": 0,
        "errors": dict.fromkeys(ERROR_KINDS, 0),
        "error_count": 0,
        "samples_ms": [],
    }


def proxy_overhead(endpoints: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pair each endpoint name measured both direct and through the proxy; return the differences.

    Overhead is proxy minus direct, in milliseconds, for the mean and for p95. A pair where either
    side has no successful sample is left out.
    """
    by_key = {(e["name"], e["connection"]): e for e in endpoints}
    pairs: list[dict[str, Any]] = []
    for (name, connection), direct in by_key.items():
        if connection != "api":
            continue
        proxied = by_key.get((name, "api_proxy"))
        if not proxied or not direct.get("n") or not proxied.get("n"):
            continue
        pairs.append(
            {
                "name": name,
                "direct_mean_ms": direct["mean_ms"],
                "proxy_mean_ms": proxied["mean_ms"],
                "mean_overhead_ms": proxied["mean_ms"] - direct["mean_ms"],
                "direct_p95_ms": direct["p95_ms"],
                "proxy_p95_ms": proxied["p95_ms"],
                "p95_overhead_ms": proxied["p95_ms"] - direct["p95_ms"],
                "mean_ratio": proxied["mean_ms"] / direct["mean_ms"] if direct["mean_ms"] else None,
                "direct_payload_bytes": direct.get("payload_bytes"),
                "proxy_payload_bytes": proxied.get("payload_bytes"),
            }
        )
    return pairs


def measurement_environment() -> dict[str, Any]:
    """Return what a reader needs to judge the timings: Python, httpx, CPU count and load."""
    import httpx

    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except OSError:
        load = None
    return {
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "clock": "time.perf_counter_ns",
    }


def run_http_benchmark(
    endpoints: Sequence[EndpointSpec],
    targets: Mapping[str, Target],
    settings: MeasurementSettings,
    *,
    unavailable: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Measure every endpoint against its target and return the ``http`` section of a report.

    ``targets`` maps a connection key (``api`` or ``api_proxy``) to its resolved target.
    ``unavailable`` maps a connection key to the reason it has no target; its endpoints are
    reported as skipped with that reason. Endpoints run one after another, one client per
    connection key, so each client keeps its connection open across its endpoints.
    """
    settings.validate()
    unavailable = dict(unavailable or {})
    results: list[dict[str, Any]] = []
    clients: dict[str, httpx.Client] = {}
    environment_before = measurement_environment()
    try:
        for spec in endpoints:
            target = targets.get(spec.connection)
            if target is None:
                reason = unavailable.get(spec.connection, f"no target for connection key {spec.connection!r}")
                log.warning("Skipping endpoint %s: %s", spec.label, reason)
                results.append(_skipped(spec, reason))
                continue
            if spec.connection not in clients:
                clients[spec.connection] = build_client(target, settings.timeout_seconds)
            results.append(measure_endpoint(clients[spec.connection], target, spec, settings))
    finally:
        for client in clients.values():
            client.close()

    return {
        "settings": {
            "warmup": settings.warmup,
            "samples": settings.samples,
            "timeout_seconds": settings.timeout_seconds,
            "large_payload_bytes": settings.large_payload_bytes,
            "high_spread_cv": settings.high_spread_cv,
            "abort_after_errors": settings.abort_after_errors,
        },
        "method": {
            "loop": "closed",
            "note": CLOSED_LOOP_NOTE,
            "percentiles": "nearest-rank: the sample at rank ceil(p/100 * n) of the sorted samples",
            "percentile_rule": "a percentile p is marked sufficient when n >= 100 / (100 - p): "
            "p50 needs 2 samples, p95 needs 20, p99 needs 100",
            "stddev": "sample standard deviation (divisor n - 1)",
            "bytes": "decoded body bytes; wire_bytes is the body as received before content decoding, "
            "without headers or chunk framing, when the response had a Content-Encoding",
            "success": "status below 400; errors are counted by kind and left out of the timings",
        },
        "environment": {
            "before": environment_before,
            "load_average_after": measurement_environment()["load_average"],
        },
        "endpoints": results,
        "proxy_overhead": proxy_overhead(results),
    }
