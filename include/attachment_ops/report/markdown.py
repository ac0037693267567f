"""Markdown summary of a report document, for the task log and the report folder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attachment_ops.report.formatting import (
    endpoint_flags,
    format_bytes,
    format_ms,
    format_percentile,
    format_value,
)

CONNECTION_LABELS = {"api": "direct", "api_proxy": "proxy"}


def _cell(value: Any) -> str:
    """Make a value safe inside a Markdown table cell: no pipes or line breaks."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(_cell(value) for value in row) + " |" for row in rows)
    return lines


def _http_lines(http: Mapping[str, Any]) -> list[str]:
    settings = http["settings"]
    lines = [
        f"## API latency (ms; {settings['samples']} samples after {settings['warmup']} warm-up requests)",
        "",
    ]
    rows = []
    for e in http["endpoints"]:
        rows.append(
            [
                e["name"],
                CONNECTION_LABELS.get(e["connection"], e["connection"]),
                e["n"],
                format_ms(e.get("mean_ms")),
                format_ms(e.get("min_ms")),
                format_percentile(e, 50),
                format_percentile(e, 95),
                format_percentile(e, 99),
                format_ms(e.get("max_ms")),
                format_ms(e.get("stddev_ms")),
                format_ms(e.get("cv")),
                format_bytes(e.get("payload_bytes")),
                format_bytes(e.get("wire_bytes")),
                e.get("error_count", 0),
                "; ".join(endpoint_flags(e)) or "",
            ]
        )
    header = ["endpoint", "via", "n", "mean", "min", "p50", "p95", "p99", "max", "stddev", "CV"]
    lines += _table([*header, "payload", "gzip on wire", "errors", "flags"], rows)
    lines += [
        "",
        "\\* fewer samples than the percentile needs (p50: n >= 2, p95: n >= 20, p99: n >= 100); with the "
        "nearest-rank method it then equals the maximum or a value close to it.",
    ]
    skipped = [e for e in http["endpoints"] if e.get("skipped")]
    for e in skipped:
        lines.append(f"- Skipped {e['name']} ({e['connection']}): {e['skipped']}")
    for e in http["endpoints"]:
        for kind, message in (e.get("error_messages") or {}).items():
            lines.append(f"- {e['name']} ({e['connection']}) {kind}: {message}")

    overhead = http.get("proxy_overhead") or []
    if overhead:
        lines += ["", "### Proxy overhead (proxy minus direct, ms)", ""]
        lines += _table(
            [
                "endpoint",
                "direct mean",
                "proxy mean",
                "mean overhead",
                "direct p95",
                "proxy p95",
                "p95 overhead",
            ],
            [
                [
                    o["name"],
                    format_ms(o["direct_mean_ms"]),
                    format_ms(o["proxy_mean_ms"]),
                    format_ms(o["mean_overhead_ms"]),
                    format_ms(o["direct_p95_ms"]),
                    format_ms(o["proxy_p95_ms"]),
                    format_ms(o["p95_overhead_ms"]),
                ]
                for o in overhead
            ],
        )
    return lines


def _comparison_lines(comparison: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Comparison with baseline",
        "",
        f"Baseline: {comparison['baseline']}; {comparison['rule']}.",
        "",
    ]
    if comparison.get("caveat"):
        lines += [comparison["caveat"], ""]
    rows = [
        [
            entry["endpoint"],
            entry["baseline_runs"],
            format_ms(entry.get("baseline_p95_ms")),
            format_ms(entry["current_p95_ms"]),
            format_ms(entry.get("p95_delta_ms")),
            "–" if entry.get("p95_delta_percent") is None else f"{entry['p95_delta_percent']:+.1f}%",
            entry["status"],
        ]
        for entry in comparison["endpoints"]
    ]
    lines += _table(["endpoint", "runs", "baseline p95", "p95", "delta ms", "delta", "status"], rows)
    return lines


def _database_lines(database: Mapping[str, Any]) -> list[str]:
    table = database["attachments"]
    lines = [
        "## Database",
        "",
        f"- Database {database['database']} (PostgreSQL {database['server_version']}): "
        f"{format_bytes(database['database_bytes'])}",
        f"- Table {table['table']}: total {format_bytes(table['total_bytes'])}; heap "
        f"{format_bytes(table['heap_bytes'])}, TOAST {format_bytes(table['toast_bytes'])}, indexes "
        f"{format_bytes(table['indexes_bytes'])}",
        f"- Rows: {table['rows']:,}; inline {table['inline_rows']:,} holding {format_bytes(table['inline_bytes'])}; "
        f"offloaded {table['offloaded_rows']:,}; other {table['other_rows']:,}",
    ]
    for probe in database.get("probes") or []:
        lines += ["", f"### Probe {probe['name']}", ""]
        if probe["error"]:
            lines.append(f"Failed: {probe['error']}")
            continue
        lines += _table(
            probe["columns"],
            [
                [format_value(c, v) for c, v in zip(probe["columns"], row, strict=False)]
                for row in probe["rows"]
            ],
        )
        if probe["truncated"]:
            lines.append(f"(first {len(probe['rows'])} rows)")
    return lines


def _chain_lines(chain: Mapping[str, Any]) -> list[str]:
    lines = ["## Maintenance chain", ""]
    if chain.get("run_id"):
        lines.append(f"- Chain run: {chain['run_id']}")
    preflight = chain.get("preflight")
    if preflight:
        lines.append(f"- Preflight: {preflight.get('summary') or preflight.get('status')}")

    offload = chain.get("offload")
    if offload:
        throughput = offload.get("throughput_mib_s")
        lines.append(
            f"- Offload: {format_value('rows', offload.get('rows'))} rows, {format_bytes(offload.get('bytes'))} "
            f"moved, {'–' if throughput is None else f'{throughput:,.1f}'} MiB/s, failures "
            f"{format_value('failures', offload.get('failures'))}"
        )

    verification = chain.get("verification")
    if verification:
        details = ", ".join(
            f"{k} {format_value(k, v)}"
            for k, v in verification.items()
            if k != "status" and not isinstance(v, dict | list)
        )
        lines.append(f"- Verification: {verification.get('status')}" + (f" ({details})" if details else ""))

    for section, title in (("table_sizes", "Table size around VACUUM"), ("disk", "Disk")):
        value = chain.get(section)
        if not value:
            continue
        for side in ("before", "after"):
            figures = value.get(side)
            if figures:
                text = ", ".join(f"{k} {format_value(k, v)}" for k, v in figures.items())
                lines.append(f"- {title}, {side}: {text}")

    known = {"run_id", "preflight", "offload", "verification", "table_sizes", "disk"}
    for key, value in chain.items():
        if key not in known and not isinstance(value, dict | list):
            lines.append(f"- {key}: {format_value(key, value)}")
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """Render the Markdown summary of a report document.

    Every ``<`` becomes ``&lt;``, so that a name from the configuration or the database cannot
    become an HTML tag in a Markdown viewer. The summary itself contains no HTML.
    """
    comparison = report.get("comparison") or {}
    regressions = comparison.get("regressions") or []
    lines = [
        f"# Benchmark report {report['report_id']}",
        "",
        f"Created {report['created_at']} by {report.get('dag_id') or 'a manual call'}, run "
        f"{report.get('run_id') or '–'} ({report['trigger']}).",
        "",
        f"**Regressions: {', '.join(regressions)}**" if regressions else "Regressions: none.",
    ]
    for warning in report.get("warnings") or []:
        lines.append(f"- Warning: {warning}")
    if report.get("http"):
        lines += ["", *_http_lines(report["http"])]
    if comparison.get("endpoints"):
        lines += ["", *_comparison_lines(comparison)]
    if report.get("database"):
        lines += ["", *_database_lines(report["database"])]
    if report.get("chain"):
        lines += ["", *_chain_lines(report["chain"])]
    if report.get("http"):
        method = report["http"]["method"]
        lines += [
            "",
            "## Method",
            "",
            f"- {method['note']}",
            f"- Percentiles: {method['percentiles']}; {method['percentile_rule']}.",
            f"- Standard deviation: {method['stddev']}. Bytes: {method['bytes']}.",
        ]
    return "\n".join(lines).replace("<", "&lt;") + "\n"
