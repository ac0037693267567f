"""Two to four offload processes at once, an application writer and a restore, all on one table.

The writer inserts, updates (replacing the file inline, as the application does) and deletes
rows while the workers run, and records the last content it committed for each row. After a
final offload, every row must be inline with exactly those bytes or offloaded to an object with
their SHA-256, and deleted rows must stay deleted. The ledger must show no row worked on by two
attempts at once, and no content offloaded twice without a restore in between.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from dataclasses import asdict
from typing import Any

import psycopg
from psycopg import sql

from attachment_ops.config import MaintenanceConfig
from attachment_ops.errors import TransientError
from attachment_ops.offload.restore import restore_rows
from attachment_ops.storage import S3Settings, make_s3_client
from attachment_ops.verification import verify
from tests.reliability.dataset import (
    Content,
    Dataset,
    assert_intact,
    offload_until_done,
    overlapping_attempts,
    random_rows,
    repeated_offloads,
)
from tests.reliability.summary import RECORD

ROWS = 40
PASSES_PER_WORKER = 2
FIRST_INSERTED_ID = 10_000


def offload_worker(
    dataset_fields: dict[str, Any], settings: dict[str, Any], run_id: str, passes: int, results: Any
) -> None:
    """Run ``passes`` offload runs over the table in this process and report what happened."""
    dataset = Dataset(**{**dataset_fields, "config": MaintenanceConfig(dataset_fields["config"])})
    client = make_s3_client(S3Settings(**settings), dataset.config.section("storage"))
    outcomes = offload_until_done(dataset, client, run_id=run_id, max_runs=passes)
    results.put({"run_id": run_id, "offloaded": sum(o.get("rows_offloaded", 0) for o in outcomes)})


class Writer(threading.Thread):
    """The application: inserts, updates and deletes rows, and records what it committed."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        super().__init__(daemon=True)
        self.dataset = dataset
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.operations: dict[str, int] = {"insert": 0, "update": 0, "delete": 0}
        self.next_id = FIRST_INSERTED_ID
        self.error: BaseException | None = None

    def live_ids(self) -> list[int]:
        return sorted(set(self.dataset.expected) - self.dataset.deleted)

    def run(self) -> None:
        table = self.dataset.identifier
        try:
            with psycopg.connect(self.dataset.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    operation = self.rng.choices(["update", "insert", "delete"], weights=[5, 3, 2])[0]
                    if not self.live_ids():
                        operation = "insert"
                    if operation == "insert":
                        data = self.new_content(allow_empty=True)
                        conn.execute(
                            sql.SQL("INSERT INTO {} (id, filename, bytes) VALUES (%s, 'new.bin', %s)").format(
                                table
                            ),
                            (self.next_id, data),
                        )
                        self.dataset.expected[self.next_id] = None if data is None else Content.of(data)
                        self.next_id += 1
                    elif operation == "update":
                        row_id = self.rng.choice(self.live_ids())
                        data = self.new_content(allow_empty=False)
                        conn.execute(
                            sql.SQL(
                                "UPDATE {} SET bytes = %s, storage_backend = 'db', storage_key = NULL WHERE id = %s"
                            ).format(table),
                            (data, row_id),
                        )
                        self.dataset.expected[row_id] = Content.of(data)
                    else:
                        row_id = self.rng.choice(self.live_ids())
                        conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table), (row_id,))
                        self.dataset.deleted.add(row_id)
                    self.operations[operation] += 1
                    time.sleep(self.rng.uniform(0.005, 0.02))
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error

    def new_content(self, *, allow_empty: bool) -> bytes | None:
        if allow_empty and self.rng.random() < 0.1:
            return self.rng.choice([None, b""])
        return self.rng.randbytes(self.rng.randint(1, 80_000))


class Restorer(threading.Thread):
    """Restores a few random offloaded rows at a time while the offload runs."""

    def __init__(self, dataset: Dataset, client: Any, seed: int) -> None:
        super().__init__(daemon=True)
        self.dataset = dataset
        self.client = client
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.restored = 0
        self.transient: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                offloaded = self.dataset.offloaded_ids()
                if offloaded:
                    chosen = self.rng.sample(offloaded, min(3, len(offloaded)))
                    try:
                        summary = restore_rows(
                            self.dataset.dsn,
                            self.client,
                            self.dataset.config,
                            run_id="restore",
                            row_ids=chosen,
                        )
                        self.restored += summary["rows_restored"]
                    except TransientError as error:
                        self.transient.append(str(error))
                time.sleep(0.05)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error


def test_workers_writer_and_restore(point, rng, make_dataset, s3_settings, s3_client):
    dataset = make_dataset(
        random_rows(rng, ROWS, max_size=80_000),
        offload={"batch_rows": 4, "workers_per_batch": 2},
    )
    workers = rng.randint(2, 4)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    fields = {**asdict(dataset), "config": dataset.config.data, "expected": {}, "deleted": set()}
    processes = [
        context.Process(
            target=offload_worker,
            args=(fields, asdict(s3_settings), f"worker-{n}", PASSES_PER_WORKER, results),
        )
        for n in range(workers)
    ]
    writer = Writer(dataset, rng.randrange(2**32))
    restorer = Restorer(
        dataset, make_s3_client(s3_settings, dataset.config.section("storage")), rng.randrange(2**32)
    )

    writer.start()
    restorer.start()
    for process in processes:
        process.start()
    reports = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    writer.stop.set()
    restorer.stop.set()
    writer.join(timeout=30)
    restorer.join(timeout=60)
    final_runs = offload_until_done(dataset, s3_client, run_id="final")

    RECORD.fault("concurrency: 2-4 offload processes, a writer and a restore")
    RECORD.add("concurrency: offload processes", workers)
    RECORD.add("concurrency: application inserts, updates, deletes", sum(writer.operations.values()))
    RECORD.add("concurrency: rows restored beside the offload", restorer.restored)
    assert writer.error is None
    assert restorer.error is None
    assert all(process.exitcode == 0 for process in processes)
    assert sum(report["offloaded"] for report in reports) > 0
    assert writer.operations["update"] > 0
    assert writer.operations["delete"] > 0
    assert final_runs[-1]["inline_rows"] == 0
    final = assert_intact(dataset, s3_client)
    assert final.offloaded + final.inline == len(dataset.expected) - len(dataset.deleted)
    ledger = dataset.ledger()
    assert overlapping_attempts(ledger) == []
    assert repeated_offloads(ledger) == []
    assert verify(dataset.dsn, s3_client, dataset.config, scope="all", reread_fraction=1.0).ok
