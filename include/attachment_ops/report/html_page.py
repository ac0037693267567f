"""Self-contained HTML page of a report: tables and inline SVG charts, no script, no external file.

Every value that came from the database, the configuration or the chain is escaped with
``html.escape``. The page also carries a Content-Security-Policy that allows no script at all, so
a value that escaped escaping still could not run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attachment_ops.report.charts import esc, latency_chart, sizes_chart, trend_chart
from attachment_ops.report.formatting import (
    endpoint_flags,
    format_bytes,
    format_ms,
    format_percentile,
    format_value,
)
from attachment_ops.report.markdown import CONNECTION_LABELS

CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d1d1f; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; }
h3 { font-size: 15px; } .meta { color: #555; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f4f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; padding: 2px 8px; border-radius: 10px; font-weight: 600; }
.bad { background: #fde2e1; color: #9b1c1c; } .good { background: #def7e5; color: #1d6b35; }
.warn { background: #fff4d6; color: #7a5200; }
.flag { color: #9b1c1c; } .note { color: #555; font-size: 13px; }
svg { font: 12px system-ui, sans-serif; } svg .grid { stroke: #e3e3e8; } svg .p95 { stroke: #111; stroke-width: 2; }
svg .tick { fill: #555; } svg .label { fill: #1d1d1f; } svg .value { fill: #333; }
.empty { color: #777; font-style: italic; } .scroll { overflow-x: auto; } code { background: #f4f4f6; padding: 0 3px; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[tuple[str, bool]]], css_class: str = "") -> str:
    """Render a table whose cells are (already escaped HTML, is numeric) pairs."""
    head = "".join(f"<th>{esc(title)}</th>" for title in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{cell}</td>' if numeric else f"<td>{cell}</td>" for cell, numeric in row)
        + "</tr>"
        for row in rows
    )
    class_attribute = f' class="{css_class}"' if css_class else ""
    table = f"<table{class_attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _text(value: Any) -> tuple[str, bool]:
    return esc(value), False


def _number(value: str) -> tuple[str, bool]:
    return esc(value), True


def _http_section(http: Mapping[str, Any]) -> str:
    settings = http["settings"]
    rows = []
    for e in http["endpoints"]:
        flags = endpoint_flags(e)
        rows.append(
            [
                _text(e["name"]),
                _text(CONNECTION_LABELS.get(e["connection"], e["connection"])),
                _text(f"{e.get('method', '')} {e.get('path', '')}"),
                _number(str(e["n"])),
                _number(format_ms(e.get("mean_ms"))),
                _number(format_ms(e.get("min_ms"))),
                _number(format_percentile(e, 50)),
                _number(format_percentile(e, 95)),
                _number(format_percentile(e, 99)),
                _number(format_ms(e.get("max_ms"))),
                _number(format_ms(e.get("stddev_ms"))),
                _number(format_ms(e.get("cv"))),
                _number(format_bytes(e.get("payload_bytes"))),
                _number(format_bytes(e.get("wire_bytes"))),
                _number(str(e.get("error_count", 0))),
                (f'<span class="flag">{esc("; ".join(flags))}</span>' if flags else "", False),
            ]
        )
    header = ["endpoint", "via", "request", "n", "mean", "min", "p50", "p95", "p99", "max", "stddev", "CV"]
    parts = [
        f'<h2>API latency</h2><p class="note">Milliseconds; {esc(settings["samples"])} samples per endpoint '
        f"after {esc(settings['warmup'])} warm-up requests, timeout {esc(settings['timeout_seconds'])} s. "
        f"Payloads above {esc(format_bytes(settings['large_payload_bytes']))} and a coefficient of variation "
        f"above {esc(settings['high_spread_cv'])} are flagged.</p>",
        latency_chart(http["endpoints"]),
        _table([*header, "payload", "gzip on wire", "errors", "flags"], rows),
        '<p class="note">* fewer samples than the percentile needs (p50: n ≥ 2, p95: n ≥ 20, p99: n ≥ 100); '
        "with the nearest-rank method it then equals the maximum or a value close to it.</p>",
    ]
    details = []
    for e in http["endpoints"]:
        if e.get("skipped"):
            details.append(f"<li>Skipped {esc(e['name'])} ({esc(e['connection'])}): {esc(e['skipped'])}</li>")
        for kind, message in (e.get("error_messages") or {}).items():
            details.append(f"<li>{esc(e['name'])} ({esc(e['connection'])}) {esc(kind)}: {esc(message)}</li>")
    if details:
        parts.append("<ul>" + "".join(details) + "</ul>")
    overhead = http.get("proxy_overhead") or []
    if overhead:
        parts.append("<h3>Proxy overhead (proxy minus direct, ms)</h3>")
        parts.append(
            _table(
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
                        _text(o["name"]),
                        _number(format_ms(o["direct_mean_ms"])),
                        _number(format_ms(o["proxy_mean_ms"])),
                        _number(format_ms(o["mean_overhead_ms"])),
                        _number(format_ms(o["direct_p95_ms"])),
                        _number(format_ms(o["proxy_p95_ms"])),
                        _number(format_ms(o["p95_overhead_ms"])),
                    ]
                    for o in overhead
                ],
            )
        )
    return "".join(parts)


def _comparison_section(comparison: Mapping[str, Any], trend: Mapping[str, Any] | None) -> str:
    parts = [
        "<h2>Comparison with baseline</h2>",
        f'<p class="note">Baseline: {esc(comparison["baseline"])}; {esc(comparison["rule"])}.</p>',
    ]
    if comparison.get("caveat"):
        parts.append(f'<p class="note">{esc(comparison["caveat"])}</p>')
    rows = []
    for entry in comparison.get("endpoints") or []:
        status = entry["status"]
        css = {"regression": "bad", "improved": "good"}.get(status, "")
        delta_percent = entry.get("p95_delta_percent")
        rows.append(
            [
                _text(entry["endpoint"]),
                _number(str(entry["baseline_runs"])),
                _number(format_ms(entry.get("baseline_p95_ms"))),
                _number(format_ms(entry["current_p95_ms"])),
                _number(format_ms(entry.get("p95_delta_ms"))),
                _number("–" if delta_percent is None else f"{delta_percent:+.1f}%"),
                (f'<span class="badge {css}">{esc(status)}</span>' if css else esc(status), False),
            ]
        )
    if rows:
        parts.append(_table(["endpoint", "runs", "baseline p95", "p95", "delta ms", "delta", "status"], rows))
    parts.append("<h3>p95 over past runs</h3>")
    parts.append(trend_chart(trend or {}))
    return "".join(parts)


def _key_value_table(values: Mapping[str, Any]) -> str:
    rows = [
        [_text(key), _text(format_value(key, value))]
        for key, value in values.items()
        if not isinstance(value, dict | list)
    ]
    return _table(["figure", "value"], rows) if rows else ""


def _has_vacuum_sizes(chain: Mapping[str, Any] | None) -> bool:
    sizes = (chain or {}).get("table_sizes") or {}
    return bool(sizes.get("before") or sizes.get("after"))


def _database_section(database: Mapping[str, Any], chain: Mapping[str, Any] | None, previous: Any) -> str:
    table = database["attachments"]
    rows = [
        [_text("database"), _text(f"{database['database']} (PostgreSQL {database['server_version']})")],
        [_text("database size"), _number(format_bytes(database["database_bytes"]))],
        [_text("table"), _text(table["table"])],
        [_text("total"), _number(format_bytes(table["total_bytes"]))],
        [_text("heap"), _number(format_bytes(table["heap_bytes"]))],
        [_text("TOAST"), _number(format_bytes(table["toast_bytes"]))],
        [_text("indexes"), _number(format_bytes(table["indexes_bytes"]))],
        [_text("rows"), _number(f"{table['rows']:,}")],
        [_text("inline rows"), _number(f"{table['inline_rows']:,}")],
        [_text("bytes still inline"), _number(format_bytes(table["inline_bytes"]))],
        [_text("offloaded rows"), _number(f"{table['offloaded_rows']:,}")],
        [_text("rows with another backend value"), _number(f"{table['other_rows']:,}")],
    ]
    parts = ["<h2>Database</h2>", _table(["figure", "value"], rows)]

    # Sizes around VACUUM, when the chain has them, are drawn in the chain's section instead.
    if not _has_vacuum_sizes(chain):
        parts.append("<h3>Table size, previous run and this run</h3>")
        parts.append(sizes_chart([("previous run", previous or {}), ("this run", table)]))

    for probe in database.get("probes") or []:
        parts.append(
            f'<h3>Probe {esc(probe["name"])}</h3><p class="note"><code>{esc(probe["sql"])}</code></p>'
        )
        if probe["error"]:
            parts.append(f'<p class="flag">Failed: {esc(probe["error"])}</p>')
            continue
        columns = probe["columns"]
        parts.append(
            _table(
                columns,
                [
                    [_text(format_value(c, v)) for c, v in zip(columns, row, strict=False)]
                    for row in probe["rows"]
                ],
            )
        )
        if probe["truncated"]:
            parts.append(f'<p class="note">First {len(probe["rows"])} rows.</p>')
    return "".join(parts)


def _chain_section(chain: Mapping[str, Any]) -> str:
    parts = ["<h2>Maintenance chain</h2>"]
    if chain.get("run_id"):
        parts.append(f"<p>Chain run <code>{esc(chain['run_id'])}</code></p>")
    preflight = chain.get("preflight")
    if preflight:
        parts.append(f"<h3>Preflight</h3><p>{esc(preflight.get('summary') or preflight.get('status'))}</p>")
        checks = [c for c in preflight.get("results") or [] if isinstance(c, dict)]
        if checks:
            parts.append(
                _table(
                    ["check", "status", "value", "fix"],
                    [
                        [
                            _text(c.get("name", "")),
                            _text(c.get("status", "")),
                            _text(c.get("value", "")),
                            _text(c.get("hint", "")),
                        ]
                        for c in checks
                    ],
                )
            )
    for section, title in (("offload", "Offload"), ("verification", "Verification")):
        if chain.get(section):
            parts.append(f"<h3>{title}</h3>" + _key_value_table(chain[section]))
    for section, title in (("table_sizes", "Table size before and after VACUUM"), ("disk", "Disk")):
        value = chain.get(section)
        if not value:
            continue
        keys = list(dict.fromkeys(k for side in ("before", "after") for k in (value.get(side) or {})))
        parts.append(f"<h3>{title}</h3>")
        if section == "table_sizes" and _has_vacuum_sizes(chain):
            bars = [("before VACUUM", value.get("before") or {}), ("after VACUUM", value.get("after") or {})]
            parts.append(sizes_chart(bars))
        parts.append(
            _table(
                ["figure", "before", "after"],
                [
                    [
                        _text(key),
                        _text(format_value(key, (value.get("before") or {}).get(key))),
                        _text(format_value(key, (value.get("after") or {}).get(key))),
                    ]
                    for key in keys
                ],
            )
        )
    known = {"run_id", "preflight", "offload", "verification", "table_sizes", "disk"}
    other = {key: value for key, value in chain.items() if key not in known}
    if other:
        parts.append("<h3>Other figures</h3>" + _key_value_table(other))
    return "".join(parts)


def _method_section(report: Mapping[str, Any]) -> str:
    http = report.get("http") or {}
    method = http.get("method") or {}
    environment = (http.get("environment") or {}).get("before") or {}
    items = [f"<li>{esc(method[key])}</li>" for key in ("note",) if key in method]
    for key, title in (
        ("percentiles", "Percentiles"),
        ("percentile_rule", "Percentile rule"),
        ("stddev", "Standard deviation"),
        ("bytes", "Bytes"),
        ("success", "Success"),
    ):
        if key in method:
            items.append(f"<li>{title}: {esc(method[key])}</li>")
    environment_text = ", ".join(f"{key} {value}" for key, value in environment.items())
    if environment_text:
        items.append(f"<li>Environment: {esc(environment_text)}</li>")
    return "<h2>Method</h2><ul>" + "".join(items) + "</ul>" if items else ""


def render_html(report: Mapping[str, Any]) -> str:
    """Render the report document as one HTML page with inline CSS and SVG.

    Without sizes around VACUUM from the chain, the size chart compares this run's table with the
    previous run's (``comparison.previous_footprint``).
    """
    comparison = report.get("comparison") or {}
    previous_footprint = comparison.get("previous_footprint")
    regressions = comparison.get("regressions") or []
    if regressions:
        badge = (
            f'<span class="badge bad">{esc(len(regressions))} regressed: {esc(", ".join(regressions))}</span>'
        )
    elif comparison.get("endpoints"):
        badge = '<span class="badge good">no regression</span>'
    else:
        badge = '<span class="badge warn">no comparison</span>'
    warnings = "".join(f'<li class="flag">{esc(w)}</li>' for w in report.get("warnings") or [])
    sections = [
        f"<h1>Benchmark report {esc(report['report_id'])}</h1>",
        f'<p class="meta">Created {esc(report["created_at"])} by {esc(report.get("dag_id") or "a manual call")}, '
        f"run <code>{esc(report.get('run_id') or '–')}</code> ({esc(report['trigger'])}), schema version "
        f"{esc(report['schema_version'])}.</p>",
        f"<p>{badge}</p>",
        f"<ul>{warnings}</ul>" if warnings else "",
    ]
    if report.get("http"):
        sections.append(_http_section(report["http"]))
    if comparison:
        sections.append(_comparison_section(comparison, report.get("trend")))
    if report.get("database"):
        sections.append(_database_section(report["database"], report.get("chain"), previous_footprint))
    if report.get("chain"):
        sections.append(_chain_section(report["chain"]))
    sections.append(_method_section(report))
    sections.append(
        '<p class="note">The JSON document (<a href="report.json">report.json</a>) is the source of truth; '
        'this page and <a href="report.md">report.md</a> are rendered from it.</p>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Benchmark report {esc(report['report_id'])}</title><style>{STYLE}</style></head><body>"
        + "".join(sections)
        + "</body></html>\n"
    )
