"""SIGKILL of the offload, restore and reclaim processes at each step, then a rerun: nothing lost.

Each stage runs in a child process (``kill_runner``) that kills itself at the n-th call reaching
the chosen point, n drawn from the test's seeded generator. One kill point instead lives in the
fault proxy, which kills the child while the body of one of its PUT requests is half received.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from attachment_ops.offload.restore import restore_rows
from attachment_ops.reclaim import full_reclaim
from attachment_ops.storage import S3Settings
from attachment_ops.verification import verify
from tests.faults.s3_proxy import FaultProxy, Rule
from tests.offload.helpers import run_offload
from tests.reliability.dataset import Dataset, assert_intact, offload_until_done, random_rows
from tests.reliability.summary import RECORD

ROOT = Path(__file__).resolve().parents[2]
ROWS = 15
# A multipart row has three parts of 5 MiB (the last one short): three PUTs, three staging chunks.
PARTS = 3


def kill_dataset(make_dataset: Any, rng: Any, *, multipart: bool) -> Dataset:
    """A table of ``ROWS`` random rows, the first one large enough for a multipart upload if asked."""
    return make_dataset(random_rows(rng, ROWS, large=1 if multipart else 0))


def requests_per_table(multipart: bool) -> int:
    """PUT requests (or staging chunks) that one pass over a ``kill_dataset`` table makes."""
    return ROWS - 1 + PARTS if multipart else ROWS


def run_stage(spec: dict[str, Any], spec_dir: Path) -> subprocess.Popen:
    """Start ``kill_runner`` on ``spec`` (written to a file in ``spec_dir``) and return the process."""
    path = spec_dir / f"stage-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'include'}{os.pathsep}{ROOT}")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.kill_runner", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr[-3000:]


def stage_spec(dataset: Dataset, settings: S3Settings, stage: str, **values: Any) -> dict[str, Any]:
    return {
        "stage": stage,
        "dsn": dataset.dsn,
        "s3": asdict(settings),
        "config": dataset.config.data,
        "run_id": f"killed-{stage}",
        "overrides": {},
        **values,
    }


def offloaded_entries(dataset: Dataset) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _entry, _attempt, row_id, operation, outcome, _sha, _at in dataset.ledger():
        if operation == "offload" and outcome == "offloaded":
            counts[row_id] = counts.get(row_id, 0) + 1
    return counts


def unfinished_uploads(s3_client: Any, dataset: Dataset) -> int:
    listing = s3_client.list_multipart_uploads(Bucket=dataset.bucket, Prefix=dataset.config.prefix)
    return len(listing.get("Uploads", []))


def check_rerun_completes(dataset: Dataset, s3_client: Any) -> None:
    """Rerun until done, then audit, check the ledger and bucket, and let verification agree."""
    offload_until_done(dataset, s3_client)
    final = assert_intact(dataset, s3_client)
    assert final.offloaded == ROWS
    assert offloaded_entries(dataset) == {row_id: 1 for row_id in dataset.expected}
    assert unfinished_uploads(s3_client, dataset) == 0
    result = verify(dataset.dsn, s3_client, dataset.config, scope="all", reread_fraction=1.0)
    assert result.ok
    assert result.objects_ok == ROWS


# Calls that reach each kill point in one offload of a table: once per row, except between parts,
# which the multipart row reaches before each part after the first.
OFFLOAD_POINTS = {
    "after_read": ROWS,
    "between_parts": PARTS - 1,
    "before_verify": ROWS,
    "before_flip": ROWS,
    "inside_flip": ROWS,
    "after_flip_commit": ROWS,
}


@pytest.mark.parametrize("kill_point", list(OFFLOAD_POINTS))
def test_offload_killed_then_rerun(kill_point, point, rng, make_dataset, s3_settings, s3_client, tmp_path):
    # Odd points add a multipart row; killing between parts needs one.
    dataset = kill_dataset(make_dataset, rng, multipart=kill_point == "between_parts" or point % 2 == 1)
    call = rng.randint(1, OFFLOAD_POINTS[kill_point])

    process = run_stage(
        stage_spec(dataset, s3_settings, "offload", kill={"point": kill_point, "call": call}), tmp_path
    )
    returncode, stderr = finish(process)

    assert returncode == -signal.SIGKILL, f"call {call} of {kill_point} was never reached: {stderr}"
    RECORD.fault(f"SIGKILL offload {kill_point}")
    after_kill = assert_intact(dataset, s3_client)
    assert after_kill.inline + after_kill.offloaded == ROWS
    check_rerun_completes(dataset, s3_client)


@pytest.fixture
def fault_proxy() -> Any:
    proxy = FaultProxy(upstream=os.environ["S3_ENDPOINT_URL"]).start()
    yield proxy
    proxy.stop()


def test_offload_killed_mid_put_body(point, rng, make_dataset, s3_settings, s3_client, fault_proxy, tmp_path):
    dataset = kill_dataset(make_dataset, rng, multipart=True)
    call = rng.randint(1, requests_per_table(multipart=True))
    process: dict[str, subprocess.Popen] = {}
    fault_proxy.rules = [
        Rule("callback", method="PUT", after=call - 1, callback=lambda *_: process["child"].kill())
    ]
    proxied = S3Settings(**{**asdict(s3_settings), "endpoint_url": fault_proxy.url})

    process["child"] = run_stage(stage_spec(dataset, proxied, "offload"), tmp_path)
    returncode, stderr = finish(process["child"])

    assert returncode == -signal.SIGKILL, f"PUT {call} never reached the proxy: {stderr}"
    assert fault_proxy.rules[0].fired == 1
    RECORD.fault("SIGKILL offload mid PUT body")
    assert_intact(dataset, s3_client)
    check_rerun_completes(dataset, s3_client)


RESTORE_POINTS = {
    # Staging chunks: one per small row, one per part_size_bytes of the multipart row.
    "restore_mid_download": requests_per_table(multipart=True),
    "restore_before_flip": ROWS,
    "restore_inside_flip": ROWS,
    "restore_after_commit": ROWS,
}


def offloaded_dataset(make_dataset: Any, rng: Any, s3_client: Any, *, multipart: bool) -> Dataset:
    dataset = kill_dataset(make_dataset, rng, multipart=multipart)
    summary = run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload")
    assert summary["rows_offloaded"] == ROWS
    return dataset


@pytest.mark.parametrize("kill_point", list(RESTORE_POINTS))
def test_restore_killed_then_rerun(kill_point, point, rng, make_dataset, s3_settings, s3_client, tmp_path):
    multipart = kill_point == "restore_mid_download" or point % 2 == 1
    dataset = offloaded_dataset(make_dataset, rng, s3_client, multipart=multipart)
    call = rng.randint(1, RESTORE_POINTS[kill_point])

    process = run_stage(
        stage_spec(
            dataset,
            s3_settings,
            "restore",
            row_ids=sorted(dataset.expected),
            kill={"point": kill_point, "call": call},
        ),
        tmp_path,
    )
    returncode, stderr = finish(process)

    assert returncode == -signal.SIGKILL, f"call {call} of {kill_point} was never reached: {stderr}"
    RECORD.fault(f"SIGKILL restore {kill_point.removeprefix('restore_')}")
    assert_intact(dataset, s3_client)
    # Killed after the last row's commit, the restore left nothing to do.
    if dataset.offloaded_ids():
        summary = restore_rows(
            dataset.dsn, s3_client, dataset.config, run_id="restore-rerun", row_ids=dataset.offloaded_ids()
        )
        assert summary["failed"] == []
    final = assert_intact(dataset, s3_client)
    assert final.inline == ROWS


def staging_rows(dataset: Dataset) -> int:
    with psycopg.connect(dataset.dsn) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.restore_chunks").format(
            sql.Identifier(dataset.ledger_schema)
        )
        return conn.execute(query).fetchone()[0]


def test_killed_restore_leaves_no_staging(rng, make_dataset, s3_settings, s3_client, tmp_path):
    dataset = offloaded_dataset(make_dataset, rng, s3_client, multipart=True)
    process = run_stage(
        stage_spec(
            dataset,
            s3_settings,
            "restore",
            row_ids=sorted(dataset.expected),
            kill={"point": "restore_mid_download", "call": 2},
        ),
        tmp_path,
    )
    returncode, stderr = finish(process)
    assert returncode == -signal.SIGKILL, stderr

    restore_rows(
        dataset.dsn, s3_client, dataset.config, run_id="restore-rerun", row_ids=dataset.offloaded_ids()
    )

    assert_intact(dataset, s3_client)
    assert staging_rows(dataset) == 0


def test_full_reclaim_killed_then_rerun(rng, make_dataset, s3_settings, s3_client, admin_dsn, tmp_path):
    dataset = make_dataset(random_rows(rng, ROWS), reclaim={"lock_timeout_ms": 60000})
    run_offload(dataset.dsn, s3_client, dataset.config, run_id="offload", limit=ROWS // 2)
    holder = psycopg.connect(dataset.dsn)
    # An open transaction that read the table holds ACCESS SHARE, so VACUUM FULL waits for it.
    holder.execute(sql.SQL("SELECT count(*) FROM {}").format(dataset.identifier))
    process = run_stage(stage_spec(dataset, s3_settings, "full_reclaim"), tmp_path)
    try:
        backend = wait_for_backend(admin_dsn, f"%VACUUM (FULL%{dataset.schema}%", process)
        process.kill()
        returncode, _ = finish(process)
    finally:
        holder.rollback()
        holder.close()
    wait_until_gone(admin_dsn, backend)

    assert returncode == -signal.SIGKILL
    RECORD.fault("SIGKILL reclaim during VACUUM FULL")
    assert_intact(dataset, s3_client)
    result = full_reclaim(dataset.dsn, dataset.config, "vacuum_full")
    assert result["method"] == "vacuum_full"
    assert_intact(dataset, s3_client)


def wait_for_backend(admin_dsn: str, query_like: str, process: subprocess.Popen, timeout: float = 60) -> int:
    """Return the pid of the backend running a query like ``query_like`` and waiting for a lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            found = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE %s AND wait_event_type = 'Lock'",
                (query_like,),
            ).fetchone()
            if found:
                return found[0]
            assert process.poll() is None, f"the stage ended early: {finish(process)[1]}"
            time.sleep(0.02)
    raise AssertionError(f"No backend ran {query_like!r} within {timeout} s")


def wait_until_gone(admin_dsn: str, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None:
                return
            time.sleep(0.05)
    raise AssertionError(f"Backend {pid} was still running after {timeout} s")
