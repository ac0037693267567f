"""Inline SVG charts for the HTML report: latency per endpoint, p95 trend and table sizes.

Every text that reaches the SVG passes through ``html.escape``, because endpoint names, table
names and report ids come from configuration or the database.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

DIRECT_COLOR = "#3b6fb6"
PROXY_COLOR = "#e07b39"
PALETTE = ("#3b6fb6", "#e07b39", "#3a9a54", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#6b6b6b")
SIZE_COLORS = {"heap_bytes": "#3b6fb6", "toast_bytes": "#e07b39", "indexes_bytes": "#3a9a54"}
SIZE_LABELS = {"heap_bytes": "heap", "toast_bytes": "TOAST", "indexes_bytes": "indexes"}
WIDTH = 760
LABEL_WIDTH = 210
VALUE_WIDTH = 150
MAX_LABEL_CHARS = 30


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _short(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _nice_ceiling(value: float) -> float:
    """Round ``value`` up to 1, 2 or 5 times a power of ten, for axis limits."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * magnitude * (1 + 1e-9):
            return step * magnitude
    return 10 * magnitude


def _short_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} TiB"


def _axis(x0: float, width: float, y_top: float, y_bottom: float, scale: float, unit: str) -> list[str]:
    parts = []
    for step in range(5):
        value = scale * step / 4
        x = x0 + width * step / 4
        parts.append(
            f'<line x1="{x:.1f}" y1="{y_top:.1f}" x2="{x:.1f}" y2="{y_bottom:.1f}" class="grid"/>'
            f'<text x="{x:.1f}" y="{y_bottom + 14:.1f}" text-anchor="middle" class="tick">'
            f"{esc(f'{value:,.3g}')}{esc(unit) if step == 4 else ''}</text>"
        )
    return parts


def latency_chart(endpoints: Sequence[Mapping[str, Any]]) -> str:
    """Draw the mean of each endpoint as a bar, direct and proxy side by side, with a p95 tick."""
    measured = [e for e in endpoints if e.get("n")]
    if not measured:
        return '<p class="empty">No endpoint returned a successful sample.</p>'

    names = list(dict.fromkeys(e["name"] for e in measured))
    by_key = {(e["name"], e["connection"]): e for e in measured}
    scale = _nice_ceiling(max(max(e["p95_ms"], e["mean_ms"]) for e in measured))
    bar_height, gap = 14, 12
    area = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    top = 24

    parts: list[str] = []
    y = top
    for name in names:
        group_top = y
        for connection, color in (("api", DIRECT_COLOR), ("api_proxy", PROXY_COLOR)):
            endpoint = by_key.get((name, connection))
            if endpoint is None:
                continue
            width = area * endpoint["mean_ms"] / scale
            tick = LABEL_WIDTH + area * endpoint["p95_ms"] / scale
            label = "direct" if connection == "api" else "proxy"
            summary = f"{endpoint['mean_ms']:.2f} / {endpoint['p95_ms']:.2f} ms"
            parts.append(
                f'<rect x="{LABEL_WIDTH}" y="{y}" width="{width:.1f}" height="{bar_height}" fill="{color}">'
                f"<title>{esc(name)} {label}: mean {endpoint['mean_ms']:.2f} ms, p95 {endpoint['p95_ms']:.2f} ms, "
                f"n {endpoint['n']}</title></rect>"
                f'<line x1="{tick:.1f}" y1="{y - 2}" x2="{tick:.1f}" y2="{y + bar_height + 2}" class="p95"/>'
                f'<text x="{LABEL_WIDTH + area + 6}" y="{y + bar_height - 3}" class="value">'
                f"{esc(summary)}</text>"
            )
            y += bar_height + 2
        parts.append(
            f'<text x="{LABEL_WIDTH - 8}" y="{(group_top + y) / 2 + 4:.1f}" text-anchor="end" class="label">'
            f"<title>{esc(name)}</title>{esc(_short(name))}</text>"
        )
        y += gap

    height = y + 30
    axis = _axis(LABEL_WIDTH, area, top - 6, y - gap + 4, scale, " ms")
    legend = (
        f'<rect x="{LABEL_WIDTH}" y="4" width="12" height="10" fill="{DIRECT_COLOR}"/>'
        f'<text x="{LABEL_WIDTH + 16}" y="13" class="tick">direct mean</text>'
        f'<rect x="{LABEL_WIDTH + 100}" y="4" width="12" height="10" fill="{PROXY_COLOR}"/>'
        f'<text x="{LABEL_WIDTH + 116}" y="13" class="tick">proxy mean</text>'
        f'<line x1="{LABEL_WIDTH + 200}" y1="3" x2="{LABEL_WIDTH + 200}" y2="15" class="p95"/>'
        f'<text x="{LABEL_WIDTH + 206}" y="13" class="tick">p95</text>'
        f'<text x="{LABEL_WIDTH + area + 6}" y="13" class="tick">mean / p95</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Latency per endpoint" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">'
        + "".join(axis)
        + legend
        + "".join(parts)
        + "</svg>"
    )


def trend_chart(trend: Mapping[str, Any]) -> str:
    """Draw p95 per endpoint over past runs, oldest on the left; gaps where a run lacks the endpoint."""
    runs = trend.get("runs") or []
    series = trend.get("series") or {}
    values = [p["p95_ms"] for points in series.values() for p in points if p]
    if len(runs) < 2 or not values:
        return '<p class="empty">The trend needs at least two stored runs.</p>'
    left, right, top, plot_height = 60, 20, 16, 200
    plot_width = WIDTH - left - right
    scale = _nice_ceiling(max(values))
    parts: list[str] = []
    for step in range(5):
        value = scale * step / 4
        y = top + plot_height - plot_height * step / 4
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_width}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{esc(f"{value:,.3g}")}</text>'
        )
    parts.append(
        f'<text x="12" y="{top + plot_height / 2:.1f}" class="tick" '
        f'transform="rotate(-90 12 {top + plot_height / 2:.1f})" text-anchor="middle">p95 ms</text>'
    )

    def x_of(index: int) -> float:
        return left + plot_width * index / (len(runs) - 1)

    for index, color_key in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        segment: list[str] = []
        segments: list[list[str]] = []
        for run_index, point in enumerate(series[color_key]):
            if point is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            x = x_of(run_index)
            y = top + plot_height - plot_height * point["p95_ms"] / scale
            segment.append(f"{x:.1f},{y:.1f}")
            run_id = runs[run_index].get("report_id") or ""
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"><title>{esc(color_key)} in '
                f"{esc(run_id)}: p95 {point['p95_ms']:.2f} ms</title></circle>"
            )
        if segment:
            segments.append(segment)
        for points in segments:
            if len(points) > 1:
                parts.append(
                    f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" stroke-width="2"/>'
                )
    axis_y = top + plot_height
    first, last = runs[0].get("created_at") or "", runs[-1].get("created_at") or ""
    parts.append(
        f'<text x="{left}" y="{axis_y + 16}" class="tick">{esc(str(first)[:19])}</text>'
        f'<text x="{left + plot_width}" y="{axis_y + 16}" text-anchor="end" class="tick">{esc(str(last)[:19])}</text>'
    )
    legend_top = axis_y + 34
    for index, key in enumerate(series):
        column, row = index % 2, index // 2
        x = left + column * (plot_width / 2)
        y = legend_top + row * 16
        parts.append(
            f'<rect x="{x:.1f}" y="{y - 9}" width="12" height="10" fill="{PALETTE[index % len(PALETTE)]}"/>'
            f'<text x="{x + 16:.1f}" y="{y}" class="tick"><title>{esc(key)}</title>{esc(_short(key, 48))}</text>'
        )
    height = legend_top + ((len(series) + 1) // 2) * 16 + 8
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="p95 latency over past runs" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">' + "".join(parts) + "</svg>"
    )


def sizes_chart(bars: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Draw one stacked bar (heap, TOAST, indexes) per labelled set of table sizes."""
    usable = [(label, sizes) for label, sizes in bars if sizes and any(sizes.get(k) for k in SIZE_COLORS)]
    if not usable:
        return '<p class="empty">No table sizes to compare.</p>'

    totals = [sum(sizes.get(k) or 0 for k in SIZE_COLORS) for _, sizes in usable]
    scale = max(totals) or 1
    area = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    bar_height, top = 22, 24

    parts: list[str] = []
    legend_x = LABEL_WIDTH
    for key, color in SIZE_COLORS.items():
        parts.append(
            f'<rect x="{legend_x}" y="4" width="12" height="10" fill="{color}"/>'
            f'<text x="{legend_x + 16}" y="13" class="tick">{SIZE_LABELS[key]}</text>'
        )
        legend_x += 90

    y = top
    for (label, sizes), total in zip(usable, totals, strict=True):
        x = float(LABEL_WIDTH)
        for key, color in SIZE_COLORS.items():
            value = sizes.get(key) or 0
            width = area * value / scale
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{bar_height}" fill="{color}">'
                f"<title>{esc(label)} {SIZE_LABELS[key]}: {value:,} bytes</title></rect>"
            )
            x += width
        parts.append(
            f'<text x="{LABEL_WIDTH - 8}" y="{y + 15}" text-anchor="end" class="label">{esc(_short(label))}</text>'
            f'<text x="{LABEL_WIDTH + area + 6}" y="{y + 15}" class="value">{esc(_short_bytes(total))}</text>'
        )
        y += bar_height + 10

    height = y + 4
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Table sizes" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">' + "".join(parts) + "</svg>"
    )
