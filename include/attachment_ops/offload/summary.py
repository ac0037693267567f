"""Totals of an offload run for the log and the report: moved, skipped, failed, remaining."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from psycopg import sql

from attachment_ops.offload.mapping import ResolvedTable

if TYPE_CHECKING:
    import psycopg


def inline_remaining(conn: psycopg.Connection, table: ResolvedTable) -> dict[str, int]:
    """Count inline rows that still hold bytes, and those bytes, plus offloaded rows."""
    query = sql.SQL(
        "SELECT count(*) FILTER (WHERE {backend} = %s AND {content} IS NOT NULL),"
        " coalesce(sum(octet_length({content})) FILTER (WHERE {backend} = %s), 0),"
        " count(*) FILTER (WHERE {backend} = %s)"
        " FROM {table}"
    ).format(
        backend=table.column("backend_column"), content=table.column("content_column"), table=table.table
    )
    inline = table.mapping.inline_value
    with conn.cursor() as cur:
        cur.execute(query, (inline, inline, table.mapping.offloaded_value))
        rows, size, offloaded = cur.fetchone()
    return {"inline_rows": int(rows), "inline_bytes": int(size), "offloaded_rows": int(offloaded)}


def summarize(
    plan: dict[str, Any], batch_results: list[dict[str, Any] | None], remaining: dict[str, int] | None = None
) -> dict[str, Any]:
    """Combine the plan and the batch results into the run summary (a small dict for XCom)."""
    results = [result for result in batch_results if result]
    skipped: Counter = Counter()
    verified_by: Counter = Counter()
    for result in results:
        skipped.update(result.get("skipped", {}))
        verified_by.update(result.get("verified_by", {}))
    changed = [row_id for result in results for row_id in result.get("changed_ids", [])]
    failed = [item for result in results for item in result.get("failed", [])]
    if plan.get("null_rows"):
        skipped["null content"] += plan["null_rows"]
    moved_bytes = sum(result.get("bytes_offloaded", 0) for result in results)
    busy_seconds = sum(result.get("elapsed_seconds", 0.0) for result in results)
    dry_run = bool(plan.get("params", {}).get("dry_run"))
    summary = {
        "dry_run": dry_run,
        "planned_rows": plan.get("rows", 0),
        "planned_bytes": plan.get("bytes", 0),
        "batches": len(plan.get("batches", [])),
        "batches_reported": len(results),
        "rows_offloaded": sum(result.get("rows_offloaded", 0) for result in results),
        "bytes_offloaded": moved_bytes,
        "would_move_rows": sum(result.get("rows_selected", 0) for result in results) if dry_run else 0,
        "would_move_bytes": sum(result.get("bytes_selected", 0) for result in results) if dry_run else 0,
        "skipped": dict(skipped),
        "changed_ids": changed[:100],
        "changed_rows": len(changed),
        "failed_rows": len(failed),
        "failed": failed[:20],
        "verified_by": dict(verified_by),
        "batch_seconds_total": round(busy_seconds, 3),
        "mib_per_second_per_batch": round(moved_bytes / 2**20 / busy_seconds, 2) if busy_seconds else 0.0,
        "left_for_next_run_rows": plan.get("left_for_next_run_rows", 0),
        "left_for_next_run_bytes": plan.get("left_for_next_run_bytes", 0),
    }
    if remaining is not None:
        summary.update(remaining)
    return summary
