"""
### Attachment restore

Moves chosen offloaded rows back inline: by *Row ids*, or every row that the run *Source run id*
offloaded (the run id of an `attachment_maintenance` run, e.g. `scheduled__2026-01-02T02:00:00+00:00`).

Each object is read back and hashed; its size and SHA-256 must match the ledger. The bytes are
assembled inside Postgres, checked again there, and the row flips back to inline in one short
transaction, only if it did not change meanwhile. Objects stay in the bucket afterwards;
`postgres_maintenance` lists them as orphans and deletes them only when asked.

Manual runs only. *Dry run* lists the rows that would be restored and writes nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from attachment_ops.dag_support import START_DATE, default_args


@dag(
    dag_id="attachment_restore",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(execution_timeout=timedelta(hours=4)),
    params={
        "row_ids": Param(
            [],
            type="array",
            items={"type": "integer"},
            title="Row ids",
            description="Primary keys of the rows to restore, e.g. [12, 40].",
            section="Rows",
        ),
        "source_run_id": Param(
            None,
            type=["null", "string"],
            title="Source run id",
            description="Restore every row this attachment_maintenance run offloaded.",
            section="Rows",
        ),
        "dry_run": Param(
            False, type="boolean", title="Dry run", description="List the rows only.", section="Rows"
        ),
    },
    tags=["attachments", "restore", "s3", "postgres"],
    doc_md=__doc__,
)
def attachment_restore() -> None:
    @task
    def restore(**context: Any) -> dict[str, Any]:
        from attachment_ops.tasks.offload import restore as run

        return run(dict(context["params"]), context["run_id"])

    restore()


attachment_restore()
