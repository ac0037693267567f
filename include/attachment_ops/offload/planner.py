"""Plan an offload run as small batch descriptors, walking the table by primary key.

A descriptor carries an id range, a row count and a byte count, never a blob or a list of ids,
so the plan fits in XCom and maps over at most ``max_batches`` tasks (Airflow rejects a mapped
list longer than ``[core] max_map_length``, 1024 by default). What a run cannot cover stays
for the next run, and the plan says how much.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from attachment_ops.offload.mapping import ResolvedTable
from attachment_ops.offload.params import OffloadParams

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchDescriptor:
    """Rows ``first_id`` to ``last_id`` inclusive that matched when planned."""

    batch_id: str
    first_id: int
    last_id: int
    rows: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    batches: list[BatchDescriptor] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    null_rows: int = 0
    left_for_next_run_rows: int = 0
    left_for_next_run_bytes: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["batches"] = [batch.to_dict() for batch in self.batches]
        return data


def candidate_filter(table: ResolvedTable, params: OffloadParams) -> tuple[sql.Composable, list[Any]]:
    """Return the WHERE clause (without WHERE) selecting inline rows with bytes that this run may move."""
    content = table.column("content_column")
    clauses: list[sql.Composable] = [
        sql.SQL("{} = %s").format(table.column("backend_column")),
        sql.SQL("{} IS NOT NULL").format(content),
    ]
    values: list[Any] = [table.mapping.inline_value]
    if params.min_size_bytes > 0:
        clauses.append(sql.SQL("octet_length({}) >= %s").format(content))
        values.append(params.min_size_bytes)
    if params.max_size_bytes is not None:
        clauses.append(sql.SQL("octet_length({}) <= %s").format(content))
        values.append(params.max_size_bytes)
    if params.created_from or params.created_to:
        if table.mapping.created_at_column is None:
            from attachment_ops.errors import ConfigurationError

            raise ConfigurationError(
                "A created_at window was given, but attachments.created_at_column is null in the "
                "configuration; map the table's creation time column or drop the window."
            )
        created = table.column("created_at_column")
        if params.created_from:
            clauses.append(sql.SQL("{} >= %s").format(created))
            values.append(params.created_from)
        if params.created_to:
            clauses.append(sql.SQL("{} < %s").format(created))
            values.append(params.created_to)
    return sql.SQL(" AND ").join(clauses), values


def plan_offload(conn: psycopg.Connection, table: ResolvedTable, params: OffloadParams) -> Plan:
    """Walk candidate rows in primary key order and cut them into batches.

    A batch closes at ``batch_rows`` rows or when the next row would push it past
    ``max_batch_bytes`` (a single row larger than that forms a batch of its own). Planning stops
    at ``limit`` rows or ``max_batches`` batches. Only ids and ``octet_length`` are read, which
    does not detoast the values.
    """
    where, values = candidate_filter(table, params)
    pk = table.column("primary_key")
    plan = Plan(params=params.to_dict())
    query = sql.SQL("SELECT {pk}, octet_length({content}) FROM {table} WHERE {where} ORDER BY {pk}").format(
        pk=pk, content=table.column("content_column"), table=table.table, where=where
    )
    current: list[tuple[int, int]] = []
    current_bytes = 0

    def close_batch() -> None:
        nonlocal current, current_bytes
        if not current:
            return
        plan.batches.append(
            BatchDescriptor(
                batch_id=f"b{len(plan.batches):04d}",
                first_id=current[0][0],
                last_id=current[-1][0],
                rows=len(current),
                bytes=current_bytes,
            )
        )
        plan.rows += len(current)
        plan.bytes += current_bytes
        current, current_bytes = [], 0

    # A named (server-side) cursor streams ids in pages, so planning a huge table stays small.
    with conn.transaction(), conn.cursor(name="attachment_ops_plan") as cur:
        cur.itersize = 2000
        cur.execute(query, values)
        for row_id, size in cur:
            size = int(size)
            room = len(plan.batches) < params.max_batches and plan.rows + len(current) < params.limit
            if not room:
                plan.left_for_next_run_rows += 1
                plan.left_for_next_run_bytes += size
                continue
            if current and (
                len(current) >= params.batch_rows or current_bytes + size > params.max_batch_bytes
            ):
                close_batch()
                if len(plan.batches) >= params.max_batches:
                    plan.left_for_next_run_rows += 1
                    plan.left_for_next_run_bytes += size
                    continue
            current.append((row_id, size))
            current_bytes += size
        close_batch()

    null_query = sql.SQL("SELECT count(*) FROM {table} WHERE {backend} = %s AND {content} IS NULL").format(
        table=table.table, backend=table.column("backend_column"), content=table.column("content_column")
    )
    with conn.cursor() as cur:
        cur.execute(null_query, (table.mapping.inline_value,))
        plan.null_rows = int(cur.fetchone()[0])

    log.info(
        "Planned %d rows (%.1f MiB) in %d batches for %s%s.",
        plan.rows,
        plan.bytes / 2**20,
        len(plan.batches),
        table.qualified_name,
        " (dry run)" if params.dry_run else "",
    )
    if plan.left_for_next_run_rows:
        log.warning(
            "Left %d rows (%.1f MiB) for the next run: this run is capped at limit=%d rows and "
            "max_batches=%d batches.",
            plan.left_for_next_run_rows,
            plan.left_for_next_run_bytes / 2**20,
            params.limit,
            params.max_batches,
        )
    if plan.null_rows:
        log.info("Skipped %d inline rows whose content is NULL: there is nothing to move.", plan.null_rows)
    return plan
