"""Summary statistics of latency samples: nearest-rank percentiles, spread and their limits.

Percentiles use the nearest-rank method: the p-th percentile of n sorted samples is the sample at
1-based rank ``ceil(p / 100 * n)``. It always returns a measured value, never an interpolation.

A percentile is marked sufficient only when ``n >= 100 / (100 - p)``, that is when the expected
number of samples above it, ``n * (100 - p) / 100``, is at least 1. So p50 needs 2 samples, p95
needs 20 and p99 needs 100. Below that
the nearest-rank value is the maximum (or close to it), and the report marks the figure with an
asterisk.

The standard deviation is the sample standard deviation (divisor n - 1). The coefficient of
variation is that standard deviation divided by the mean.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

PERCENTILES = (50, 95, 99)


def percentile_nearest_rank(samples: Sequence[float], percent: float) -> float:
    """Return the nearest-rank ``percent``-th percentile of ``samples``.

    :raises ValueError: when ``samples`` is empty or ``percent`` is outside (0, 100].
    """
    if not samples:
        raise ValueError("percentile_nearest_rank needs at least one sample, got none.")
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent!r}.")
    ordered = sorted(samples)
    rank = math.ceil(percent / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def min_samples_for_percentile(percent: float) -> int:
    """Return the smallest n at which the ``percent``-th percentile is reported as sufficient."""
    if not 0 < percent < 100:
        raise ValueError(f"percent must be in (0, 100), got {percent!r}.")
    # round() first, so that 100 / (100 - 99.9) = 1000.0000000000568 gives 1000, not 1001.
    return math.ceil(round(100 / (100 - percent), 9))


def summarize(samples_ms: Sequence[float], *, high_spread_cv: float) -> dict[str, Any]:
    """Return n, mean, min, percentiles, max, stddev, coefficient of variation and their flags.

    Values are in the unit of ``samples_ms`` (milliseconds in reports). With no samples every
    figure is None. ``stddev_ms`` and ``cv`` need at least 2 samples. ``high_spread`` is True when
    the coefficient of variation exceeds ``high_spread_cv``.
    """
    n = len(samples_ms)
    summary: dict[str, Any] = {
        "n": n,
        "mean_ms": None,
        "min_ms": None,
        "max_ms": None,
        "stddev_ms": None,
        "cv": None,
        "high_spread": False,
        "percentile_method": "nearest-rank",
    }
    for percent in PERCENTILES:
        summary[f"p{percent}_ms"] = None
        summary[f"p{percent}_sufficient"] = n >= min_samples_for_percentile(percent)
        summary[f"p{percent}_min_n"] = min_samples_for_percentile(percent)
    if n == 0:
        return summary

    mean = statistics.fmean(samples_ms)
    summary["mean_ms"] = mean
    summary["min_ms"] = min(samples_ms)
    summary["max_ms"] = max(samples_ms)
    for percent in PERCENTILES:
        summary[f"p{percent}_ms"] = percentile_nearest_rank(samples_ms, percent)
    if n >= 2:
        stddev = statistics.stdev(samples_ms)
        summary["stddev_ms"] = stddev
        if mean > 0:
            summary["cv"] = stddev / mean
            summary["high_spread"] = summary["cv"] > high_spread_cv
    return summary


def median(values: Sequence[float]) -> float:
    """Return the median of ``values`` (the mean of the two middle values for an even count)."""
    if not values:
        raise ValueError("median needs at least one value, got none.")
    return statistics.median(values)
