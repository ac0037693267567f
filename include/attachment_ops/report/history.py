"""Past reports: where they are stored, how they are listed, and the comparison with a baseline.

Each report is a folder named ``<UTC timestamp>_<run id>`` containing ``report.json`` (the source of
truth), ``report.md`` and ``report.html``. Folder names sort by time, so listing is a sort of names.
The folders live in the bucket under ``report.prefix`` and, when ``report.local_dir`` is set, in
that directory too.

The baseline of an endpoint is the median of its p95 (and of its mean) over the previous
``baseline_runs`` reports that measured it. A regression is a p95 above the baseline by more than
``regression_percent`` and by at least ``regression_min_ms``. Both conditions must be met, so a
small absolute change on a fast endpoint is not flagged.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from attachment_ops.errors import ConfigurationError, PermanentError
from attachment_ops.report.stats import median
from attachment_ops.storage import RetryPolicy, call_with_retries

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

REPORT_FILES = {
    "report.json": "application/json",
    "report.md": "text/markdown; charset=utf-8",
    "report.html": "text/html; charset=utf-8",
}
REPORT_ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z_[A-Za-z0-9._-]{1,120}$")
_UNSAFE_RUN_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


class BenchmarkRegression(PermanentError):
    """At least one endpoint's p95 regressed beyond the tolerance and ``fail_on_regression`` is set."""


def make_report_id(created_at: datetime, run_id: str | None) -> str:
    """Return the folder name of a report: UTC timestamp, underscore, run id made safe for keys."""
    stamp = created_at.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe_run_id = _UNSAFE_RUN_ID_CHARACTERS.sub("-", run_id or "adhoc").strip("-.") or "adhoc"
    return f"{stamp}_{safe_run_id[:120]}"


def validate_report_id(report_id: str) -> str:
    """Return ``report_id`` unchanged, or raise ValueError when it is not a report folder name."""
    if not REPORT_ID_PATTERN.match(report_id) or ".." in report_id:
        raise ValueError(f"Invalid report id {report_id!r}; expected <YYYYMMDDTHHMMSSZ>_<run id>.")
    return report_id


class ReportStore(Protocol):
    """Storage of report folders, in a bucket or a local directory."""

    location: str

    def save(self, report_id: str, files: Mapping[str, bytes]) -> list[str]: ...

    def list_ids(self) -> list[str]: ...

    def read(self, report_id: str, name: str) -> bytes | None: ...


@dataclass(frozen=True)
class LocalReportStore:
    """Report folders under a local directory."""

    root: Path

    @property
    def location(self) -> str:
        return str(self.root)

    def save(self, report_id: str, files: Mapping[str, bytes]) -> list[str]:
        folder = self.root / validate_report_id(report_id)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, body in files.items():
            path = folder / name
            temporary = path.with_suffix(path.suffix + ".tmp")
            temporary.write_bytes(body)
            temporary.replace(path)
            written.append(str(path))
        return written

    def list_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        ids = [
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and REPORT_ID_PATTERN.match(entry.name) and (entry / "report.json").is_file()
        ]
        return sorted(ids, reverse=True)

    def read(self, report_id: str, name: str) -> bytes | None:
        if name not in REPORT_FILES:
            raise ValueError(f"Unknown report file {name!r}; expected one of {', '.join(REPORT_FILES)}.")
        path = self.root / validate_report_id(report_id) / name
        return path.read_bytes() if path.is_file() else None


@dataclass(frozen=True)
class BucketReportStore:
    """Report folders under a prefix of an S3 bucket."""

    client: BaseClient
    bucket: str
    prefix: str
    retry: RetryPolicy = RetryPolicy()

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("/"):
            raise ConfigurationError(f"report.prefix {self.prefix!r} must end with '/'.")

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def save(self, report_id: str, files: Mapping[str, bytes]) -> list[str]:
        written = []
        for name, body in files.items():
            key = f"{self.prefix}{validate_report_id(report_id)}/{name}"
            call_with_retries(
                lambda key=key, body=body, name=name: self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType=REPORT_FILES.get(name, "application/octet-stream"),
                ),
                f"put report object {key!r}",
                self.retry,
                bucket=self.bucket,
            )
            written.append(f"s3://{self.bucket}/{key}")
        return written

    def list_ids(self) -> list[str]:
        ids: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")

        def list_pages() -> list[dict[str, Any]]:
            return list(paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"))

        pages = call_with_retries(
            list_pages, f"list reports under {self.prefix!r}", self.retry, bucket=self.bucket
        )
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(self.prefix) :].rstrip("/")
                if REPORT_ID_PATTERN.match(name):
                    ids.append(name)
        return sorted(ids, reverse=True)

    def read(self, report_id: str, name: str) -> bytes | None:
        if name not in REPORT_FILES:
            raise ValueError(f"Unknown report file {name!r}; expected one of {', '.join(REPORT_FILES)}.")
        key = f"{self.prefix}{validate_report_id(report_id)}/{name}"

        def get() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except self.client.exceptions.NoSuchKey:
                return None

        return call_with_retries(get, f"read report object {key!r}", self.retry, bucket=self.bucket)


def load_previous_reports(store: ReportStore, *, before_id: str, limit: int) -> list[dict[str, Any]]:
    """Return up to ``limit`` reports older than ``before_id``, newest first.

    A report whose JSON cannot be read or parsed is skipped with a warning, so one damaged file
    does not stop the comparison.
    """
    reports: list[dict[str, Any]] = []
    for report_id in store.list_ids():
        if report_id >= before_id:
            continue
        if len(reports) >= limit:
            break
        body = store.read(report_id, "report.json")
        if body is None:
            continue
        try:
            reports.append(json.loads(body))
        except ValueError as error:
            log.warning(
                "Skipping report %s in %s: its JSON is invalid (%s)", report_id, store.location, error
            )
    return reports


def endpoint_key(endpoint: Mapping[str, Any]) -> str:
    return f"{endpoint['name']} ({endpoint['connection']})"


def _measured(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    endpoints = (report.get("http") or {}).get("endpoints") or []
    return {endpoint_key(e): e for e in endpoints if e.get("n") and e.get("p95_ms") is not None}


@dataclass(frozen=True)
class Tolerance:
    """When a p95 increase counts as a regression: both limits must be exceeded."""

    percent: float = 20.0
    min_ms: float = 2.0

    def is_regression(self, baseline_ms: float, current_ms: float) -> bool:
        delta = current_ms - baseline_ms
        return delta >= self.min_ms and current_ms > baseline_ms * (1 + self.percent / 100)

    def is_improvement(self, baseline_ms: float, current_ms: float) -> bool:
        delta = baseline_ms - current_ms
        return delta >= self.min_ms and current_ms < baseline_ms * (1 - self.percent / 100)


def compare_with_baseline(
    current: Mapping[str, Any],
    previous: Sequence[Mapping[str, Any]],
    *,
    baseline_runs: int,
    tolerance: Tolerance,
) -> dict[str, Any]:
    """Compare each measured endpoint of ``current`` with the median of the previous runs.

    ``previous`` is newest first; only its first ``baseline_runs`` reports form the baseline.
    Returns the ``comparison`` section: one entry per endpoint with its status (``regression``,
    ``improved``, ``unchanged`` or ``no baseline``) and the labels of the regressed endpoints.
    """
    if baseline_runs < 1:
        raise ConfigurationError(f"report.baseline_runs must be at least 1, got {baseline_runs}.")
    window = list(previous[:baseline_runs])
    measured_before = [_measured(report) for report in window]
    entries: list[dict[str, Any]] = []
    for key, endpoint in _measured(current).items():
        history = [runs[key] for runs in measured_before if key in runs]
        entry: dict[str, Any] = {
            "endpoint": key,
            "name": endpoint["name"],
            "connection": endpoint["connection"],
            "current_p95_ms": endpoint["p95_ms"],
            "current_mean_ms": endpoint["mean_ms"],
            "baseline_runs": len(history),
            "baseline_report_ids": [
                report.get("report_id")
                for report, runs in zip(window, measured_before, strict=True)
                if key in runs
            ],
        }
        if not history:
            entry.update(status="no baseline", baseline_p95_ms=None, baseline_mean_ms=None)
            entries.append(entry)
            continue
        baseline_p95 = median([run["p95_ms"] for run in history])
        baseline_mean = median([run["mean_ms"] for run in history])
        if tolerance.is_regression(baseline_p95, endpoint["p95_ms"]):
            status = "regression"
        elif tolerance.is_improvement(baseline_p95, endpoint["p95_ms"]):
            status = "improved"
        else:
            status = "unchanged"
        entry.update(
            status=status,
            baseline_p95_ms=baseline_p95,
            baseline_mean_ms=baseline_mean,
            p95_delta_ms=endpoint["p95_ms"] - baseline_p95,
            p95_delta_percent=(endpoint["p95_ms"] - baseline_p95) / baseline_p95 * 100
            if baseline_p95
            else None,
            mean_delta_ms=endpoint["mean_ms"] - baseline_mean,
        )
        entries.append(entry)
    few_samples = [
        key for key, endpoint in _measured(current).items() if not endpoint.get("p95_sufficient", True)
    ]
    caveat = None
    if few_samples:
        caveat = (
            f"{len(few_samples)} endpoint(s) have fewer than 20 samples, so their p95 is the slowest request "
            "and one slow request can flag a regression. Set report.samples to 20 or more for a steadier p95."
        )
    return {
        "baseline": f"median of the previous {baseline_runs} runs that measured the endpoint",
        "caveat": caveat,
        "tolerance": {"regression_percent": tolerance.percent, "regression_min_ms": tolerance.min_ms},
        "rule": (
            f"regression when p95 exceeds the baseline p95 by more than {tolerance.percent:g}% and by at "
            f"least {tolerance.min_ms:g} ms"
        ),
        "previous_runs_available": len(previous),
        "endpoints": entries,
        "regressions": [entry["endpoint"] for entry in entries if entry["status"] == "regression"],
        "improvements": [entry["endpoint"] for entry in entries if entry["status"] == "improved"],
    }


def build_trend(
    current: Mapping[str, Any], previous: Sequence[Mapping[str, Any]], *, runs: int
) -> dict[str, Any]:
    """Return p95 and mean per endpoint over the last ``runs`` reports, oldest first, ending with ``current``."""
    reports = [*reversed(list(previous[: max(runs - 1, 0)])), current]
    points = [
        {"report_id": report.get("report_id"), "created_at": report.get("created_at")} for report in reports
    ]
    series: dict[str, list[dict[str, float] | None]] = {}
    measured = [_measured(report) for report in reports]
    for key in sorted({key for runs_by_key in measured for key in runs_by_key}):
        series[key] = [
            {"p95_ms": runs_by_key[key]["p95_ms"], "mean_ms": runs_by_key[key]["mean_ms"]}
            if key in runs_by_key
            else None
            for runs_by_key in measured
        ]
    return {"runs": points, "series": series}


def summarize_for_listing(report: Mapping[str, Any]) -> dict[str, Any]:
    """Return the few fields the report list shows: id, run, time, regressions, warnings."""
    comparison = report.get("comparison") or {}
    return {
        "report_id": report.get("report_id"),
        "run_id": report.get("run_id"),
        "dag_id": report.get("dag_id"),
        "created_at": report.get("created_at"),
        "trigger": report.get("trigger"),
        "regressions": list(comparison.get("regressions") or []),
        "warnings": len(report.get("warnings") or []),
        "endpoints": len((report.get("http") or {}).get("endpoints") or []),
    }


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
