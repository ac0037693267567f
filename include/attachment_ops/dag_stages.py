"""Stages that several DAGs share, built inside the caller's DAG context.

Each ``@task`` body imports its library module when it runs, never at parse time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import TriggerRule, task

from attachment_ops.dag_support import ATTACHMENTS_TABLE


@task(execution_timeout=timedelta(minutes=15))
def preflight(chain: bool = True, **context: Any) -> dict[str, Any]:
    """Run the preflight checks; FAIL stops the run before any heavy stage."""
    from attachment_ops.tasks.preflight import run_checks

    return run_checks(context, chain=chain)


@task(execution_timeout=timedelta(hours=2))
def verify(offload_summary: dict[str, Any] | None = None, **context: Any) -> dict[str, Any]:
    """Verify moved objects and the table's invariants; a failure names the rows."""
    from attachment_ops.tasks.postgres import verify as run

    return run(context, offload_summary)


@task(execution_timeout=timedelta(hours=2), outlets=[ATTACHMENTS_TABLE])
def vacuum_analyze(verification: dict[str, Any] | None = None, **context: Any) -> dict[str, Any]:
    """VACUUM (ANALYZE) the attachments table and report sizes before and after."""
    from attachment_ops.tasks.postgres import vacuum

    return vacuum(context)


@task.branch
def reclaim_gate(vacuum_result: dict[str, Any], **context: Any) -> list[str]:
    """Choose the full reclaim path: none, approval first, or straight on when approved unattended."""
    from attachment_ops.tasks.postgres import choose_reclaim_path

    return choose_reclaim_path(context, vacuum_result)


@task(
    trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
    execution_timeout=timedelta(hours=6),
    retries=0,
)
def full_reclaim(**context: Any) -> dict[str, Any]:
    """Rewrite the table with VACUUM FULL or pg_repack, after the gate and the approval."""
    from attachment_ops.tasks.postgres import full_reclaim as run

    return run(context)


def approval_task() -> Any:
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    return ApprovalOperator(
        task_id="approve_full_reclaim",
        subject="Approve a full reclaim of the attachments table ({{ params.reclaim }})",
        body=(
            "Run **{{ params.reclaim }}** on the attachments table now?\n\n"
            "VACUUM FULL holds an ACCESS EXCLUSIVE lock for the whole rewrite: the application cannot read "
            "or write attachments meanwhile. pg_repack holds brief locks only. Both need free disk for a "
            "full copy. The gate checked the maintenance window and the disk; see its log for the figures."
        ),
        execution_timeout=timedelta(hours=12),
        response_timeout=timedelta(hours=12),
        retries=0,
    )


def reclaim_stage(vacuum_result: Any, downstream: Any | None = None) -> Any:
    """Wire gate, approval and full reclaim after ``vacuum_result``; return the full reclaim task."""
    gate = reclaim_gate(vacuum_result)
    approve = approval_task()
    reclaim = full_reclaim()
    gate >> approve >> reclaim
    gate >> reclaim
    if downstream is not None:
        gate >> downstream
        reclaim >> downstream
    return reclaim


@task(trigger_rule=TriggerRule.ALL_DONE, execution_timeout=timedelta(minutes=30))
def report(**context: Any) -> dict[str, Any]:
    """Build the benchmark report, store it and print its Markdown summary."""
    from attachment_ops.tasks.report import build

    return build(context)
