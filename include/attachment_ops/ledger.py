"""The ledger: one row per attempt to offload or restore an attachment, in the package's own schema.

The ledger lives in the application database (schema ``attachment_ops`` by default) so that the
entry recording an offload commits in the same transaction as the row's flip. It survives runs
and feeds verification, restore and the report. Nothing is added to the application's table.

Outcomes:

- ``started``: work began on the row; a later entry of the same attempt replaces nothing, so a
  ``started`` entry with no final entry of the same ``attempt_id`` marks a crashed attempt.
- ``offloaded`` / ``restored``: the flip committed (written in the flip's transaction).
- ``changed``: the row changed or vanished between read and flip; it stayed as it was.
- ``skipped``: not moved, for the reason in ``detail`` (locked by another worker, null content).
- ``failed``: an error stopped the attempt; ``detail`` holds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg import sql

if TYPE_CHECKING:
    import psycopg

OUTCOMES = ("started", "offloaded", "restored", "changed", "skipped", "failed")
OPERATIONS = ("offload", "restore")


def ensure_schema(conn: psycopg.Connection, schema: str) -> None:
    """Create the ledger schema and table if missing; safe to run concurrently from many workers."""
    statements = [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)),
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {}.ledger (
                entry_id bigserial PRIMARY KEY,
                attempt_id uuid NOT NULL,
                run_id text NOT NULL,
                batch_id text,
                table_name text NOT NULL,
                row_id bigint NOT NULL,
                operation text NOT NULL CHECK (operation IN ('offload', 'restore')),
                outcome text NOT NULL
                    CHECK (outcome IN ('started', 'offloaded', 'restored', 'changed', 'skipped', 'failed')),
                object_key text,
                size_bytes bigint,
                sha256 text,
                detail text,
                recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
            )
            """
        ).format(sql.Identifier(schema)),
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS ledger_row_idx ON {}.ledger (table_name, row_id, entry_id)"
        ).format(sql.Identifier(schema)),
        sql.SQL("CREATE INDEX IF NOT EXISTS ledger_run_idx ON {}.ledger (run_id)").format(
            sql.Identifier(schema)
        ),
    ]
    # Two workers creating the schema at once can collide on the catalog's unique index even
    # with IF NOT EXISTS; an advisory transaction lock serialises the creation.
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended('attachment_ops.ledger', 0))")
        for statement in statements:
            cur.execute(statement)


def record(
    cur: psycopg.Cursor,
    schema: str,
    *,
    attempt_id: str,
    run_id: str,
    batch_id: str | None,
    table_name: str,
    row_id: int,
    operation: str,
    outcome: str,
    object_key: str | None = None,
    size_bytes: int | None = None,
    sha256: str | None = None,
    detail: str | None = None,
) -> None:
    """Insert one ledger entry through ``cur`` (inside the caller's transaction, if any)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"Unknown ledger outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}.")
    cur.execute(
        sql.SQL(
            "INSERT INTO {}.ledger (attempt_id, run_id, batch_id, table_name, row_id, operation, outcome,"
            " object_key, size_bytes, sha256, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(sql.Identifier(schema)),
        (
            attempt_id,
            run_id,
            batch_id,
            table_name,
            row_id,
            operation,
            outcome,
            object_key,
            size_bytes,
            sha256,
            detail,
        ),
    )


def latest_offloads(
    conn: psycopg.Connection, schema: str, table_name: str, row_ids: list[int] | None = None
) -> dict[int, dict[str, Any]]:
    """Return the latest ``offloaded`` entry per row: key, size and SHA-256."""
    query = sql.SQL(
        "SELECT DISTINCT ON (row_id) row_id, object_key, size_bytes, sha256, run_id, recorded_at"
        " FROM {}.ledger WHERE table_name = %s AND outcome = 'offloaded'"
        " AND (%s::bigint[] IS NULL OR row_id = ANY(%s::bigint[]))"
        " ORDER BY row_id, entry_id DESC"
    ).format(sql.Identifier(schema))
    with conn.cursor() as cur:
        cur.execute(query, (table_name, row_ids, row_ids))
        return {
            row[0]: {
                "object_key": row[1],
                "size_bytes": row[2],
                "sha256": row[3],
                "run_id": row[4],
                "recorded_at": row[5],
            }
            for row in cur.fetchall()
        }


def schema_exists(conn: psycopg.Connection, schema: str) -> bool:
    qualified = sql.SQL("{}.ledger").format(sql.Identifier(schema)).as_string(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified,))
        return bool(cur.fetchone()[0])
