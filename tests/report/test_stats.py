from __future__ import annotations

import math

import pytest

from attachment_ops.report.stats import (
    median,
    min_samples_for_percentile,
    percentile_nearest_rank,
    summarize,
)


@pytest.mark.parametrize(
    ("samples", "percent", "expected"),
    [
        ([15, 20, 35, 40, 50], 5, 15),
        ([15, 20, 35, 40, 50], 30, 20),
        ([15, 20, 35, 40, 50], 40, 20),
        ([15, 20, 35, 40, 50], 50, 35),
        ([15, 20, 35, 40, 50], 100, 50),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 25, 7),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 50, 8),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 75, 15),
        ([20, 3, 16, 8, 13, 6, 15, 10, 8, 7], 75, 15),
        ([4.5], 99, 4.5),
        (list(range(1, 101)), 95, 95),
        (list(range(1, 101)), 99, 99),
        (list(range(1, 13)), 95, 12),
    ],
)
def test_nearest_rank_percentile(samples, percent, expected):
    assert percentile_nearest_rank(samples, percent) == expected


@pytest.mark.parametrize("percent", [0, -1, 100.5])
def test_percentile_rejects_bad_percent(percent):
    with pytest.raises(ValueError, match="percent must be in"):
        percentile_nearest_rank([1.0], percent)


def test_percentile_rejects_no_samples():
    with pytest.raises(ValueError, match="at least one sample"):
        percentile_nearest_rank([], 50)


@pytest.mark.parametrize(("percent", "expected"), [(50, 2), (90, 10), (95, 20), (99, 100), (99.9, 1000)])
def test_min_samples_rule(percent, expected):
    assert min_samples_for_percentile(percent) == expected


def test_summary_of_twelve_samples():
    summary = summarize([float(value) for value in range(1, 13)], high_spread_cv=0.5)
    assert summary["n"] == 12
    assert summary["mean_ms"] == 6.5
    assert summary["min_ms"] == 1.0
    assert summary["max_ms"] == 12.0
    assert summary["p50_ms"] == 6.0
    assert summary["p95_ms"] == 12.0
    assert summary["p99_ms"] == 12.0
    assert summary["stddev_ms"] == math.sqrt(13)
    assert summary["cv"] == math.sqrt(13) / 6.5
    assert summary["high_spread"] is True
    assert summary["p50_sufficient"] is True
    assert summary["p95_sufficient"] is False
    assert summary["p99_sufficient"] is False
    assert summary["percentile_method"] == "nearest-rank"


def test_summary_flags_sufficient_p95():
    summary = summarize([10.0] * 20, high_spread_cv=0.5)
    assert summary["p95_sufficient"] is True
    assert summary["p99_sufficient"] is False
    assert summary["stddev_ms"] == 0.0
    assert summary["high_spread"] is False


def test_summary_without_samples():
    summary = summarize([], high_spread_cv=0.5)
    assert summary["n"] == 0
    assert summary["mean_ms"] is None
    assert summary["p95_ms"] is None
    assert summary["stddev_ms"] is None
    assert summary["p50_sufficient"] is False


def test_summary_of_one_sample():
    summary = summarize([7.25], high_spread_cv=0.5)
    assert summary["p99_ms"] == 7.25
    assert summary["stddev_ms"] is None
    assert summary["cv"] is None


@pytest.mark.parametrize(
    ("values", "expected"), [([3.0], 3.0), ([5.0, 1.0, 3.0], 3.0), ([4.0, 1.0, 3.0, 2.0], 2.5)]
)
def test_median_of_values(values, expected):
    assert median(values) == expected
