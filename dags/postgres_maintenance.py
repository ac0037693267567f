"""
### Postgres maintenance

Verification and space reclamation for the attachments table, without an offload:

1. **verify**: every offloaded row's object exists with the recorded size and SHA-256 (scope:
   *all* offloaded rows by default here, or a random *sample*); table invariants; orphans both
   ways. A failure fails the run and names the rows. Verification never changes data, except
   deleting orphan objects when *Delete orphan objects* is set and they are past the grace period.
2. **vacuum_analyze**: `VACUUM (ANALYZE)` on an autocommit session with lock and statement
   timeouts, sizes before and after, and the transactions holding back cleanup.
3. **full reclaim** (`reclaim` = `vacuum_full` or `pg_repack`): only inside the configured
   maintenance window, only with room on disk for the rewrite, and only after a person approves
   it under Required Actions (or with *Approve without a person*).

Runs weekly on Sunday at 03:00 UTC; trigger it by hand for a full reclaim.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag
from airflow.timetables.trigger import CronTriggerTimetable

from attachment_ops.dag_stages import reclaim_stage, vacuum_analyze, verify
from attachment_ops.dag_support import START_DATE, default_args, reclaim_params, verification_params

PARAMS = {**verification_params(), **reclaim_params()}
PARAMS["verify_scope"] = Param(
    "all",
    type="string",
    enum=["all", "sample"],
    title="Verify",
    description="Objects to verify: all offloaded rows, or a random sample.",
    section="Verification",
)


@dag(
    dag_id="postgres_maintenance",
    schedule=CronTriggerTimetable("0 3 * * 0", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(execution_timeout=timedelta(hours=2)),
    params=PARAMS,
    tags=["attachments", "postgres", "vacuum", "maintenance"],
    doc_md=__doc__,
)
def postgres_maintenance() -> None:
    verified = verify()
    vacuumed = vacuum_analyze(verified)
    reclaim_stage(vacuumed)


postgres_maintenance()
