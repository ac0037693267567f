"""Check results, the preflight report, and its text and Markdown tables.

A check never passes silently: when it cannot measure, its status is UNKNOWN and its value
states why. The report's ``to_dict()`` is small and JSON-serialisable, so a task can push it to XCom.
"""

from __future__ import annotations

import enum
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from attachment_ops.errors import PreflightFailed

# Caps on what one result carries into XCom.
MAX_TEXT_CHARS = 500
MAX_LIST_ITEMS = 10


class Status(str, enum.Enum):
    """Outcome of one check, ordered from best to worst by ``severity``."""

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    UNKNOWN = "UNKNOWN"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Status.PASS: 0, Status.UNKNOWN: 1, Status.WARN: 2, Status.FAIL: 3}


@dataclass(frozen=True)
class CheckResult:
    """One row of the preflight table.

    ``value`` is the measurement as an operator reads it, with its unit. ``threshold`` is the
    limit applied and ``source`` where that limit comes from (a configuration key, or a default
    taken from kubelet or node_exporter). ``hint`` is a one-line fix, empty when nothing needs
    fixing. ``metrics`` contains the raw numbers for programs, and ``error`` the class name of the
    package error (``PermanentError``, ``TransientError``) when the check failed on one.
    """

    group: str
    name: str
    status: Status
    value: str
    threshold: str = ""
    source: str = ""
    hint: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "status": self.status.value,
            "value": _clip(self.value),
            "threshold": _clip(self.threshold),
            "source": _clip(self.source),
            "hint": _clip(self.hint),
            "metrics": _small(dict(self.metrics)),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        return cls(
            group=data["group"],
            name=data["name"],
            status=Status(data["status"]),
            value=data["value"],
            threshold=data.get("threshold", ""),
            source=data.get("source", ""),
            hint=data.get("hint", ""),
            metrics=data.get("metrics") or {},
            error=data.get("error"),
        )

    def one_line(self) -> str:
        """Format the result as one line: status, name, value, threshold and fix."""
        parts = [f"{self.status.value} {self.name}: {self.value}"]
        if self.threshold:
            where = f" ({self.source})" if self.source else ""
            parts.append(f"threshold {self.threshold}{where}")
        if self.hint:
            parts.append(f"fix: {self.hint}")
        return "; ".join(parts)


@dataclass(frozen=True)
class DiskSample:
    """Free space of one path at one time, for the time-to-full estimate of later runs."""

    host: str
    path: str
    recorded_at: float
    free_bytes: int
    total_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "path": self.path,
            "recorded_at": self.recorded_at,
            "free_bytes": self.free_bytes,
            "total_bytes": self.total_bytes,
        }


@dataclass(frozen=True)
class PreflightReport:
    """All check results of one preflight run, in the order the checks ran."""

    results: tuple[CheckResult, ...]
    started_at: float = 0.0
    duration_seconds: float = 0.0
    disk_samples: tuple[DiskSample, ...] = ()

    @property
    def failed(self) -> list[CheckResult]:
        return self._with(Status.FAIL)

    @property
    def warned(self) -> list[CheckResult]:
        return self._with(Status.WARN)

    @property
    def unknown(self) -> list[CheckResult]:
        return self._with(Status.UNKNOWN)

    @property
    def passed(self) -> list[CheckResult]:
        return self._with(Status.PASS)

    @property
    def status(self) -> Status:
        """Return the worst status of all results (PASS when there are none)."""
        return max((r.status for r in self.results), key=lambda s: s.severity, default=Status.PASS)

    def _with(self, status: Status) -> list[CheckResult]:
        return [result for result in self.results if result.status is status]

    def summary(self) -> str:
        counts = ", ".join(
            f"{len(self._with(status))} {status.value}"
            for status in (Status.FAIL, Status.WARN, Status.UNKNOWN, Status.PASS)
        )
        return f"Preflight {self.status.value}: {counts} in {self.duration_seconds:.1f} s"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "summary": self.summary(),
            "started_at": self.started_at,
            "duration_seconds": round(self.duration_seconds, 3),
            "results": [result.to_dict() for result in self.results],
            "disk_samples": [sample.to_dict() for sample in self.disk_samples],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreflightReport:
        return cls(
            results=tuple(CheckResult.from_dict(item) for item in data.get("results", [])),
            started_at=data.get("started_at", 0.0),
            duration_seconds=data.get("duration_seconds", 0.0),
            disk_samples=tuple(DiskSample(**item) for item in data.get("disk_samples", [])),
        )

    def as_table(self, style: Literal["text", "markdown"] = "text") -> str:
        """Render the results as a fixed-width text table (task log) or a Markdown table (report)."""
        if style == "markdown":
            return format_markdown_table(self.results)
        if style == "text":
            return format_text_table(self.results)
        raise ValueError(f"Unknown table style {style!r}. Expected 'text' or 'markdown'.")


def raise_for_failures(report: PreflightReport, *, unknown_is_failure: bool = False) -> None:
    """Raise PreflightFailed listing every FAIL row (and UNKNOWN rows when asked).

    :raises PreflightFailed: when at least one check failed, with one line per blocking row.
    """
    blocking = list(report.failed)
    if unknown_is_failure:
        blocking += report.unknown
    if not blocking:
        return
    lines = "\n".join(f"- {result.one_line()}" for result in blocking)
    raise PreflightFailed(
        f"Preflight stopped the run: {len(blocking)} of {len(report.results)} checks blocking.\n{lines}"
    )


_HEADERS = ("STATUS", "CHECK", "MEASURED", "THRESHOLD (SOURCE)", "FIX")
_TEXT_WIDTHS = (7, 28, 40, 40, 44)


def _row_cells(result: CheckResult) -> tuple[str, ...]:
    threshold = result.threshold
    if result.source:
        threshold = f"{threshold} ({result.source})" if threshold else f"({result.source})"
    return (result.status.value, result.name, result.value, threshold, result.hint)


def format_text_table(results: Iterable[CheckResult]) -> str:
    """Lay results out in fixed-width columns, wrapping long cells onto continuation lines."""
    rows = [_row_cells(result) for result in results]
    # A column is at most its cap wide, unless one word (a path, a URL) is longer: words are never split.
    widths = [
        max(
            len(header),
            min(cap, max((len(row[index]) for row in rows), default=0)),
            max((len(word) for row in rows for word in row[index].split()), default=0),
        )
        for index, (header, cap) in enumerate(zip(_HEADERS, _TEXT_WIDTHS, strict=True))
    ]
    separator = "+-" + "-+-".join("-" * width for width in widths) + "-+"
    lines = [separator, _text_line(_HEADERS, widths), separator]
    for row in rows:
        wrapped = [
            textwrap.wrap(cell, width, break_long_words=False, break_on_hyphens=False) or [""]
            for cell, width in zip(row, widths, strict=True)
        ]
        for line_index in range(max(len(cell) for cell in wrapped)):
            cells = [cell[line_index] if line_index < len(cell) else "" for cell in wrapped]
            lines.append(_text_line(cells, widths))
        lines.append(separator)
    return "\n".join(lines)


def _text_line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"


def format_markdown_table(results: Iterable[CheckResult]) -> str:
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    for result in results:
        cells = [_markdown_cell(cell) for cell in _row_cells(result)]
        cells[0] = f"**{cells[0]}**" if result.status is not Status.PASS else cells[0]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _small(value: Any) -> Any:
    """Trim strings and lists so that metrics stay small enough for XCom."""
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, Mapping):
        return {str(key): _small(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_small(item) for item in list(value)[:MAX_LIST_ITEMS]]
    return value


def format_bytes(count: float | None) -> str:
    """Format a byte count with binary units: ``1536`` gives ``1.5 KiB``."""
    if count is None:
        return "unknown"
    sign = "-" if count < 0 else ""
    amount = float(abs(count))
    if amount < 1024:
        return f"{sign}{amount:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        amount /= 1024
        if amount < 1024:
            return f"{sign}{amount:.1f} {unit}"
    return f"{sign}{amount / 1024:.1f} TiB"


def format_duration(seconds: float) -> str:
    """Format seconds as ``45 s``, ``12 min`` or ``3.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
