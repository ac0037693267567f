"""Which rows a run covers: scheduled and backfill runs use their data interval, manual runs the form."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from airflow.sdk.api.datamodels._generated import DagRunType

from attachment_ops.tasks.offload import offload_overrides

START = datetime(2025, 3, 1, 2, tzinfo=timezone.utc)
END = datetime(2025, 3, 2, 2, tzinfo=timezone.utc)


@pytest.mark.parametrize("run_type", [DagRunType.SCHEDULED, DagRunType.BACKFILL, "scheduled", "backfill"])
def test_interval_runs_use_data_interval(run_type):
    overrides = offload_overrides(
        {"limit": 10}, run_type=run_type, data_interval_start=START, data_interval_end=END
    )

    assert overrides == {"limit": 10, "created_from": START.isoformat(), "created_to": END.isoformat()}


@pytest.mark.parametrize("run_type", [DagRunType.MANUAL, DagRunType.ASSET_TRIGGERED, None])
def test_manual_runs_use_form_window(run_type):
    params = {"created_from": "2025-01-01", "created_to": None, "dry_run": False}

    overrides = offload_overrides(params, run_type=run_type, data_interval_start=START, data_interval_end=END)

    assert overrides == {"created_from": "2025-01-01", "dry_run": False}


def test_context_with_sdk_run_type():
    from airflow.sdk.api.datamodels._generated import DagRun

    from attachment_ops.tasks.offload import overrides_from_context

    dag_run = DagRun.model_construct(run_type=DagRunType.BACKFILL)
    context = {"params": {}, "dag_run": dag_run, "data_interval_start": START, "data_interval_end": END}

    overrides = overrides_from_context(context)

    assert overrides == {"created_from": START.isoformat(), "created_to": END.isoformat()}
