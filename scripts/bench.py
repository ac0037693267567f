"""Benchmark the offload: the machine's limit, a naive script, the library and Airflow, on the same data.

Called by `make bench` after the services are up and `.local/services.env` is exported. One run:

1. generates ``bench.document_attachments`` (demo scale, or ``--production``) with the demo
   generator, and a pristine copy of it; objects go to the bucket ``bench-attachments``;
2. for each of ``--runs`` rounds, resets the table and the bucket before every variant that
   writes, and measures the Postgres read limit, the S3 upload limit, the raw pipeline, the
   naive script, the library and `airflow dags test attachment_maintenance`, each in its own
   process (scripts/bench_variants.py, scripts/bench_airflow.py);
3. offloads a copy of the table plus one large blob (600 MB) through the library, for peak memory;
4. parses each DAG file with DagBag;
5. writes the figures (medians with min and max), ratios and targets to ``.local/bench/``
   (``results.json``, ``results.md``, and each process's log under ``logs/``) and prints the Markdown.

docs/benchmarks.md describes the method and contains the last recorded figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "include"), str(ROOT / "scripts")]

import bench_data  # noqa: E402
from bench_airflow import run_airflow  # noqa: E402
from bench_measure import run_variant  # noqa: E402
from bench_report import render_markdown, summarize  # noqa: E402

log = logging.getLogger("bench")

OUTPUT_DIR = ROOT / ".local" / "bench"
LIMIT_PREFIX = "limit/"
RAW_PREFIX = "raw/"
NAIVE_PREFIX = "naive/"
NAIVE_PAGE_ROWS = 10
# The upload limit keeps the values it sends in memory, loaded in waves of at most this size.
WAVE_BYTES = 1024 * 1024 * 1024
VARIANTS = ("pg_read", "s3_upload", "raw_pipeline", "naive", "library", "airflow")
# Variants that change the table or the bucket; the state is reset before each of them.
WRITING_VARIANTS = {"s3_upload", "raw_pipeline", "naive", "library", "airflow"}
# Variants that must leave no inline row behind.
OFFLOADING_VARIANTS = {"raw_pipeline", "naive", "library", "airflow"}


@dataclass(frozen=True)
class Settings:
    """Offload settings shared by every variant of one benchmark run."""

    workers_per_batch: int
    multipart_threshold_bytes: int
    part_size_bytes: int
    batch_rows: int
    naive_page_rows: int
    runs: int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description="Measure offload throughput, CPU time and memory against this machine's limit.",
    )
    parser.add_argument("--runs", type=int, default=3, help="measured rounds of each variant (default 3)")
    parser.add_argument(
        "--production",
        action="store_true",
        help="use the production-scale data set (3,748 rows, about 9.4 GiB) instead of the demo scale",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated data set (default 1)")
    parser.add_argument(
        "--batch-rows",
        type=int,
        help="rows per offload batch for the library and Airflow (default: offload.batch_rows, 200)",
    )
    parser.add_argument(
        "--big-blob-mb",
        type=int,
        default=600,
        help="size in MB (10^6 bytes) of the single large blob of the memory run (default 600); 0 skips it",
    )
    parser.add_argument(
        "--parse-repeats",
        type=int,
        default=10,
        help="timed parses of each DAG file after a warm-up (default 10)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="measure only these variants (a ratio needs both of its variants)",
    )
    parser.add_argument("--skip-parse", action="store_true", help="skip the DAG parse times")
    parser.add_argument(
        "--output-dir", type=Path, default=OUTPUT_DIR, help="where results and logs go (default .local/bench)"
    )
    return parser


def machine_description() -> dict[str, Any]:
    import airflow
    import boto3
    import psutil
    import psycopg

    disk = shutil.disk_usage(os.environ.get("PG_DATA_DIR", str(ROOT)))
    cpu_model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": f"{psutil.cpu_count()} logical cores ({cpu_model})",
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "disk": f"{disk.total / 2**30:.0f} GiB, {disk.free / 2**30:.0f} GiB free (Postgres data directory)",
        "os": platform.platform(),
        "python": platform.python_version(),
        "airflow": airflow.__version__,
        "psycopg": psycopg.__version__,
        "boto3": boto3.__version__,
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        **bench_data.server_versions(),
    }


def variant_specs(settings: Settings, data: bench_data.DataSet) -> dict[str, dict[str, Any]]:
    table, bucket = bench_data.TABLE, bench_data.BUCKET
    upload = {
        "table": table,
        "workers": settings.workers_per_batch,
        "bucket": bucket,
        "multipart_threshold_bytes": settings.multipart_threshold_bytes,
        "part_size_bytes": settings.part_size_bytes,
    }
    return {
        "pg_read": {"table": table, "workers": settings.workers_per_batch},
        "s3_upload": {**upload, "prefix": LIMIT_PREFIX, "wave_bytes": max(WAVE_BYTES, data.largest_bytes)},
        "raw_pipeline": {**upload, "prefix": RAW_PREFIX},
        "naive": {
            "table": table,
            "bucket": bucket,
            "prefix": NAIVE_PREFIX,
            "page_rows": settings.naive_page_rows,
        },
        "library": {
            "config": bench_data.maintenance_config(),
            "overrides": {"limit": bench_data.ROW_LIMIT, "batch_rows": settings.batch_rows},
        },
    }


def measure_round(
    number: int, variants: list[str], settings: Settings, data: bench_data.DataSet, client: Any, logs: Path
) -> dict[str, dict[str, Any]]:
    """Measure each variant once, resetting the table and the bucket before each one that writes."""
    specs = variant_specs(settings, data)
    results: dict[str, dict[str, Any]] = {}
    # pg_read changes nothing, so the variant after it starts from a clean state without a reset.
    dirty = True
    for variant in variants:
        if dirty:
            bench_data.reset_state(client, data)
        log_path = logs / f"round{number}-{variant}.log"
        if variant == "airflow":
            result = run_airflow(log_path, settings.batch_rows, data.rows, data.bytes)
        else:
            result = run_variant(variant, specs[variant], log_path)
        dirty = variant in WRITING_VARIANTS
        if variant in OFFLOADING_VARIANTS:
            left = bench_data.describe(bench_data.TABLE)
            if left.rows:
                raise RuntimeError(
                    f"{variant} left {left.rows} inline rows in {bench_data.TABLE}; see {log_path}"
                )
        results[variant] = result
        log.info(
            "Round %d, %s: %d rows, %.1f MB in %.2f s, %.1f MB/s",
            number,
            variant,
            result["rows"],
            result["bytes"] / 1e6,
            result["seconds"],
            result["bytes"] / 1e6 / result["seconds"] if result["seconds"] else 0.0,
        )
    return results


def measure_big_blob(client: Any, settings: Settings, seed: int, blob_mb: int, logs: Path) -> dict[str, Any]:
    """Offload a copy of the table plus one ``blob_mb`` MB row through the library; report its peak RSS."""
    log.info("Memory run: copying the table and adding one %d MB blob", blob_mb)
    data = bench_data.create_big_table(client, seed, blob_mb * 1000 * 1000)
    try:
        spec = {
            "config": bench_data.maintenance_config(table=bench_data.BIG_TABLE),
            "overrides": {"limit": bench_data.ROW_LIMIT, "batch_rows": settings.batch_rows},
        }
        result = run_variant("library", spec, logs / "big-blob-library.log")
        left = bench_data.describe(bench_data.BIG_TABLE)
        if left.rows:
            raise RuntimeError(f"The memory run left {left.rows} inline rows in {bench_data.BIG_TABLE}.")
    finally:
        bench_data.drop_big_table()
        bench_data.empty_bucket(client)
    result.update(table_rows=data.rows, table_bytes=data.bytes, largest_bytes=data.largest_bytes)
    return result


def measure_parse(repeats: int, logs: Path) -> list[dict[str, Any]]:
    """Time DagBag on each DAG file, each in a fresh process."""
    results = []
    for path in sorted((ROOT / "dags").glob("*.py")):
        if path.name.startswith("_"):
            continue
        log.info("Parsing %s", path.name)
        spec = {"path": str(path), "repeats": repeats}
        results.append(run_variant("parse", spec, logs / f"parse-{path.stem}.log"))
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    arguments = build_parser().parse_args(argv)
    if arguments.runs < 1:
        log.error("--runs must be at least 1, got %d.", arguments.runs)
        return 2
    required = ("APP_PG_DSN", "S3_ENDPOINT_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY")
    missing = [name for name in required if not os.environ.get(name)]
    if missing:
        log.error(
            "Missing environment variables %s: run `make bench`, or export .local/services.env first.",
            ", ".join(missing),
        )
        return 2

    from attachment_ops.config import load_config

    started = time.monotonic()
    config = load_config(bench_data.maintenance_config())
    storage, offload = config.section("storage"), config.section("offload")
    settings = Settings(
        workers_per_batch=offload["workers_per_batch"],
        multipart_threshold_bytes=storage["multipart_threshold_bytes"],
        part_size_bytes=storage["part_size_bytes"],
        batch_rows=arguments.batch_rows or offload["batch_rows"],
        naive_page_rows=NAIVE_PAGE_ROWS,
        runs=arguments.runs,
    )
    logs = arguments.output_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    scale = "production" if arguments.production else "demo"

    client = bench_data.s3_client()
    bench_data.ensure_bucket(client)
    bench_data.empty_bucket(client, keep_prefix=None)
    log.info("Generating %s at %s scale (seed %d)", bench_data.TABLE, scale, arguments.seed)
    generate_started = time.monotonic()
    bench_data.generate(scale, arguments.seed)
    generate_seconds = time.monotonic() - generate_started
    data = bench_data.describe(bench_data.TABLE, scale, arguments.seed)
    log.info(
        "Data set: %d inline rows, %.1f MB, largest %.1f MB, generated in %.0f s",
        data.rows,
        data.bytes / 1e6,
        data.largest_bytes / 1e6,
        generate_seconds,
    )

    rounds = [
        measure_round(number, arguments.only, settings, data, client, logs)
        for number in range(1, arguments.runs + 1)
    ]
    big = None
    if arguments.big_blob_mb:
        big = measure_big_blob(client, settings, arguments.seed, arguments.big_blob_mb, logs)
    parse = [] if arguments.skip_parse else measure_parse(arguments.parse_repeats, logs)

    results: dict[str, Any] = {
        "command": "make bench" + (f' BENCH_ARGS="{" ".join(argv)}"' if argv else ""),
        "machine": machine_description(),
        "data_set": asdict(data),
        "settings": asdict(settings),
        "generate_seconds": round(generate_seconds, 1),
        "rounds": rounds,
        "big_blob": big,
        "parse": parse,
    }
    results["summary"] = summarize(results)
    results["total_seconds"] = round(time.monotonic() - started, 1)
    arguments.output_dir.mkdir(parents=True, exist_ok=True)
    (arguments.output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    markdown = render_markdown(results)
    (arguments.output_dir / "results.md").write_text(markdown)
    print(markdown)
    log.info("Wrote %s in %.0f s", arguments.output_dir / "results.md", results["total_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
