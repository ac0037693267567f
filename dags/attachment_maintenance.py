"""
### Attachment maintenance

The whole chain for the attachments table, in order:

1. **preflight**: host disk, Docker engine, Postgres and S3 checks. Any FAIL stops the run
   before a heavy stage; WARN continues.
2. **plan**: walks the table by primary key and cuts the candidate rows into batches.
3. **offload_batch** (mapped, throttled by the `attachment_offload` pool): uploads each row's
   bytes, verifies the stored object, then clears the inline copy.
4. **summarize**, **verify**: totals, then proof that every moved object is intact and the
   table's invariants hold.
5. **vacuum_analyze**, then an optional **full reclaim** (`vacuum_full` or `pg_repack`) that runs
   only inside the maintenance window, with room on disk, after a person approves it under
   Required Actions (or with *Approve without a person* set).
6. **report**: database footprint, API latency and offload figures, kept in the bucket.

**Which rows**: a scheduled or backfill run offloads rows whose `created_at` falls in its
data interval (one day, `[start, end)`), so `airflow backfill create` moves history in daily
chunks. A manual run uses *Created from* / *Created before* when given, otherwise it catches up
by *Row limit* regardless of dates.

**Safety rules**: an inline copy is cleared only in the transaction that records the key, after
the object was confirmed to hold the same size and SHA-256, and only if the row did not change
meanwhile. Two runs or two workers never process the same row at once. A rerun completes
whatever a crash interrupted. *Dry run* writes nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import TriggerRule, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from attachment_ops.dag_stages import preflight, reclaim_stage, report, vacuum_analyze, verify
from attachment_ops.dag_support import (
    OFFLOAD_POOL,
    START_DATE,
    default_args,
    offload_params,
    reclaim_params,
    report_params,
    verification_params,
)


@dag(
    dag_id="attachment_maintenance",
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params={**offload_params(), **verification_params(), **reclaim_params(), **report_params()},
    tags=["attachments", "offload", "postgres", "s3", "maintenance"],
    doc_md=__doc__,
)
def attachment_maintenance() -> None:
    @task(execution_timeout=timedelta(minutes=30))
    def plan(**context: Any) -> list[dict[str, Any]]:
        from attachment_ops.tasks.offload import overrides_from_context
        from attachment_ops.tasks.offload import plan as run

        overrides = overrides_from_context(context)
        result = run(overrides)
        # The mapped list carries only batch descriptors; the totals travel under their own key.
        context["ti"].xcom_push(key="plan_summary", value={k: v for k, v in result.items() if k != "batches"})
        return [{**batch, "controls": result["params"]} for batch in result["batches"]]

    @task(pool=OFFLOAD_POOL, execution_timeout=timedelta(hours=2))
    def offload_batch(batch: dict[str, Any], **context: Any) -> dict[str, Any]:
        from attachment_ops.tasks.offload import offload_batch as run

        return run(batch, batch["controls"], context["run_id"])

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def summarize(batch_results: Any, **context: Any) -> dict[str, Any]:
        from attachment_ops.tasks.offload import summarize as run

        plan_summary = context["ti"].xcom_pull(task_ids="plan", key="plan_summary") or {}
        batches = context["ti"].xcom_pull(task_ids="plan") or []
        return run({**plan_summary, "batches": batches}, list(batch_results or []))

    checks = preflight()
    planned = plan()
    checks >> planned
    results = offload_batch.expand(batch=planned)
    summary = summarize(results)
    verified = verify(summary)
    vacuumed = vacuum_analyze(verified)
    final_report = report()
    reclaim_stage(vacuumed, downstream=final_report)
    summary >> final_report


attachment_maintenance()
