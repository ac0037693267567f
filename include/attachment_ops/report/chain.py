"""Figures handed over by the maintenance chain, checked and put into the report's shape.

The chain passes one dict; every key is optional and unknown keys are kept as they are:

``run_id``
    the chain's DAG run id.
``preflight``
    the preflight report as a dict: ``status``, ``summary`` and ``results``, one entry per check
    with at least ``name``, ``status`` and ``value``.
``offload``
    ``{"rows": int, "bytes": int, "seconds": float, "failures": int}``; ``throughput_mib_s`` is
    computed from bytes and seconds when it is missing. The offload stage's own summary keys
    ``rows_offloaded``, ``bytes_offloaded``, ``failed_rows`` and ``mib_per_second_per_batch`` are
    renamed to these names when those are absent.
``verification``
    ``{"status": "passed" | "failed", ...}`` with any counts the verification stage returns.
``table_sizes``
    ``{"before": sizes, "after": sizes}`` around VACUUM, where sizes has ``heap_bytes``,
    ``toast_bytes``, ``indexes_bytes`` and ``total_bytes`` (``before_vacuum`` and ``after_vacuum``
    are accepted as names too).
``disk``
    ``{"before": {...}, "after": {...}}`` with ``path``, ``free_bytes`` and ``total_bytes``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from attachment_ops.errors import ConfigurationError

MIB = 1024 * 1024
SIZE_KEYS = ("heap_bytes", "toast_bytes", "indexes_bytes", "total_bytes")
OFFLOAD_ALIASES = {
    "rows_offloaded": "rows",
    "bytes_offloaded": "bytes",
    "failed_rows": "failures",
    "mib_per_second_per_batch": "throughput_mib_s",
}


def _number(section: str, key: str, value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"Chain figure {section}.{key} must be a number, got {value!r}.")
    return value


def _before_after(section: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"Chain figure {section} must be an object with before and after.")
    result = dict(raw)
    for old, new in (("before_vacuum", "before"), ("after_vacuum", "after")):
        if old in result and new not in result:
            result[new] = result.pop(old)
    for side in ("before", "after"):
        value = result.get(side)
        if value is not None and not isinstance(value, Mapping):
            raise ConfigurationError(f"Chain figure {section}.{side} must be an object, got {value!r}.")
    return result


def normalize_chain_figures(raw: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Return a JSON-serializable copy of the chain's figures with derived values added.

    :raises ConfigurationError: when a known figure has the wrong type or the dict does not
        serialize to JSON.
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"Chain figures must be a dict, got {type(raw).__name__}.")
    try:
        figures: dict[str, Any] = json.loads(json.dumps(dict(raw)))
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"Chain figures must serialize to JSON: {error}.") from error

    offload = figures.get("offload")
    if offload is not None:
        if not isinstance(offload, dict):
            raise ConfigurationError(f"Chain figure offload must be an object, got {offload!r}.")
        for alias, key in OFFLOAD_ALIASES.items():
            if offload.get(key) is None and offload.get(alias) is not None:
                offload[key] = offload.pop(alias)
        for key in ("rows", "bytes", "seconds", "failures", "throughput_mib_s"):
            _number("offload", key, offload.get(key))
        seconds = offload.get("seconds")
        if offload.get("throughput_mib_s") is None and offload.get("bytes") is not None and seconds:
            offload["throughput_mib_s"] = offload["bytes"] / MIB / seconds

    for section in ("table_sizes", "disk"):
        if figures.get(section) is not None:
            figures[section] = _before_after(section, figures[section])
    sizes = figures.get("table_sizes") or {}
    for side in ("before", "after"):
        for key in SIZE_KEYS:
            _number(f"table_sizes.{side}", key, (sizes.get(side) or {}).get(key))

    for section in ("preflight", "verification"):
        value = figures.get(section)
        if value is not None and not isinstance(value, dict):
            figures[section] = {"status": str(value)}
    return figures
