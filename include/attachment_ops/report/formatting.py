"""Number formatting shared by the Markdown and HTML renderings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_UNITS = ("KiB", "MiB", "GiB", "TiB")


def format_ms(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def format_bytes(value: int | float | None) -> str:
    """Format a byte count exactly, with a binary-unit approximation when it is 1 KiB or more."""
    if value is None:
        return "–"
    exact = f"{int(value):,} B"
    scaled = float(value)
    unit = ""
    for candidate in _UNITS:
        if abs(scaled) < 1024:
            break
        scaled /= 1024
        unit = candidate
    return f"{exact} ({scaled:,.1f} {unit})" if unit else exact


def format_percentile(endpoint: Mapping[str, Any], percent: int) -> str:
    """Format a percentile, marking it with an asterisk when n is below its minimum."""
    value = endpoint.get(f"p{percent}_ms")
    text = format_ms(value)
    if value is not None and not endpoint.get(f"p{percent}_sufficient", True):
        text += "*"
    return text


def format_value(key: str, value: Any) -> str:
    """Format a chain or probe value: byte counts when the key contains "bytes", floats to 3 digits."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "–"
    if isinstance(value, int | float) and "bytes" in key:
        return format_bytes(value)
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def endpoint_flags(endpoint: Mapping[str, Any]) -> list[str]:
    """Return the short flags shown next to an endpoint: large payload, high spread, errors, skipped."""
    flags = []
    if endpoint.get("skipped"):
        flags.append("skipped")
    if endpoint.get("aborted"):
        flags.append("aborted")
    if endpoint.get("large_payload"):
        flags.append("large payload")
    if endpoint.get("high_spread"):
        flags.append("high spread")
    if endpoint.get("error_count"):
        kinds = ", ".join(f"{kind} {count}" for kind, count in endpoint["errors"].items() if count)
        flags.append(f"errors: {kinds}")
    return flags
