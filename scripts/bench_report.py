"""Turn the benchmark's raw results into medians, ratios, target checks and Markdown tables.

Throughput is in MB/s with MB = 10^6 bytes, and memory is in MiB. Ratios are computed within each
round (the library against the limit measured in the same round), then summarized as a median
with min and max, so slow periods on the shared machine hit both sides of a ratio alike.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench_measure import spread

LABELS = {
    "pg_read": "Limit: Postgres read",
    "s3_upload": "Limit: S3 upload",
    "raw_pipeline": "Raw pipeline (read, upload, clear; no checks)",
    "naive": "Naive script",
    "library": "Package (library)",
    "airflow": "Package (Airflow, offload part)",
}
TARGET_OF_LIMIT = 0.8
TARGET_OF_NAIVE = 2.0
TARGET_AIRFLOW_OVERHEAD = 0.15
TARGET_PEAK_RSS_MIB = 300
TARGET_PARSE_MS = 50


def _mb_per_second(result: dict[str, Any]) -> float:
    return result["bytes"] / 1e6 / result["seconds"] if result["seconds"] else 0.0


def _peak_rss_mib(variant: str, result: dict[str, Any]) -> float:
    # Airflow runs its tasks inside the `airflow dags test` process, so its figure is that process's
    # peak during the offload tasks. The other variants report their own process's ru_maxrss.
    key = "peak_rss_kib" if variant == "airflow" else "process_peak_rss_kib"
    return result[key] / 1024


def _server_cpu(result: dict[str, Any], server: str) -> float:
    return result.get("server_cpu_seconds", {}).get(server, float("nan"))


def _variant_summary(variant: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {
        "mb_per_second": spread([_mb_per_second(result) for result in results]),
        "rows_per_second": spread([result["rows"] / result["seconds"] for result in results]),
        "seconds": spread([result["seconds"] for result in results]),
        "cpu_seconds": spread([result["cpu_seconds"] for result in results]),
        "process_cpu_seconds": spread([result["process_cpu_seconds"] for result in results]),
        "peak_rss_mib": spread([_peak_rss_mib(variant, result) for result in results]),
        "postgres_cpu_seconds": spread([_server_cpu(result, "postgres") for result in results]),
        "seaweedfs_cpu_seconds": spread([_server_cpu(result, "seaweedfs") for result in results]),
        "machine_busy_percent": spread([result["machine_busy_percent"] for result in results]),
        "load_average_at_start": spread([result["load_average_at_start"] for result in results]),
        "rows": results[0]["rows"],
        "bytes": results[0]["bytes"],
    }
    if variant == "airflow":
        summary["process_seconds"] = spread([result["process_seconds"] for result in results])
        summary["process_peak_rss_mib"] = spread(
            [result["process_peak_rss_kib"] / 1024 for result in results]
        )
        summary["rss_at_offload_start_mib"] = spread(
            [result["rss_at_offload_start_kib"] / 1024 for result in results]
        )
        summary["batch_seconds_total"] = spread([result["batch_seconds_total"] for result in results])
    if variant in ("library", "airflow"):
        summary["run_batch_seconds_total"] = spread([result["run_batch_seconds_total"] for result in results])
    return summary


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Return medians per variant, per-round ratios and the target checks."""
    rounds: list[dict[str, dict[str, Any]]] = results["rounds"]
    variants = [name for name in LABELS if all(name in round_ for round_ in rounds)]
    summary: dict[str, Any] = {
        "variants": {name: _variant_summary(name, [round_[name] for round_ in rounds]) for name in variants}
    }
    ratios: dict[str, list[float]] = {}
    if {"pg_read", "s3_upload"} <= set(variants):
        limits = [min(_mb_per_second(r["pg_read"]), _mb_per_second(r["s3_upload"])) for r in rounds]
        summary["limit_mb_per_second"] = spread(limits)
        bound = [
            "Postgres read" if _mb_per_second(r["pg_read"]) <= _mb_per_second(r["s3_upload"]) else "S3 upload"
            for r in rounds
        ]
        summary["limit_side"] = statistics.mode(bound)
        if "library" in variants:
            ratios["package_to_limit"] = [
                _mb_per_second(r["library"]) / limit for r, limit in zip(rounds, limits, strict=True)
            ]
    if {"library", "raw_pipeline"} <= set(variants):
        ratios["package_to_raw_pipeline"] = [
            _mb_per_second(r["library"]) / _mb_per_second(r["raw_pipeline"]) for r in rounds
        ]
    if {"library", "naive"} <= set(variants):
        ratios["package_to_naive"] = [
            _mb_per_second(r["library"]) / _mb_per_second(r["naive"]) for r in rounds
        ]
    if {"library", "airflow"} <= set(variants):
        ratios["airflow_to_library"] = [
            _mb_per_second(r["airflow"]) / _mb_per_second(r["library"]) for r in rounds
        ]
        ratios["airflow_overhead"] = [r["airflow"]["seconds"] / r["library"]["seconds"] - 1 for r in rounds]
    summary["ratios"] = {name: spread(values) for name, values in ratios.items()}

    targets: list[dict[str, Any]] = []
    if "package_to_limit" in ratios:
        value = summary["ratios"]["package_to_limit"]["median"]
        targets.append(
            _target("Package / limit", f"{value:.2f}", f">= {TARGET_OF_LIMIT}", value >= TARGET_OF_LIMIT)
        )
    if "package_to_naive" in ratios:
        value = summary["ratios"]["package_to_naive"]["median"]
        targets.append(
            _target("Package / naive", f"{value:.2f}x", f">= {TARGET_OF_NAIVE}x", value >= TARGET_OF_NAIVE)
        )
    if "airflow_overhead" in ratios:
        value = summary["ratios"]["airflow_overhead"]["median"]
        targets.append(
            _target(
                "Airflow overhead (offload part vs library)",
                f"{value:+.1%}",
                f"<= {TARGET_AIRFLOW_OVERHEAD:.0%}",
                value <= TARGET_AIRFLOW_OVERHEAD,
            )
        )
    peaks = [summary["variants"][name]["peak_rss_mib"]["max"] for name in ("library",) if name in variants]
    big = results.get("big_blob")
    if big:
        peaks.append(big["process_peak_rss_kib"] / 1024)
        summary["big_blob_peak_rss_mib"] = big["process_peak_rss_kib"] / 1024
    if peaks:
        value = max(peaks)
        label = "Peak RSS of the library process" + (" (incl. the large-blob run)" if big else "")
        targets.append(
            _target(label, f"{value:.0f} MiB", f"< {TARGET_PEAK_RSS_MIB} MiB", value < TARGET_PEAK_RSS_MIB)
        )
    for parsed in results.get("parse", []):
        median_ms = statistics.median(parsed["seconds"]) * 1000
        name = parsed["path"].rsplit("/", 1)[-1]
        targets.append(
            _target(
                f"Parse {name}", f"{median_ms:.1f} ms", f"< {TARGET_PARSE_MS} ms", median_ms < TARGET_PARSE_MS
            )
        )
    summary["targets"] = targets
    return summary


def _target(name: str, value: str, target: str, met: bool) -> dict[str, Any]:
    return {"name": name, "value": value, "target": target, "met": met}


def _cell(figures: dict[str, float], digits: int = 1) -> str:
    return f"{figures['median']:.{digits}f} ({figures['min']:.{digits}f}–{figures['max']:.{digits}f})"


RATIO_LABELS = {
    "package_to_limit": "Package / pipeline limit (MB/s)",
    "package_to_raw_pipeline": "Package / raw pipeline (MB/s)",
    "package_to_naive": "Package / naive (MB/s)",
    "airflow_to_library": "Airflow / library (MB/s, offload parts)",
    "airflow_overhead": "Airflow overhead (time, offload parts)",
}


def _variants_table(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| Variant | MB/s | rows/s | wall s | CPU s | CPU s, whole process | Postgres CPU s | SeaweedFS CPU s "
        "| peak RSS MiB | machine busy % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figures in summary["variants"].items():
        lines.append(
            f"| {LABELS[name]} | {_cell(figures['mb_per_second'])} | {_cell(figures['rows_per_second'])} | "
            f"{_cell(figures['seconds'], 2)} | {_cell(figures['cpu_seconds'], 2)} | "
            f"{_cell(figures['process_cpu_seconds'], 2)} | {_cell(figures['postgres_cpu_seconds'], 2)} | "
            f"{_cell(figures['seaweedfs_cpu_seconds'], 2)} | {_cell(figures['peak_rss_mib'], 0)} | "
            f"{_cell(figures['machine_busy_percent'], 0)} |"
        )
    loads = [figures["load_average_at_start"]["median"] for figures in summary["variants"].values()]
    if loads:
        lines += [
            "",
            f"One-minute load average when the variants started: {min(loads):.1f} to {max(loads):.1f} "
            "(medians per variant). Other work on the same machine lowers every figure.",
        ]
    return lines


def _limit_and_airflow_notes(summary: dict[str, Any]) -> list[str]:
    lines = []
    if "limit_mb_per_second" in summary:
        lines += [
            "",
            f"Pipeline limit (lower of the two limits, per round): {_cell(summary['limit_mb_per_second'])} MB/s, "
            f"set by {summary['limit_side']} in most rounds.",
        ]
    airflow = summary["variants"].get("airflow")
    if not airflow:
        return lines
    note = (
        f"Airflow whole run (`airflow dags test`, all tasks): {_cell(airflow['process_seconds'], 1)} s. Peak RSS "
        f"of the `airflow dags test` process: {_cell(airflow['process_peak_rss_mib'], 0)} MiB over the whole "
        f"run, {_cell(airflow['peak_rss_mib'], 0)} MiB during the offload tasks, which started at "
        f"{_cell(airflow['rss_at_offload_start_mib'], 0)} MiB. The offload_batch tasks took "
        f"{_cell(airflow['batch_seconds_total'], 2)} s, of which run_batch itself took "
        f"{_cell(airflow['run_batch_seconds_total'], 2)} s."
    )
    library = summary["variants"].get("library")
    if library:
        note += f" In the library variant, run_batch took {_cell(library['run_batch_seconds_total'], 2)} s."
    return [*lines, "", note]


def _ratios_table(summary: dict[str, Any]) -> list[str]:
    if not summary["ratios"]:
        return []
    lines = ["", "| Ratio | median (min–max) |", "|---|---|"]
    for name, figures in summary["ratios"].items():
        lines.append(f"| {RATIO_LABELS[name]} | {_cell(figures, 2)} |")
    return lines


def _big_blob_note(results: dict[str, Any]) -> list[str]:
    big = results.get("big_blob")
    if not big:
        return []
    return [
        "",
        f"Large blob: {big['table_rows'] - 1} inline rows of `{results['data_set']['table']}` plus one row of "
        f"{big['largest_bytes'] / 1e6:.0f} MB ({big['table_bytes'] / 1e6:.0f} MB in all), offloaded through the "
        f"library: peak RSS {big['process_peak_rss_kib'] / 1024:.0f} MiB "
        f"({big['rss_before_phase_kib'] / 1024:.0f} MiB before the data phase), "
        f"{big['bytes'] / 1e6 / big['seconds']:.1f} MB/s, {big['seconds']:.1f} s.",
    ]


def _parse_table(results: dict[str, Any]) -> list[str]:
    if not results.get("parse"):
        return []
    lines = ["", "| DAG file | parse ms, median (min–max) | first parse ms |", "|---|---|---|"]
    for parsed in results["parse"]:
        timings = [seconds * 1000 for seconds in parsed["seconds"]]
        name = parsed["path"].rsplit("/", 1)[-1]
        lines.append(f"| {name} | {_cell(spread(timings), 1)} | {parsed['cold_seconds'] * 1000:.0f} |")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """Render the summary as Markdown tables (medians with min–max in brackets)."""
    summary = results["summary"]
    data = results["data_set"]
    settings = results["settings"]
    lines = [
        f"Data set: `{data['table']}`, {data['scale']} scale, seed {data['seed']}: {data['rows']} inline rows, "
        f"{data['bytes'] / 1e6:.1f} MB, largest {data['largest_bytes'] / 1e6:.1f} MB. "
        f"{settings['runs']} round{'s' if settings['runs'] != 1 else ''}, concurrency {settings['workers_per_batch']}, batches of "
        f"{settings['batch_rows']} rows, multipart above {settings['multipart_threshold_bytes'] / 2**20:.0f} MiB "
        f"in {settings['part_size_bytes'] / 2**20:.0f} MiB parts. "
        f"Total benchmark time {results.get('total_seconds', 0):.0f} s.",
        "",
    ]
    lines += _variants_table(summary)
    lines += _limit_and_airflow_notes(summary)
    lines += _ratios_table(summary)
    lines += _big_blob_note(results)
    lines += _parse_table(results)

    if summary["targets"]:
        lines += ["", "| Target | measured | target | met |", "|---|---|---|---|"]
    for target in summary["targets"]:
        met = "yes" if target["met"] else "**no**"
        lines.append(f"| {target['name']} | {target['value']} | {target['target']} | {met} |")
    return "\n".join(lines) + "\n"
