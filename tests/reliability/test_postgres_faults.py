"""Postgres faults: terminated backends, held row locks, a role-level statement_timeout, restarts.

Sessions are terminated only when they belong to a throwaway role of the test, so no other
project's sessions on the shared server are touched. Restarts, and locks that every ledger on a
server shares, happen on a throwaway cluster of this module alone.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from attachment_ops.db import connect
from attachment_ops.errors import PermanentError, TransientError
from attachment_ops.offload.mapping import resolve_table
from attachment_ops.offload.params import build_params
from attachment_ops.offload.planner import plan_offload
from attachment_ops.offload.restore import restore_rows
from attachment_ops.offload.worker import ROW_ATTEMPTS, run_batch
from attachment_ops.reclaim import full_reclaim, vacuum_analyze
from attachment_ops.report.database import collect_database_figures
from attachment_ops.verification import verify
from tests.offload.helpers import run_offload
from tests.reliability.dataset import (
    Dataset,
    assert_intact,
    offload_batches,
    offload_until_done,
    random_rows,
    repeated_offloads,
)
from tests.reliability.summary import RECORD

ROWS = 24
LOCK_TIMEOUT_MS = 300


class Terminator(threading.Thread):
    """Terminate a role's sessions each time a table's ledger reaches the next count of entries.

    Only sessions whose user is ``role`` and whose application_name is like ``application`` are
    terminated, through the superuser connection ``admin_dsn``.
    """

    def __init__(
        self,
        admin_dsn: str,
        dataset: Dataset,
        role: str,
        application: str,
        outcome: str,
        thresholds: list[int],
    ) -> None:
        super().__init__(daemon=True)
        self.admin_dsn = admin_dsn
        self.dataset = dataset
        self.role = role
        self.application = application
        self.outcome = outcome
        self.thresholds = sorted(thresholds)
        self.terminated: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        ledger = sql.Identifier(self.dataset.ledger_schema, "ledger")
        count = sql.SQL("SELECT count(*) FROM {} WHERE table_name = %s AND outcome = %s").format(ledger)
        table_name = f"{self.dataset.schema}.{self.dataset.table}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            while self.thresholds and not self.stop.is_set():
                try:
                    entries = conn.execute(count, (table_name, self.outcome)).fetchone()[0]
                except psycopg.errors.UndefinedTable:
                    entries = 0
                if entries >= self.thresholds[0]:
                    self.thresholds.pop(0)
                    ended = conn.execute(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE usename = %s AND application_name LIKE %s",
                        (self.role, self.application),
                    ).fetchone()[0]
                    self.terminated.append(ended)
                time.sleep(0.005)

    def __enter__(self) -> Terminator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=30)


def role_dataset(make_dataset: Any, throwaway_role: Any, rows: list, **sections: Any) -> Dataset:
    """A dataset whose table and ledger belong to the throwaway role, which the product connects as."""
    return make_dataset(rows, dsn=throwaway_role.dsn, **sections)


def test_backend_terminated_mid_batch(point, rng, make_dataset, throwaway_role, admin_dsn, s3_client):
    dataset = role_dataset(make_dataset, throwaway_role, random_rows(rng, ROWS, max_size=60_000))
    thresholds = rng.sample(range(1, ROWS), 3)

    with Terminator(
        admin_dsn, dataset, throwaway_role.name, "attachment_ops offload%", "started", thresholds
    ) as terminator:
        outcomes = offload_until_done(dataset, s3_client, run_id="offload", max_runs=5)

    terminated = sum(terminator.terminated)
    RECORD.fault("Postgres sessions terminated mid-batch", terminated)
    assert terminated >= 1
    assert outcomes[-1]["inline_rows"] == 0
    final = assert_intact(dataset, s3_client)
    assert final.offloaded == ROWS
    assert repeated_offloads(dataset.ledger()) == []
    assert verify(dataset.dsn, s3_client, dataset.config, scope="all").ok


def test_restore_survives_backend_termination(rng, make_dataset, throwaway_role, admin_dsn, s3_client):
    dataset = role_dataset(make_dataset, throwaway_role, random_rows(rng, 8, max_size=60_000))
    run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload")
    # The restore waits for this row's lock, and its session is terminated while it waits.
    holder = hold_row_lock(admin_dsn, dataset, 3)
    stop = threading.Event()
    terminated: list[int] = []

    def terminate_waiting_restore() -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            while not stop.is_set() and not terminated:
                ended = conn.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE usename = %s AND application_name LIKE 'attachment_ops restore%%'"
                    " AND wait_event_type = 'Lock'",
                    (throwaway_role.name,),
                ).fetchone()[0]
                if ended:
                    terminated.append(ended)
                time.sleep(0.01)

    thread = threading.Thread(target=terminate_waiting_restore, daemon=True)
    thread.start()
    try:
        try:
            restore_rows(
                dataset.dsn, s3_client, dataset.config, run_id="restore", row_ids=sorted(dataset.expected)
            )
        except TransientError:
            pass
    finally:
        stop.set()
        thread.join(timeout=10)
        holder.rollback()
        holder.close()

    assert terminated == [1]
    assert_intact(dataset, s3_client)
    assert dataset.offloaded_ids() == [3]


def hold_row_lock(dsn: str, dataset: Dataset, row_id: int) -> psycopg.Connection:
    """Lock one row FOR UPDATE in an open transaction of another session, as the application might."""
    holder = psycopg.connect(dsn)
    holder.execute(
        sql.SQL("SELECT id FROM {} WHERE id = %s FOR UPDATE").format(dataset.identifier), (row_id,)
    )
    return holder


def test_row_lock_delays_only_its_row(point, rng, make_dataset, s3_client, pg_dsn):
    dataset = make_dataset(
        random_rows(rng, 12, max_size=60_000), offload={"lock_timeout_ms": LOCK_TIMEOUT_MS}
    )
    locked = rng.choice(sorted(dataset.expected))
    holder = hold_row_lock(pg_dsn, dataset, locked)
    started = time.monotonic()
    try:
        summary, errors = offload_batches(dataset, s3_client, run_id="offload")
        elapsed = time.monotonic() - started
        during = verify(dataset.dsn, s3_client, dataset.config, scope="all")
    finally:
        holder.rollback()
        holder.close()

    RECORD.fault("Postgres row locked by another session", ROW_ATTEMPTS)
    RECORD.maximum("row lock: seconds until the batch gave up", round(elapsed, 2))
    assert len(errors) == 1
    assert f"(ids {locked})" in str(errors[0])
    assert "lock timeout" in str(errors[0])
    assert summary["inline_rows"] == 1
    assert dataset.inline_ids() == [locked]
    assert during.ok
    # Three attempts, each waiting lock_timeout, with backoff and the other rows' work around them.
    assert elapsed < ROW_ATTEMPTS * (LOCK_TIMEOUT_MS / 1000 + 0.2) + 5
    offload_until_done(dataset, s3_client, run_id="rerun")
    final = assert_intact(dataset, s3_client)
    assert final.offloaded == len(dataset.expected)


def test_restore_survives_row_lock(rng, make_dataset, s3_client, pg_dsn):
    dataset = make_dataset(random_rows(rng, 6, max_size=60_000), offload={"lock_timeout_ms": LOCK_TIMEOUT_MS})
    run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload")
    holder = hold_row_lock(pg_dsn, dataset, 3)
    try:
        with pytest.raises(TransientError, match="stay offloaded: 3"):
            restore_rows(
                dataset.dsn, s3_client, dataset.config, run_id="restore", row_ids=sorted(dataset.expected)
            )
    finally:
        holder.rollback()
        holder.close()
    assert dataset.offloaded_ids() == [3]


def test_reclaim_beside_row_lock(rng, make_dataset, s3_client, pg_dsn):
    dataset = make_dataset(random_rows(rng, 6, max_size=60_000), reclaim={"lock_timeout_ms": LOCK_TIMEOUT_MS})
    run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload", limit=3)
    holder = hold_row_lock(pg_dsn, dataset, 5)
    holder_pid = holder.info.backend_pid
    try:
        vacuumed = vacuum_analyze(dataset.dsn, dataset.config)
        started = time.monotonic()
        with pytest.raises(TransientError, match=rf"pid {holder_pid} ") as raised:
            full_reclaim(dataset.dsn, dataset.config, "vacuum_full")
        waited = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()

    RECORD.fault("Postgres lock held during VACUUM FULL")
    assert vacuumed["method"] == "vacuum_analyze"
    assert "reclaim.lock_timeout_ms" in str(raised.value)
    assert waited < LOCK_TIMEOUT_MS / 1000 + 5
    assert_intact(dataset, s3_client)


def test_role_statement_timeout_overridden(rng, make_dataset, throwaway_role, admin_dsn, s3_client):
    dataset = role_dataset(make_dataset, throwaway_role, random_rows(rng, 8, large=1))
    audited = dataclasses.replace(dataset, dsn=admin_dsn)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} SET statement_timeout = '1ms'").format(sql.Identifier(throwaway_role.name))
        )
    with psycopg.connect(throwaway_role.dsn, autocommit=True) as plain:
        inherited = plain.execute("SHOW statement_timeout").fetchone()[0]
        with pytest.raises(psycopg.errors.QueryCanceled):
            plain.execute("SELECT pg_sleep(0.05)")

    offloaded = run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload")
    verified = verify(dataset.dsn, s3_client, dataset.config, scope="all", reread_fraction=1.0)
    restored = restore_rows(dataset.dsn, s3_client, dataset.config, run_id="restore", row_ids=[1, 2, 3])
    vacuumed = vacuum_analyze(dataset.dsn, dataset.config)
    rewritten = full_reclaim(dataset.dsn, dataset.config, "vacuum_full")
    figures = collect_database_figures(dataset.dsn, dataset.config.mapping)

    RECORD.fault("Postgres role-level statement_timeout 1ms")
    assert inherited == "1ms"
    assert offloaded["rows_offloaded"] == 8
    assert verified.ok
    assert restored["rows_restored"] == 3
    assert vacuumed["session"]["statement_timeout"] == "1h"
    assert rewritten["method"] == "vacuum_full"
    assert figures["attachments"]["offloaded_rows"] == 5
    assert_intact(audited, s3_client)


def cluster_dataset(cluster: Any, make_dataset: Any, pg_schema: str, rows: list, **sections: Any) -> Dataset:
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(pg_schema)))
    return make_dataset(rows, dsn=cluster.dsn, **sections)


def test_restart_between_batches(point, rng, cluster, make_dataset, pg_schema, s3_client):
    dataset = cluster_dataset(cluster, make_dataset, pg_schema, random_rows(rng, ROWS, max_size=60_000))
    params = build_params(dataset.config, {"batch_rows": 4})
    with connect(dataset.dsn) as conn:
        plan = plan_offload(conn, resolve_table(conn, dataset.config.mapping), params)
    restart_after = set(rng.sample(range(len(plan.batches) - 1), 2))

    restarts: list[float] = []
    moved = 0
    for index, batch in enumerate(plan.batches):
        moved += run_batch(
            dataset.dsn, s3_client, dataset.config, params, batch.to_dict(), "offload"
        ).rows_offloaded
        if index in restart_after:
            restarts.append(cluster.restart())
    chosen = sorted(rng.sample(sorted(dataset.expected), 6))
    restore_rows(dataset.dsn, s3_client, dataset.config, run_id="restore", row_ids=chosen[:3])
    restarts.append(cluster.restart())
    restore_rows(dataset.dsn, s3_client, dataset.config, run_id="restore", row_ids=chosen[3:])
    restarts.append(cluster.restart())
    verified = verify(dataset.dsn, s3_client, dataset.config, scope="all")

    RECORD.fault("Postgres server restarted between batches", len(restarts))
    RECORD.maximum("server restart: seconds", round(max(restarts), 2))
    assert moved == ROWS
    assert verified.ok
    assert dataset.inline_ids() == chosen
    assert_intact(dataset, s3_client)


def test_restart_mid_batch(point, rng, cluster, make_dataset, pg_schema, s3_client):
    dataset = cluster_dataset(cluster, make_dataset, pg_schema, random_rows(rng, ROWS, max_size=400_000))
    threshold = rng.randint(2, ROWS - 2)
    restarted = threading.Event()

    def restart_when_reached() -> None:
        query = sql.SQL("SELECT count(*) FROM {} WHERE outcome = 'started'").format(
            sql.Identifier(dataset.ledger_schema, "ledger")
        )
        deadline = time.monotonic() + 60
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                try:
                    if conn.execute(query).fetchone()[0] >= threshold:
                        break
                except psycopg.errors.UndefinedTable:
                    pass
                time.sleep(0.002)
        cluster.restart()
        restarted.set()

    thread = threading.Thread(target=restart_when_reached, daemon=True)
    thread.start()
    first = offload_until_done(dataset, s3_client, run_id="offload", max_runs=1)
    thread.join(timeout=90)
    outcomes = first + offload_until_done(dataset, s3_client, run_id="rerun", max_runs=4)

    RECORD.fault("Postgres server restarted mid-batch")
    assert restarted.is_set()
    assert outcomes[0]["errors"] != []
    assert outcomes[-1]["inline_rows"] == 0
    final = assert_intact(dataset, s3_client)
    assert final.offloaded == ROWS
    assert repeated_offloads(dataset.ledger()) == []


def test_batch_setup_error_is_transient(rng, cluster, make_dataset, pg_schema, s3_client):
    dataset = cluster_dataset(
        cluster, make_dataset, pg_schema, random_rows(rng, 3), offload={"lock_timeout_ms": LOCK_TIMEOUT_MS}
    )
    params = build_params(dataset.config, {})
    with connect(dataset.dsn) as conn:
        plan = plan_offload(conn, resolve_table(conn, dataset.config.mapping), params)
    # ensure_schema serialises ledger creation with this transaction-level advisory lock.
    holder = psycopg.connect(cluster.dsn)
    holder.execute("SELECT pg_advisory_xact_lock(hashtextextended('attachment_ops.ledger', 0))")
    try:
        with pytest.raises(TransientError):
            run_batch(dataset.dsn, s3_client, dataset.config, params, plan.batches[0].to_dict(), "offload")
    finally:
        holder.rollback()
        holder.close()


def test_cluster_is_private(cluster):
    """The throwaway cluster listens on 127.0.0.1 only, on a port of its own."""
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        listen = conn.execute("SHOW listen_addresses").fetchone()[0]
        port = int(conn.execute("SHOW port").fetchone()[0])
    assert listen == "127.0.0.1"
    assert port == cluster.port
    assert port != int(os.environ.get("PGPORT", "0"))


def grant_to_role(admin_dsn: str, dataset: Dataset, role: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT ALL ON {} TO {}").format(dataset.identifier, sql.Identifier(role)))


def test_full_reclaim_by_non_owner_fails(rng, make_dataset, throwaway_role, admin_dsn):
    dataset = make_dataset(random_rows(rng, 3))
    grant_to_role(admin_dsn, dataset, throwaway_role.name)

    with pytest.raises(PermanentError, match="was not rewritten.*only table or database owner"):
        full_reclaim(throwaway_role.dsn, dataset.config, "vacuum_full")

    RECORD.bad_input(
        "VACUUM FULL by a role that does not own the table", "PermanentError: table not rewritten"
    )


def test_vacuum_by_non_owner_fails(rng, make_dataset, throwaway_role, admin_dsn):
    dataset = make_dataset(random_rows(rng, 3))
    grant_to_role(admin_dsn, dataset, throwaway_role.name)

    with pytest.raises(PermanentError, match="did not process .*only table or database owner"):
        vacuum_analyze(throwaway_role.dsn, dataset.config)

    RECORD.bad_input("VACUUM by a role that does not own the table", "PermanentError naming the skip")
