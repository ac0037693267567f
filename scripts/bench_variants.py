"""The measured variants of the benchmark, each run in its own process by scripts/bench.py.

Usage: ``python scripts/bench_variants.py VARIANT --spec JSON --output PATH``. Each variant sets
up untimed (imports, connections, the list of rows), then times its data phase and writes a JSON
result: rows, bytes, seconds and CPU seconds of the phase, and the peak RSS reached before it.
The parent reads the whole process's peak RSS and CPU time from ``wait4``.

Variants:

- ``pg_read``: the read limit. ``workers`` connections take rows from one queue and each reads
  whole values, binary, one row per query, discarding them.
- ``s3_upload``: the upload limit. The same bytes, with the same content types and the same
  concurrency, go to S3 with ``put_object`` up to the multipart threshold and as multipart
  uploads of ``part_size_bytes`` parts above it, without checksums. The values are loaded into
  memory untimed, in waves of at most ``wave_bytes``, so only the uploads are timed.
- ``raw_pipeline``: a diagnostic, not a limit. ``workers`` threads each read a row, upload it as
  ``s3_upload`` does and clear it with one autocommitted UPDATE: the work an offload cannot skip,
  without the package's locks, ledger, checksums or verification.
- ``naive``: the hand-run script's style. One connection and one thread page through the table
  with ``LIMIT/OFFSET`` in the default (text) result format, and for each row put the object,
  clear the value and commit.
- ``library``: the package's offload through its library, plan then ``run_batch`` for every
  batch in this one process, as the DAG's plan and mapped batch tasks do.
- ``parse``: parse one DAG file with ``DagBag``: once cold, once to warm up, then ``repeats``
  timed parses.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import resource
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "include"), str(ROOT / "scripts")]

log = logging.getLogger(__name__)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Phase:
    """Wall and CPU time of the timed part of a variant, and the CPU the servers used meanwhile.

    The servers' CPU includes whatever other clients of the same servers did at the time.
    """

    def __init__(self) -> None:
        from bench_measure import server_processes

        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.rss_before_kib = 0
        self.servers = server_processes()
        self.server_cpu_seconds = dict.fromkeys(self.servers, 0.0)

    def __enter__(self) -> Phase:
        from bench_measure import server_cpu

        self.rss_before_kib = _peak_rss_kib()
        self._servers = server_cpu(self.servers)
        self._wall = time.perf_counter()
        self._cpu = _cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        from bench_measure import server_cpu

        self.seconds += time.perf_counter() - self._wall
        self.cpu_seconds += _cpu_seconds() - self._cpu
        for name, seconds in server_cpu(self.servers).items():
            self.server_cpu_seconds[name] += seconds - self._servers[name]

    def result(self, rows: int, size: int, **extra: Any) -> dict[str, Any]:
        return {
            "rows": rows,
            "bytes": size,
            "seconds": round(self.seconds, 4),
            "cpu_seconds": round(self.cpu_seconds, 4),
            "rss_before_phase_kib": self.rss_before_kib,
            "server_cpu_seconds": {name: round(value, 3) for name, value in self.server_cpu_seconds.items()},
            **extra,
        }


def _inline_rows(table: str) -> list[tuple[int, int, str]]:
    """Return (id, size, content type) of the rows an offload moves, in id order."""
    import psycopg

    with psycopg.connect(os.environ["APP_PG_DSN"], autocommit=True) as conn:
        return conn.execute(
            f"SELECT id, octet_length(bytes), coalesce(content_type, 'application/octet-stream') FROM {table}"
            " WHERE storage_backend = 'db' AND bytes IS NOT NULL ORDER BY id"
        ).fetchall()


def _run_threads(workers: int, target: Callable[[int], None]) -> None:
    """Run ``target(n)`` in ``workers`` threads and re-raise the first error that any of them hit."""
    errors: list[BaseException] = []

    def guarded(number: int) -> None:
        try:
            target(number)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(n,), name=f"bench-{n}") for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def pg_read(spec: dict[str, Any]) -> dict[str, Any]:
    import psycopg

    table, workers = spec["table"], spec["workers"]
    rows = _inline_rows(table)
    work: queue.Queue[int] = queue.Queue()
    for row_id, _, _ in rows:
        work.put(row_id)
    connections = [psycopg.connect(os.environ["APP_PG_DSN"], autocommit=True) for _ in range(workers)]
    read_bytes = [0] * workers
    query = f"SELECT bytes FROM {table} WHERE id = %s"

    def read(number: int) -> None:
        with connections[number].cursor(binary=True) as cur:
            while True:
                try:
                    row_id = work.get_nowait()
                except queue.Empty:
                    return
                cur.execute(query, (row_id,))
                read_bytes[number] += len(cur.fetchone()[0])

    phase = Phase()
    with phase:
        _run_threads(workers, read)
    for conn in connections:
        conn.close()
    return phase.result(len(rows), sum(read_bytes), workers=workers)


def _upload(client: Any, bucket: str, key: str, data: bytes, content_type: str, spec: dict[str, Any]) -> None:
    if len(data) <= spec["multipart_threshold_bytes"]:
        client.put_object(
            Bucket=bucket, Key=key, Body=data, ContentLength=len(data), ContentType=content_type
        )
        return
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)["UploadId"]
    parts = []
    part_size = spec["part_size_bytes"]
    for number, offset in enumerate(range(0, len(data), part_size), start=1):
        chunk = data[offset : offset + part_size]
        response = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=chunk,
            ContentLength=len(chunk),
        )
        parts.append({"PartNumber": number, "ETag": response["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )


def s3_upload(spec: dict[str, Any]) -> dict[str, Any]:
    import psycopg

    from bench_data import s3_client

    table, workers, bucket = spec["table"], spec["workers"], spec["bucket"]
    rows = _inline_rows(table)
    client = s3_client()
    waves: list[list[tuple[int, int, str]]] = [[]]
    wave_bytes = 0
    for row in rows:
        if waves[-1] and wave_bytes + row[1] > spec["wave_bytes"]:
            waves.append([])
            wave_bytes = 0
        waves[-1].append(row)
        wave_bytes += row[1]

    phase = Phase()
    uploaded = 0
    with psycopg.connect(os.environ["APP_PG_DSN"], autocommit=True) as conn, conn.cursor(binary=True) as cur:
        for wave in waves:
            loaded: queue.Queue[tuple[int, bytes, str]] = queue.Queue()
            for row_id, _, content_type in wave:
                cur.execute(f"SELECT bytes FROM {table} WHERE id = %s", (row_id,))
                loaded.put((row_id, bytes(cur.fetchone()[0]), content_type))

            def put(_: int, loaded: queue.Queue[tuple[int, bytes, str]] = loaded) -> None:
                while True:
                    try:
                        row_id, data, content_type = loaded.get_nowait()
                    except queue.Empty:
                        return
                    _upload(client, bucket, f"{spec['prefix']}{row_id}", data, content_type, spec)

            with phase:
                _run_threads(workers, put)
            uploaded += sum(row[1] for row in wave)
    return phase.result(len(rows), uploaded, workers=workers, waves=len(waves))


def raw_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    import psycopg

    from bench_data import s3_client

    table, workers, bucket = spec["table"], spec["workers"], spec["bucket"]
    rows = _inline_rows(table)
    client = s3_client()
    work: queue.Queue[tuple[int, int, str]] = queue.Queue()
    for row in rows:
        work.put(row)
    connections = [psycopg.connect(os.environ["APP_PG_DSN"], autocommit=True) for _ in range(workers)]
    moved = [0] * workers

    def move(number: int) -> None:
        with connections[number].cursor(binary=True) as cur:
            while True:
                try:
                    row_id, _, content_type = work.get_nowait()
                except queue.Empty:
                    return
                cur.execute(f"SELECT bytes FROM {table} WHERE id = %s", (row_id,))
                data = bytes(cur.fetchone()[0])
                key = f"{spec['prefix']}{row_id}"
                _upload(client, bucket, key, data, content_type, spec)
                cur.execute(
                    f"UPDATE {table} SET bytes = NULL, storage_backend = 's3', storage_key = %s WHERE id = %s",
                    (key, row_id),
                )
                moved[number] += len(data)

    phase = Phase()
    with phase:
        _run_threads(workers, move)
    for conn in connections:
        conn.close()
    return phase.result(len(rows), sum(moved), workers=workers)


def naive(spec: dict[str, Any]) -> dict[str, Any]:
    import psycopg

    from bench_data import s3_client

    table, bucket, page_rows = spec["table"], spec["bucket"], spec["page_rows"]
    client = s3_client()
    conn = psycopg.connect(os.environ["APP_PG_DSN"])
    moved_rows = moved_bytes = 0
    offset = 0
    phase = Phase()
    with phase, conn.cursor() as cur:
        while True:
            # The whole table is paged, not only inline rows, because with a WHERE on the backend
            # column each committed flip would shift the later pages and OFFSET would skip rows.
            cur.execute(
                f"SELECT id, content_type, storage_backend, bytes FROM {table} ORDER BY id LIMIT %s OFFSET %s",
                (page_rows, offset),
            )
            page = cur.fetchall()
            conn.commit()
            if not page:
                break
            offset += len(page)
            for row_id, content_type, backend, data in page:
                if backend != "db" or data is None:
                    continue
                key = f"{spec['prefix']}{row_id}"
                client.put_object(
                    Bucket=bucket, Key=key, Body=data, ContentType=content_type or "application/octet-stream"
                )
                cur.execute(
                    f"UPDATE {table} SET bytes = NULL, storage_backend = 's3', storage_key = %s WHERE id = %s",
                    (key, row_id),
                )
                conn.commit()
                moved_rows += 1
                moved_bytes += len(data)
            del page
    conn.close()
    return phase.result(moved_rows, moved_bytes, page_rows=page_rows)


def library(spec: dict[str, Any]) -> dict[str, Any]:
    from attachment_ops.config import load_config
    from attachment_ops.db import connect
    from attachment_ops.offload.mapping import resolve_table
    from attachment_ops.offload.params import build_params
    from attachment_ops.offload.planner import plan_offload
    from attachment_ops.offload.worker import run_batch
    from bench_data import s3_client

    config = load_config(spec["config"])
    params = build_params(config, spec["overrides"])
    dsn = os.environ["APP_PG_DSN"]
    client = s3_client()
    run_id = f"bench-{uuid.uuid4().hex[:12]}"
    plan_seconds = 0.0
    results = []
    phase = Phase()
    with phase:
        started = time.perf_counter()
        with connect(dsn) as conn:
            table = resolve_table(conn, config.mapping)
            plan = plan_offload(conn, table, params)
        plan_seconds = time.perf_counter() - started
        for batch in plan.batches:
            results.append(run_batch(dsn, client, config, params, batch.to_dict(), run_id).to_dict())
    failed = sum(len(result["failed"]) for result in results)
    if failed:
        raise RuntimeError(f"The library offload left {failed} failed rows; see the log.")
    return phase.result(
        sum(result["rows_offloaded"] for result in results),
        sum(result["bytes_offloaded"] for result in results),
        batches=len(plan.batches),
        plan_seconds=round(plan_seconds, 4),
        run_batch_seconds_total=round(sum(result["elapsed_seconds"] for result in results), 4),
        run_id=run_id,
    )


def parse(spec: dict[str, Any]) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    path = spec["path"]

    def parse_once() -> tuple[float, DagBag]:
        started = time.perf_counter()
        bag = DagBag(dag_folder=path)
        return time.perf_counter() - started, bag

    cold, bag = parse_once()
    if bag.import_errors or not bag.dags:
        raise RuntimeError(f"{path} did not parse: {bag.import_errors or 'no DAG found'}")
    parse_once()
    timings = [parse_once()[0] for _ in range(spec["repeats"])]
    return {"path": path, "dags": sorted(bag.dag_ids), "cold_seconds": cold, "seconds": timings}


VARIANTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pg_read": pg_read,
    "s3_upload": s3_upload,
    "raw_pipeline": raw_pipeline,
    "naive": naive,
    "library": library,
    "parse": parse,
}


def main() -> int:
    parser = argparse.ArgumentParser(description="Run one measured benchmark variant.")
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--spec", required=True, help="JSON object with the variant's settings")
    parser.add_argument("--output", required=True, help="file that receives the JSON result")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = VARIANTS[arguments.variant](json.loads(arguments.spec))
    result["peak_rss_kib"] = _peak_rss_kib()
    Path(arguments.output).write_text(json.dumps(result))
    log.info("Variant %s finished: %s", arguments.variant, json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
