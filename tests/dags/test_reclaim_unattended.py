"""An unattended full reclaim runs through postgres_maintenance without a person approving it."""

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
from tests.offload.helpers import run_offload

pytestmark = pytest.mark.airflow


def test_unattended_vacuum_full_runs(pg_dsn, pg_schema, bucket, s3_client, tmp_path):
    from attachment_ops.config import load_config

    make_table(pg_dsn, pg_schema)
    insert_rows(pg_dsn, pg_schema, random_rows(6, sizes=[400_000] * 6))
    config = {
        "attachments": {"table": f"{pg_schema}.document_attachments"},
        "storage": {"bucket": bucket},
        "offload": {"ledger_schema": f"{pg_schema}_ledger"},
        "reclaim": {"maintenance_window": "daily 00:00-24:00 UTC", "rewrite_headroom_factor": 1.0},
    }
    run_offload(pg_dsn, s3_client, load_config(config))
    env = {**os.environ, "AIRFLOW_VAR_MAINTENANCE_CONFIG": json.dumps(config)}

    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "airflow"),
            "dags",
            "test",
            "postgres_maintenance",
            "--conf",
            json.dumps({"reclaim": "vacuum_full", "approve_unattended": True}),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    output = result.stdout + result.stderr
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(f"{pg_schema}_ledger"))
        )
        conn.commit()
    assert result.returncode == 0, output[-3000:]
    assert "[DAG TEST] starting task_id=approve_full_reclaim " not in output
    assert "[DAG TEST] end task task_id=full_reclaim " in output
    assert "'method': 'vacuum_full'" in output
