"""
### Infrastructure preflight

Runs the same checks as the first stage of `attachment_maintenance` (host disk, Docker engine,
Postgres, S3) every 30 minutes, so disk pressure and stuck transactions are caught before a
maintenance run starts. The table of results goes to the task log.

**Alerts**: a WARN sends an alert through the configured channels (the log always, e-mail or
Slack when `alerts` in `maintenance_config` names them) and the task succeeds; a FAIL alerts and
fails the task. Each run also records the free disk space, from which later runs estimate the
time until a disk is full.

This DAG changes no application data: it writes one small probe object to the bucket and deletes
it, and stores a disk sample in the package's schema.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag
from airflow.timetables.trigger import CronTriggerTimetable

from attachment_ops.dag_stages import preflight
from attachment_ops.dag_support import START_DATE, default_args


@dag(
    dag_id="infra_preflight",
    # Runs have no data interval to cover, so a trigger timetable is the right kind here.
    schedule=CronTriggerTimetable("*/30 * * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=20),
    default_args=default_args(retries=1, execution_timeout=timedelta(minutes=10)),
    tags=["attachments", "preflight", "monitoring"],
    doc_md=__doc__,
)
def infra_preflight() -> None:
    preflight(chain=False)


infra_preflight()
