"""Assemble, compare, render and store one benchmark report.

The JSON document is the source of truth. Its top-level keys:

- ``schema_version``: incremented when a key changes meaning or disappears.
- ``report_id``, ``run_id``, ``dag_id``, ``created_at`` (UTC, ISO 8601), ``trigger`` (``chain`` when
  the maintenance chain handed over figures, else ``standalone``).
- ``http``: endpoints with samples and statistics, proxy overhead, method and environment.
- ``database``: the attachments table's footprint, the database size and the probe results.
- ``chain``: the chain's figures as handed over, or null.
- ``comparison``: the baseline comparison, its rule, regressions and the previous run's footprint.
- ``trend``: p95 and mean per endpoint over the last ``trend_runs`` reports.
- ``settings``: the ``report`` configuration in effect; ``warnings``: what is missing and why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from attachment_ops.config import AttachmentMapping
from attachment_ops.errors import MaintenanceError, TransientError
from attachment_ops.report.chain import normalize_chain_figures
from attachment_ops.report.database import collect_database_figures, parse_probes
from attachment_ops.report.endpoints import MeasurementSettings, Target, parse_endpoints, run_http_benchmark
from attachment_ops.report.history import (
    BenchmarkRegression,
    ReportStore,
    Tolerance,
    build_trend,
    compare_with_baseline,
    load_previous_reports,
    make_report_id,
    utc_now,
)
from attachment_ops.report.html_page import render_html
from attachment_ops.report.markdown import render_markdown

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ReportResult:
    """A finished report: its document, both renderings and where they were stored."""

    report_id: str
    document: dict[str, Any]
    markdown: str
    html: str
    locations: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[str]:
        return list((self.document.get("comparison") or {}).get("regressions") or [])

    def summary(self) -> dict[str, Any]:
        """Return a small dict for XCom: id, locations, regressions and warnings."""
        return {
            "report_id": self.report_id,
            "locations": self.locations,
            "regressions": self.regressions,
            "warnings": self.document.get("warnings") or [],
        }


def _settings_snapshot(report_config: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(report_config)))


def _previous_reports(
    stores: Sequence[ReportStore], report_id: str, limit: int, warnings: list[str]
) -> list[dict[str, Any]]:
    """Load past reports from the first store that can list them; a store that fails adds a warning."""
    for store in stores:
        try:
            return load_previous_reports(store, before_id=report_id, limit=limit)
        except MaintenanceError as error:
            message = f"Could not read past reports from {store.location}: {error}"
            log.warning("%s", message)
            warnings.append(message)
    return []


def produce_report(
    report_config: Mapping[str, Any],
    *,
    targets: Mapping[str, Target],
    unavailable: Mapping[str, str] | None = None,
    conninfo: str | None = None,
    mapping: AttachmentMapping | None = None,
    chain: Mapping[str, Any] | None = None,
    stores: Sequence[ReportStore] = (),
    run_id: str | None = None,
    dag_id: str | None = None,
    created_at: datetime | None = None,
) -> ReportResult:
    """Measure, compare with past runs, render, store, and return the report.

    ``report_config`` is the ``report`` configuration section. ``targets`` contains the resolved API
    connections by key (``api``, ``api_proxy``); ``unavailable`` gives the reason for a key that has
    none. Database figures are collected when ``conninfo`` and ``mapping`` are given. Past reports
    are read from the first store that can list them, and the new report is written to every store.

    A failure to reach the database or to read past reports becomes a warning in the report, so the
    HTTP figures are never lost to it.

    :raises ConfigurationError: on invalid endpoints, probes, settings or chain figures.
    :raises TransientError: or PermanentError when a store could not save the report; the other
        stores have been written first.
    """
    endpoints = parse_endpoints(report_config["endpoints"])
    probes = parse_probes(report_config["sql_probes"])
    settings = MeasurementSettings.from_report_config(report_config)
    chain_figures = normalize_chain_figures(chain)
    created_at = created_at or utc_now()
    report_id = make_report_id(created_at, run_id)
    warnings: list[str] = []

    http = None
    if endpoints:
        http = run_http_benchmark(endpoints, targets, settings, unavailable=unavailable)
    else:
        warnings.append("No endpoints are configured in report.endpoints; the API was not measured.")

    database = None
    if conninfo and mapping:
        try:
            database = collect_database_figures(
                conninfo, mapping, probes=probes, probe_timeout_ms=report_config["probe_timeout_ms"]
            )
        except MaintenanceError as error:
            message = f"Database figures are missing: {error}"
            log.error("%s", message)
            warnings.append(message)
    else:
        warnings.append("No database connection was given; the table footprint was not measured.")

    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "report_id": report_id,
        "run_id": run_id,
        "dag_id": dag_id,
        "created_at": created_at.isoformat(),
        "trigger": "chain" if chain_figures else "standalone",
        "http": http,
        "database": database,
        "chain": chain_figures,
        "settings": _settings_snapshot(report_config),
        "warnings": warnings,
    }

    history_limit = max(report_config["baseline_runs"], report_config["trend_runs"])
    previous = _previous_reports(stores, report_id, history_limit, warnings)
    comparison = compare_with_baseline(
        document,
        previous,
        baseline_runs=report_config["baseline_runs"],
        tolerance=Tolerance(report_config["regression_percent"], report_config["regression_min_ms"]),
    )
    previous_with_table = next((r for r in previous if (r.get("database") or {}).get("attachments")), None)
    if previous_with_table:
        comparison["previous_report_id"] = previous_with_table.get("report_id")
        comparison["previous_footprint"] = previous_with_table["database"]["attachments"]
    document["comparison"] = comparison
    document["trend"] = build_trend(document, previous, runs=report_config["trend_runs"])

    markdown = render_markdown(document)
    page = render_html(document)
    files = {
        "report.json": json.dumps(document, indent=2, sort_keys=True).encode("utf-8"),
        "report.md": markdown.encode("utf-8"),
        "report.html": page.encode("utf-8"),
    }
    locations: list[str] = []
    failures: list[Exception] = []
    for store in stores:
        try:
            locations.extend(store.save(report_id, files))
        except (MaintenanceError, OSError) as error:
            log.error("Could not store report %s in %s: %s", report_id, store.location, error)
            failures.append(error)
    if failures:
        first = failures[0]
        if isinstance(first, MaintenanceError):
            raise first
        raise TransientError(f"Could not store report {report_id}: {first}") from first
    log.info(
        "Benchmark report %s stored at %s; regressions: %s",
        report_id,
        ", ".join(locations) or "nowhere (no store configured)",
        ", ".join(comparison["regressions"]) or "none",
    )
    return ReportResult(
        report_id=report_id, document=document, markdown=markdown, html=page, locations=locations
    )


def raise_on_regression(result: ReportResult, report_config: Mapping[str, Any]) -> None:
    """Raise BenchmarkRegression when the report flags a regression and ``fail_on_regression`` is set."""
    if report_config["fail_on_regression"] and result.regressions:
        rule = (result.document.get("comparison") or {}).get("rule", "")
        raise BenchmarkRegression(
            f"Report {result.report_id} flags a p95 regression on {', '.join(result.regressions)} ({rule}). "
            "Set report.fail_on_regression to false to record regressions without failing the task."
        )
