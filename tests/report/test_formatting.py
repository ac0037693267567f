from __future__ import annotations

import pytest

from attachment_ops.report.formatting import endpoint_flags, format_bytes, format_percentile, format_value
from attachment_ops.report.markdown import render_markdown


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "–"),
        (0, "0 B"),
        (1023, "1,023 B"),
        (1024, "1,024 B (1.0 KiB)"),
        (14715, "14,715 B (14.4 KiB)"),
        (325_000, "325,000 B (317.4 KiB)"),
        (5 * 1024**3, "5,368,709,120 B (5.0 GiB)"),
    ],
)
def test_byte_counts_formatted(value, text):
    assert format_bytes(value) == text


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("bytes_offloaded", 2048, "2,048 B (2.0 KiB)"),
        ("free_bytes", 10, "10 B"),
        ("rows", 1200, "1,200"),
        ("seconds", 0.9, "0.900"),
        ("passed", True, "true"),
        ("missing", None, "–"),
        ("status", "passed", "passed"),
    ],
)
def test_chain_values_formatted(key, value, text):
    assert format_value(key, value) == text


@pytest.mark.parametrize(("n", "text"), [(12, "9.10*"), (20, "9.10")])
def test_insufficient_percentile_marked(n, text):
    endpoint = {"n": n, "p95_ms": 9.1, "p95_sufficient": n >= 20}
    assert format_percentile(endpoint, 95) == text


def test_endpoint_flags_listed():
    endpoint = {
        "large_payload": True,
        "high_spread": True,
        "aborted": True,
        "error_count": 3,
        "errors": {"timeout": 2, "refused": 0, "http_5xx": 1, "http_4xx": 0, "other": 0},
    }
    assert endpoint_flags(endpoint) == [
        "aborted",
        "large payload",
        "high spread",
        "errors: timeout 2, http_5xx 1",
    ]


def test_markdown_cells_escaped():
    endpoint = {
        "name": "a|b\nc <i>",
        "connection": "api",
        "n": 0,
        "errors": {},
        "error_count": 0,
        "samples_ms": [],
    }
    report = {
        "report_id": "20260101T000000Z_x",
        "created_at": "2026-01-01T00:00:00+00:00",
        "trigger": "standalone",
        "http": {
            "settings": {"samples": 1, "warmup": 0},
            "endpoints": [endpoint],
            "method": {"note": "n", "percentiles": "p", "percentile_rule": "r", "stddev": "s", "bytes": "b"},
        },
    }
    text = render_markdown(report)
    assert "| a\\|b c &lt;i> | direct | 0 |" in text
