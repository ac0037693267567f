"""Task body of the report stage: gather the chain's figures from XCom and run the report."""

from __future__ import annotations

import logging
from typing import Any

from attachment_ops.airflow_support import fail_permanent_errors

log = logging.getLogger(__name__)

# Task ids of the chain stages whose return values the report includes, by report section.
CHAIN_TASKS = {
    "preflight": "preflight",
    "offload": "summarize",
    "verification": "verify",
    "table_sizes": "vacuum_analyze",
    "reclaim": "full_reclaim",
}
SIZE_KEYS = ("heap_bytes", "toast_bytes", "indexes_bytes", "total_bytes")


def _sizes(value: dict[str, Any]) -> dict[str, Any]:
    """Keep the before and after sizes of a VACUUM or full reclaim result, in the report's shape."""
    return {
        side: {key: value[side][key] for key in SIZE_KEYS} for side in ("before", "after") if value.get(side)
    }


def chain_figures(context: dict[str, Any]) -> dict[str, Any]:
    """Collect what earlier stages of this run returned; stages that did not run are left out."""
    ti = context["ti"]
    figures: dict[str, Any] = {}
    for section, task_id in CHAIN_TASKS.items():
        if task_id not in getattr(context.get("dag"), "task_ids", ()):
            continue
        value = ti.xcom_pull(task_ids=task_id)
        if section == "preflight" and value is None:
            # A failed preflight returns nothing, but it pushed its table before raising.
            value = ti.xcom_pull(task_ids=task_id, key="preflight_report")
        if value is None:
            continue
        if section == "verification" and isinstance(value, dict):
            value = {**value, "status": "passed" if value.get("ok") else "failed"}
        if section in ("table_sizes", "reclaim") and isinstance(value, dict):
            if not value.get("before"):
                continue
            value = _sizes(value)
        figures[section] = value
    return figures


@fail_permanent_errors
def build(context: dict[str, Any]) -> dict[str, Any]:
    from attachment_ops.report.airflow_task import run_benchmark_report
    from attachment_ops.report.history import BenchmarkRegression

    params = dict(context.get("params") or {})
    figures = chain_figures(context)
    if figures:
        figures["run_id"] = context["run_id"]
    dag = context.get("dag")
    summary = run_benchmark_report(
        figures or None, run_id=context["run_id"], dag_id=getattr(dag, "dag_id", None)
    )
    # The form's switch adds to report.fail_on_regression, which run_benchmark_report applies itself.
    if params.get("fail_on_regression") and summary.get("regressions"):
        raise BenchmarkRegression(f"Latency regressed beyond the tolerance: {summary['regressions']}")
    return summary
