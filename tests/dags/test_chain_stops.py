"""A failed preflight stops the chain before any heavy stage, through Airflow itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.offload.conftest import insert_rows, make_table, random_rows

ROOT = Path(__file__).resolve().parents[2]
HEAVY_TASKS = ("plan", "offload_batch", "summarize", "verify", "vacuum_analyze", "full_reclaim")

pytestmark = pytest.mark.airflow


def test_preflight_fail_stops_heavy_stages(pg_dsn, pg_schema, bucket, tmp_path):
    make_table(pg_dsn, pg_schema)
    insert_rows(pg_dsn, pg_schema, random_rows(4))
    config = {
        "attachments": {"table": f"{pg_schema}.document_attachments"},
        "storage": {"bucket": bucket},
        "offload": {"ledger_schema": f"{pg_schema}_ledger"},
        # No disk has 99.99% free, so the disk check fails on every machine.
        "preflight": {
            "disk_paths": [str(tmp_path)],
            "disk_default_paths": False,
            "docker_enabled": False,
            "disk_fail_free_percent": 99.99,
            "disk_warn_free_percent": 99.995,
        },
        "report": {"local_dir": str(tmp_path / "reports")},
    }
    env = {**os.environ, "AIRFLOW_VAR_MAINTENANCE_CONFIG": json.dumps(config)}

    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "airflow"),
            "dags",
            "test",
            "attachment_maintenance",
            "--conf",
            json.dumps({"limit": 10}),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    output = result.stdout + result.stderr
    assert "Preflight stopped the run" in output
    assert "disk" in output
    assert "free space" in output
    started = [task_id for task_id in HEAVY_TASKS if f"[DAG TEST] starting task_id={task_id} " in output]
    assert "[DAG TEST] starting task_id=preflight " in output
    assert started == []
    with psycopg.connect(pg_dsn) as conn:
        backends = conn.execute(
            sql.SQL("SELECT DISTINCT storage_backend FROM {}").format(
                sql.Identifier(pg_schema, "document_attachments")
            )
        ).fetchall()
        ledger = conn.execute("SELECT to_regclass(%s)", (f"{pg_schema}_ledger.ledger",)).fetchone()[0]
    assert backends == [("db",)]
    assert ledger is None
    assert list((tmp_path / "reports").glob("*/report.json"))
