"""Task bodies of the offload and restore stages."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from attachment_ops.airflow_support import fail_permanent_errors, get_config, postgres_conninfo, s3_settings
from attachment_ops.config import MaintenanceConfig
from attachment_ops.offload.params import RUN_PARAMETERS

log = logging.getLogger(__name__)

# Run types whose rows are chosen by the run's data interval; manual runs use the form's window.
INTERVAL_RUN_TYPES = {"scheduled", "backfill"}


def offload_overrides(
    params: dict[str, Any],
    *,
    run_type: Any,
    data_interval_start: datetime | None,
    data_interval_end: datetime | None,
) -> dict[str, Any]:
    """Pick the offload controls from the run's params; scheduled and backfill runs use their interval.

    A scheduled or backfill run offloads rows created within [data_interval_start,
    data_interval_end), so a backfill over past dates moves history in chunks. A manual run
    uses created_from and created_to from the form when given, and otherwise catches up by limit.
    """
    overrides = {key: params.get(key) for key in RUN_PARAMETERS if params.get(key) not in (None, "")}
    # The Task SDK's DagRunType is a str enum whose str() is "DagRunType.SCHEDULED", not its value.
    run_type = getattr(run_type, "value", run_type)
    if run_type in INTERVAL_RUN_TYPES and data_interval_start and data_interval_end:
        if data_interval_start < data_interval_end:
            overrides["created_from"] = data_interval_start.isoformat()
            overrides["created_to"] = data_interval_end.isoformat()
    return overrides


def overrides_from_context(context: dict[str, Any]) -> dict[str, Any]:
    """Read the run's params, run type and data interval from a task context."""
    return offload_overrides(
        dict(context.get("params") or {}),
        run_type=getattr(context.get("dag_run"), "run_type", None),
        data_interval_start=context.get("data_interval_start"),
        data_interval_end=context.get("data_interval_end"),
    )


def _clients(config: MaintenanceConfig) -> tuple[str, Any]:
    from attachment_ops.storage import make_s3_client

    connections = config.section("connections")
    conninfo = postgres_conninfo(connections["postgres"])
    client = make_s3_client(s3_settings(connections["s3"]), config.section("storage"))
    return conninfo, client


@fail_permanent_errors
def plan(overrides: dict[str, Any]) -> dict[str, Any]:
    """Validate the mapping and parameters, then plan the batches."""
    from attachment_ops.db import connect
    from attachment_ops.offload.mapping import resolve_table
    from attachment_ops.offload.params import build_params
    from attachment_ops.offload.planner import plan_offload

    config = get_config()
    params = build_params(config, overrides)
    conninfo = postgres_conninfo(config.section("connections")["postgres"])
    with connect(conninfo, application_name="attachment_ops plan") as conn:
        table = resolve_table(conn, config.mapping)
        result = plan_offload(conn, table, params).to_dict()
    result["table"] = table.qualified_name
    return result


@fail_permanent_errors
def offload_batch(batch: dict[str, Any], params: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Offload one planned batch."""
    from attachment_ops.offload.params import OffloadParams
    from attachment_ops.offload.worker import run_batch

    config = get_config()
    conninfo, client = _clients(config)
    return run_batch(conninfo, client, config, OffloadParams.from_dict(params), batch, run_id).to_dict()


@fail_permanent_errors
def summarize(plan_result: dict[str, Any], batch_results: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Combine batch results and count what remains inline."""
    from attachment_ops.db import connect
    from attachment_ops.offload.mapping import resolve_table
    from attachment_ops.offload.summary import inline_remaining
    from attachment_ops.offload.summary import summarize as combine

    config = get_config()
    conninfo = postgres_conninfo(config.section("connections")["postgres"])
    with connect(conninfo, application_name="attachment_ops summary") as conn:
        remaining = inline_remaining(conn, resolve_table(conn, config.mapping))
    summary = combine(plan_result, list(batch_results or []), remaining)
    log.info(
        "Offload summary: %d rows (%.1f MiB) moved, %d changed, %d failed, skipped %s; %d inline rows "
        "(%.1f MiB) remain.",
        summary["rows_offloaded"],
        summary["bytes_offloaded"] / 2**20,
        summary["changed_rows"],
        summary["failed_rows"],
        summary["skipped"] or "none",
        summary["inline_rows"],
        summary["inline_bytes"] / 2**20,
    )
    if summary["dry_run"]:
        log.info(
            "Dry run: a real run would move %d rows (%.1f MiB).",
            summary["would_move_rows"],
            summary["would_move_bytes"] / 2**20,
        )
    return summary


@fail_permanent_errors
def restore(params: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Restore rows chosen by ids or by the run that offloaded them."""
    from attachment_ops.errors import ConfigurationError
    from attachment_ops.offload.restore import restore_rows

    config = get_config()
    conninfo, client = _clients(config)
    row_ids = params.get("row_ids") or []
    if not isinstance(row_ids, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) for item in row_ids
    ):
        raise ConfigurationError(
            f"Parameter row_ids={row_ids!r} must be a list of integer ids, e.g. [12, 40]."
        )
    return restore_rows(
        conninfo,
        client,
        config,
        run_id=run_id,
        row_ids=row_ids,
        source_run_id=params.get("source_run_id") or None,
        dry_run=bool(params.get("dry_run")),
    )
