"""DAG integrity: every DAG file imports cleanly and carries the metadata operators rely on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
EXPECTED_DAGS = {
    "attachment_maintenance",
    "infra_preflight",
    "postgres_maintenance",
    "benchmark_report",
    "attachment_restore",
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_expected_dag_ids(dagbag):
    assert set(dagbag.dag_ids) == EXPECTED_DAGS


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_dag_metadata_present(dagbag, dag_id):
    dag = dagbag.get_dag(dag_id)

    assert dag.tags
    assert dag.doc_md and len(dag.doc_md) > 200
    assert dag.max_active_runs == 1
    for task in dag.tasks:
        assert task.owner == "data-platform"
        assert task.execution_timeout is not None, task.task_id


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_retries_use_backoff(dagbag, dag_id):
    dag = dagbag.get_dag(dag_id)

    retried = [task for task in dag.tasks if task.retries]
    assert retried
    for task in retried:
        assert task.retry_exponential_backoff


def test_offload_batches_use_the_pool(dagbag):
    task = dagbag.get_dag("attachment_maintenance").get_task("offload_batch")

    assert task.pool == "attachment_offload"


def test_maintenance_schedule_has_data_intervals(dagbag):
    from airflow.timetables.interval import CronDataIntervalTimetable

    dag = dagbag.get_dag("attachment_maintenance")

    assert isinstance(dag.timetable, CronDataIntervalTimetable)


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_default_params_validate(dagbag, dag_id):
    dag = dagbag.get_dag(dag_id)

    resolved = dag.params.validate()

    assert isinstance(resolved, dict)


def test_safe_scheduled_defaults(dagbag):
    params = dagbag.get_dag("attachment_maintenance").params.validate()

    assert params["dry_run"] is False
    assert params["reclaim"] == "none"
    assert params["approve_unattended"] is False
    assert params["delete_orphans"] is False
    assert params["limit"] == 500


def test_invalid_param_is_rejected(dagbag):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dagbag.get_dag("attachment_maintenance").params)

    with pytest.raises(ParamValidationError, match="'truncate_everything' is not one of"):
        params["reclaim"] = "truncate_everything"


def test_parse_time_is_reported(capsys):
    """Report each DAG file's parse time; a benchmark figure (make bench), not an assertion."""
    from airflow.dag_processing.dagbag import DagBag

    DagBag(dag_folder=str(DAGS_FOLDER / "infra_preflight.py"))  # warm imports
    for path in sorted(DAGS_FOLDER.glob("*.py")):
        started = time.perf_counter()
        bag = DagBag(dag_folder=str(path))
        elapsed_ms = (time.perf_counter() - started) * 1000
        assert bag.import_errors == {}
        with capsys.disabled():
            print(f"\nparse {path.name}: {elapsed_ms:.1f} ms")
