"""Run a whole offload through the library, as the DAG's plan, batches and summary do."""

from __future__ import annotations

from typing import Any

from attachment_ops.config import MaintenanceConfig
from attachment_ops.db import connect
from attachment_ops.offload.mapping import resolve_table
from attachment_ops.offload.params import build_params
from attachment_ops.offload.planner import plan_offload
from attachment_ops.offload.summary import inline_remaining, summarize
from attachment_ops.offload.worker import run_batch


def run_offload(
    dsn: str, client: Any, config: MaintenanceConfig, run_id: str = "run-1", **overrides: Any
) -> dict[str, Any]:
    params = build_params(config, overrides)
    with connect(dsn) as conn:
        table = resolve_table(conn, config.mapping)
        plan = plan_offload(conn, table, params)
    results = [
        run_batch(dsn, client, config, params, batch.to_dict(), run_id).to_dict() for batch in plan.batches
    ]
    with connect(dsn) as conn:
        remaining = inline_remaining(conn, table)
    return summarize(plan.to_dict(), results, remaining)
