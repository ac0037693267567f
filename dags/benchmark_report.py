"""
### Benchmark report

Measures the application API (the endpoints listed under `report.endpoints` in
`maintenance_config`, direct through `app_api` and through the proxy with `app_api_proxy`),
the attachments table's footprint and the bytes still inline, then compares the run with the
previous runs kept in the bucket under the report prefix.

Outputs a versioned JSON document, a Markdown summary (also in this task's log) and an HTML page
with charts, listed in the UI under **Browse > Benchmark reports**. A p95 regression beyond the configured
tolerance is flagged, and fails the task when *Fail on regression* is set.

Runs daily at 06:00 UTC, and after each `attachment_maintenance` chain, which runs the same
report as its last stage. The loop is closed-loop: each request waits for the previous one, so
slow periods are under-sampled.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag
from airflow.timetables.trigger import CronTriggerTimetable

from attachment_ops.dag_stages import report
from attachment_ops.dag_support import START_DATE, default_args, report_params


@dag(
    dag_id="benchmark_report",
    schedule=CronTriggerTimetable("0 6 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=1, execution_timeout=timedelta(minutes=30)),
    params=report_params(),
    tags=["attachments", "benchmark", "report"],
    doc_md=__doc__,
)
def benchmark_report() -> None:
    report()


benchmark_report()
