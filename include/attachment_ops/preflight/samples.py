"""Free-space samples kept between runs in ``<ledger_schema>.disk_samples``, for the time-to-full fit.

Samples are keyed by host and path, because Airflow workers on different hosts see different
disks under the same path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from attachment_ops.preflight.model import DiskSample

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


def ensure_disk_samples_table(conn: psycopg.Connection, schema: str) -> None:
    """Create the schema and the ``disk_samples`` table if missing."""
    from psycopg import sql

    statements = [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)),
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {}.disk_samples (
                sample_id bigserial PRIMARY KEY,
                host text NOT NULL,
                path text NOT NULL,
                recorded_at timestamptz NOT NULL,
                free_bytes bigint NOT NULL,
                total_bytes bigint NOT NULL
            )
            """
        ).format(sql.Identifier(schema)),
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS disk_samples_host_path_idx ON {}.disk_samples (host, path, recorded_at)"
        ).format(sql.Identifier(schema)),
    ]
    # Concurrent first runs can collide on the catalog even with IF NOT EXISTS; the advisory
    # transaction lock serialises the creation.
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended('attachment_ops.disk_samples', 0))")
        for statement in statements:
            cur.execute(statement)


def store_disk_samples(conn: psycopg.Connection, schema: str, samples: Iterable[DiskSample]) -> int:
    """Insert ``samples`` (``PreflightReport.disk_samples``) and return how many were stored."""
    from psycopg import sql

    rows = [
        (
            sample.host,
            sample.path,
            datetime.fromtimestamp(sample.recorded_at).astimezone(),
            sample.free_bytes,
            sample.total_bytes,
        )
        for sample in samples
    ]
    if not rows:
        return 0
    query = sql.SQL(
        "INSERT INTO {}.disk_samples (host, path, recorded_at, free_bytes, total_bytes) VALUES (%s, %s, %s, %s, %s)"
    ).format(sql.Identifier(schema))
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(query, rows)
    return len(rows)


def load_disk_history(
    conn: psycopg.Connection, schema: str, *, host: str, since_hours: float
) -> dict[str, list[tuple[datetime, int]]]:
    """Return the samples of ``host`` from the last ``since_hours``, by path, oldest first.

    Returns an empty mapping when the table does not exist yet.
    """
    from psycopg import sql

    qualified = sql.SQL("{}.disk_samples").format(sql.Identifier(schema)).as_string(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified,))
        if not cur.fetchone()[0]:
            return {}
        cur.execute(
            sql.SQL(
                "SELECT path, recorded_at, free_bytes FROM {}.disk_samples"
                " WHERE host = %s AND recorded_at >= now() - make_interval(secs => %s)"
                " ORDER BY path, recorded_at"
            ).format(sql.Identifier(schema)),
            (host, since_hours * 3600),
        )
        history: dict[str, list[tuple[datetime, int]]] = {}
        for path, recorded_at, free_bytes in cur.fetchall():
            history.setdefault(path, []).append((recorded_at, free_bytes))
    return history


def prune_disk_samples(conn: psycopg.Connection, schema: str, *, keep_days: float) -> int:
    """Delete samples older than ``keep_days`` and return how many were deleted."""
    from psycopg import sql

    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "DELETE FROM {}.disk_samples WHERE recorded_at < now() - make_interval(secs => %s)"
            ).format(sql.Identifier(schema)),
            (keep_days * 86400,),
        )
        deleted = cur.rowcount
    if deleted:
        log.info(
            "Deleted %d disk samples older than %g days from %s.disk_samples", deleted, keep_days, schema
        )
    return deleted
