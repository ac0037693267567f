"""Task body of the preflight stage, for `attachment_maintenance` and `infra_preflight`."""

from __future__ import annotations

import logging
import socket
from typing import Any

from attachment_ops.airflow_support import fail_permanent_errors, get_config, postgres_conninfo, s3_settings

log = logging.getLogger(__name__)

HISTORY_HOURS = 24.0
KEEP_SAMPLES_DAYS = 14.0


def _planned_bytes(config: Any, conninfo: str, context: dict[str, Any]) -> int:
    """Bytes this run plans to move: they land on the S3 server's disk, which may be this host's."""
    from attachment_ops.db import connect
    from attachment_ops.offload.mapping import resolve_table
    from attachment_ops.offload.params import build_params
    from attachment_ops.offload.planner import plan_offload
    from attachment_ops.tasks.offload import overrides_from_context

    overrides = overrides_from_context(context)
    overrides["dry_run"] = True
    params = build_params(config, overrides)
    with connect(conninfo, application_name="attachment_ops preflight plan") as conn:
        return plan_offload(conn, resolve_table(conn, config.mapping), params).bytes


def _table_total_bytes(config: Any, conninfo: str) -> int:
    from attachment_ops.db import connect
    from attachment_ops.offload.mapping import resolve_table

    with connect(conninfo, application_name="attachment_ops preflight size") as conn:
        table = resolve_table(conn, config.mapping)
        return int(conn.execute("SELECT pg_total_relation_size(%s)", (table.oid,)).fetchone()[0])


@fail_permanent_errors
def run_checks(context: dict[str, Any], *, chain: bool) -> dict[str, Any]:
    """Run every check, store this run's disk samples, alert on WARN, and raise on FAIL.

    In the chain, the headroom includes the bytes the offload plans to move and, when a full
    reclaim is requested, the table's size (a rewrite needs room for a full copy).

    :raises PreflightFailed: (turned into a failed task without retries) when a check failed.
    """
    from attachment_ops.db import connect
    from attachment_ops.notify import MaintenanceNotifier
    from attachment_ops.preflight.model import raise_for_failures
    from attachment_ops.preflight.runner import run_preflight
    from attachment_ops.preflight.samples import (
        ensure_disk_samples_table,
        load_disk_history,
        prune_disk_samples,
        store_disk_samples,
    )

    config = get_config()
    connections = config.section("connections")
    schema = config.section("offload")["ledger_schema"]
    params = dict(context.get("params") or {})
    conninfo = postgres_conninfo(connections["postgres"])
    planned_bytes = rewrite_bytes = 0
    history: dict[str, Any] = {}
    try:
        if chain:
            planned_bytes = _planned_bytes(config, conninfo, context)
            if params.get("reclaim") not in (None, "none"):
                rewrite_bytes = _table_total_bytes(config, conninfo)
        with connect(conninfo, application_name="attachment_ops preflight history") as conn:
            history = load_disk_history(conn, schema, host=socket.gethostname(), since_hours=HISTORY_HOURS)
    except Exception as error:  # noqa: BLE001 - the Postgres check below reports the cause in its row
        log.warning("Could not plan the run or read disk history before the checks: %s", error)

    report = run_preflight(
        config,
        postgres_conninfo=conninfo,
        s3_settings=s3_settings(connections["s3"]),
        planned_bytes=planned_bytes,
        rewrite_bytes=rewrite_bytes,
        disk_history=history,
    )
    if not params.get("dry_run") and report.disk_samples:
        try:
            with connect(conninfo, application_name="attachment_ops preflight samples") as conn:
                ensure_disk_samples_table(conn, schema)
                store_disk_samples(conn, schema, report.disk_samples)
                prune_disk_samples(conn, schema, keep_days=KEEP_SAMPLES_DAYS)
        except Exception as error:  # noqa: BLE001 - samples only feed the time-to-full estimate
            log.warning("Could not store this run's disk samples: %s", error)

    if report.warned and not report.failed and config.section("alerts")["notify_on_warn"]:
        lines = "\n".join(f"- {result.one_line()}" for result in report.warned)
        MaintenanceNotifier(message=f"attachment-ops preflight warnings:\n{lines}").notify(context)
    result = report.to_dict()
    result["planned_bytes"] = planned_bytes
    result["table_markdown"] = report.as_table("markdown")
    context["ti"].xcom_push(key="preflight_report", value=result)
    raise_for_failures(report)
    return result
