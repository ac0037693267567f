"""Shared DAG settings: default arguments, trigger-form parameters, the table's Asset, schedules.

DAG files import this module at parse time, so it imports nothing heavier than ``airflow.sdk``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset, Param

from attachment_ops.notify import on_failure

OWNER = "data-platform"
OFFLOAD_POOL = "attachment_offload"
START_DATE = pendulum.datetime(2024, 12, 1, tz="UTC")

# Other DAGs can schedule on this Asset: it is updated when a chain has offloaded and verified.
ATTACHMENTS_TABLE = Asset(
    name="attachments_table",
    uri="attachment-ops://app_postgres/public/document_attachments",
)


def default_args(**overrides: Any) -> dict[str, Any]:
    """Retries with exponential backoff for transient failures; permanent ones fail at once."""
    args: dict[str, Any] = {
        "owner": OWNER,
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=1),
        "on_failure_callback": on_failure,
    }
    args.update(overrides)
    return args


def offload_params() -> dict[str, Param]:
    """Trigger-form fields of the offload; the defaults are safe for an unattended scheduled run."""
    return {
        "limit": Param(
            500,
            type="integer",
            minimum=1,
            title="Row limit",
            description="Maximum rows this run offloads. What it cannot cover is left for the next run.",
            section="Offload",
        ),
        "batch_rows": Param(
            200,
            type="integer",
            minimum=1,
            maximum=10000,
            title="Rows per batch",
            description="Rows per mapped offload task.",
            section="Offload",
        ),
        "max_batch_bytes": Param(
            512 * 1024 * 1024,
            type="integer",
            minimum=1,
            title="Bytes per batch",
            description="A batch closes before it exceeds this many bytes (one larger row forms its own batch).",
            section="Offload",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Plan and report what would move, writing nothing to the database or the bucket.",
            section="Offload",
        ),
        "min_size_bytes": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            title="Minimum size (bytes)",
            description="Only offload rows at least this large.",
            section="Offload",
        ),
        "max_size_bytes": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            title="Maximum size (bytes)",
            description="Only offload rows at most this large.",
            section="Offload",
        ),
        "created_from": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Created from (manual runs)",
            description="Manual catch-up window start, inclusive. Scheduled and backfill runs use their data interval.",
            section="Window",
        ),
        "created_to": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Created before (manual runs)",
            description="Manual catch-up window end, exclusive.",
            section="Window",
        ),
        "storage_class": Param(
            None,
            type=["null", "string"],
            enum=[None, "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR"],
            title="Storage class",
            description="S3 storage class of new objects; empty keeps the bucket default.",
            section="Storage",
        ),
        "server_side_encryption": Param(
            None,
            type=["null", "string"],
            enum=[None, "AES256", "aws:kms"],
            title="Server-side encryption",
            description="Encryption of new objects; aws:kms uses storage.sse_kms_key_id from the configuration.",
            section="Storage",
        ),
    }


def verification_params() -> dict[str, Param]:
    return {
        "verify_scope": Param(
            "run",
            type="string",
            enum=["run", "all", "sample"],
            title="Verify",
            description="Objects to verify: those offloaded by this run, all offloaded rows, or a random sample.",
            section="Verification",
        ),
        "verify_sample_size": Param(
            100,
            type="integer",
            minimum=1,
            title="Sample size",
            description="Rows checked when verifying a sample.",
            section="Verification",
        ),
        "delete_orphans": Param(
            False,
            type="boolean",
            title="Delete orphan objects",
            description="Delete objects no row references, once older than the grace period. Off: only list them.",
            section="Verification",
        ),
    }


def reclaim_params() -> dict[str, Param]:
    return {
        "reclaim": Param(
            "none",
            type="string",
            enum=["none", "vacuum_full", "pg_repack"],
            title="Full reclaim",
            description=(
                "Return freed space to the operating system after VACUUM ANALYZE. vacuum_full locks the table "
                "exclusively; pg_repack works online. Runs only inside the maintenance window, with room on "
                "disk, after approval."
            ),
            section="Reclaim",
        ),
        "approve_unattended": Param(
            False,
            type="boolean",
            title="Approve without a person",
            description="Skip the approval step for the full reclaim. For unattended runs only.",
            section="Reclaim",
        ),
    }


def report_params() -> dict[str, Param]:
    return {
        "fail_on_regression": Param(
            False,
            type="boolean",
            title="Fail on regression",
            description="Fail the report task when latency regressed beyond the configured tolerance.",
            section="Report",
        ),
    }
