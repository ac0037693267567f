"""Space reclamation for the attachments table: VACUUM (ANALYZE), VACUUM FULL and pg_repack.

After an offload clears the inline bytes, their TOAST chunks are dead tuples. Plain VACUUM makes
that space reusable inside the table's files, but Postgres returns space to the operating system
only by truncating empty pages at the end of a file, so the TOAST file usually stays large.
VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock and needs free disk for the new
copy. pg_repack rebuilds it online with brief locks, and needs its extension, a superuser and free
disk as well.

Every statement runs on an autocommit session (VACUUM cannot run inside a transaction block)
with ``lock_timeout`` and ``statement_timeout`` from the ``reclaim`` configuration set for the
session, so a role- or database-level setting is never inherited. The gate that decides whether
a full reclaim may run lives in ``attachment_ops.reclaim_gate``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from attachment_ops.config import MaintenanceConfig
from attachment_ops.db import classify_pg_error, connect
from attachment_ops.errors import ConfigurationError, PermanentError, TransientError

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql as pg_sql

log = logging.getLogger(__name__)

FULL_METHODS = ("vacuum_full", "pg_repack")
RECLAIM_METHODS = ("none", *FULL_METHODS)
MIB = 1024 * 1024
# Seconds pg_repack gets to clean up its log table and triggers after SIGINT before it is killed.
PG_REPACK_CLEANUP_SECONDS = 60
# libpq connection parameters and the environment variables that carry them to the pg_repack client,
# so that no password ever appears on a command line.
_LIBPQ_ENVIRONMENT = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}


@dataclass(frozen=True)
class TableTarget:
    """The attachments table as the reclaim stage addresses it: names, oids and a composed identifier."""

    schema: str
    name: str
    oid: int
    toast_oid: int | None

    @property
    def display_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def identifier(self) -> pg_sql.Identifier:
        from psycopg import sql

        return sql.Identifier(self.schema, self.name)


def resolve_target(conn: psycopg.Connection, config: MaintenanceConfig) -> TableTarget:
    """Validate the mapping and look up the table's oid and TOAST oid, without locking the table.

    :raises MappingError: when the table or a mapped column does not exist.
    """
    from attachment_ops.offload.mapping import resolve_table

    resolved = resolve_table(conn, config.mapping)
    with conn.cursor() as cur:
        cur.execute("SELECT nullif(reltoastrelid, 0)::bigint FROM pg_class WHERE oid = %s", (resolved.oid,))
        toast_oid = cur.fetchone()[0]
    return TableTarget(schema=resolved.schema, name=resolved.name, oid=resolved.oid, toast_oid=toast_oid)


def relation_sizes(conn: psycopg.Connection, oid: int) -> dict[str, int]:
    """Measure the table's files in bytes: heap, TOAST (with its index), indexes and the total.

    ``heap_bytes + toast_bytes + indexes_bytes == total_bytes``. The ``*_main_pages`` figures are
    the main forks in blocks, whose decrease is what truncation gave back. Takes an ACCESS SHARE
    lock on the table, so it waits for ``lock_timeout`` behind an ACCESS EXCLUSIVE lock.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT current_setting('block_size')::bigint, pg_relation_size(c.oid), pg_table_size(c.oid),"
            " coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0),"
            " coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),"
            " pg_indexes_size(c.oid), pg_total_relation_size(c.oid), c.relfilenode"
            " FROM pg_class c WHERE c.oid = %s",
            (oid,),
        )
        block, heap_main, table_size, toast_main, toast_total, indexes, total, filenode = cur.fetchone()
    return {
        "heap_bytes": table_size - toast_total,
        "toast_bytes": toast_total,
        "indexes_bytes": indexes,
        "total_bytes": total,
        "heap_main_pages": heap_main // block,
        "toast_main_pages": toast_main // block,
        "relfilenode": filenode,
    }


def _pgstattuple_schema(conn: psycopg.Connection) -> str | None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'pgstattuple'"
        )
        row = cur.fetchone()
    return row[0] if row else None


def space_stats(conn: psycopg.Connection, target: TableTarget, *, include_toast: bool) -> dict[str, Any]:
    """Measure dead tuples and free space of the heap and, when asked, of the TOAST table.

    Uses ``pgstattuple_approx`` when the extension is installed and the role may call it (members
    of ``pg_stat_scan_tables`` may). It reads every page that the visibility map does not mark
    all-visible, so the TOAST table is measured only after VACUUM, when that is cheap.
    ``dead_tuples_stats`` is the statistics collector's estimate and is always present.
    """
    import psycopg
    from psycopg import sql

    relations = {"heap": target.oid}
    if include_toast and target.toast_oid:
        relations["toast"] = target.toast_oid
    schema = _pgstattuple_schema(conn)
    stats: dict[str, Any] = {"source": "pgstattuple_approx" if schema else "pg_stat_all_tables"}
    for label, oid in relations.items():
        entry: dict[str, Any] = {"dead_tuples": None, "dead_bytes": None, "free_bytes": None}
        with conn.cursor() as cur:
            cur.execute("SELECT n_dead_tup FROM pg_stat_all_tables WHERE relid = %s", (oid,))
            row = cur.fetchone()
            entry["dead_tuples_stats"] = row[0] if row else None
            if schema:
                query = sql.SQL(
                    "SELECT dead_tuple_count, dead_tuple_len, approx_free_space, table_len"
                    " FROM {}.pgstattuple_approx(%s::oid::regclass)"
                ).format(sql.Identifier(schema))
                try:
                    cur.execute(query, (oid,))
                except psycopg.errors.InsufficientPrivilege as error:
                    log.warning(
                        "pgstattuple_approx is not allowed for this role (%s); using statistics only",
                        error.diag.message_primary,
                    )
                    stats["source"] = "pg_stat_all_tables"
                    stats["note"] = (
                        "pgstattuple_approx was denied: GRANT pg_stat_scan_tables to the maintenance role "
                        "to report free space."
                    )
                    schema = None
                else:
                    dead_tuples, dead_bytes, free_bytes, length = cur.fetchone()
                    entry.update(
                        dead_tuples=dead_tuples,
                        dead_bytes=dead_bytes,
                        free_bytes=free_bytes,
                        scanned_bytes=length,
                    )
        stats[label] = entry
    if stats["source"] == "pg_stat_all_tables" and "note" not in stats:
        stats["note"] = "Free space is unknown: run CREATE EXTENSION pgstattuple to report it."
    return stats


def xmin_holders(conn: psycopg.Connection, min_age_seconds: float) -> list[dict[str, Any]]:
    """List what holds back the xmin horizon, so VACUUM cannot remove rows they may still see.

    Sessions of this database (and WAL senders) whose transaction is older than
    ``min_age_seconds`` and that hold a snapshot or a transaction id, prepared transactions of
    this database, and replication slots with an ``xmin``. Query texts are left out because they
    may contain data.
    """
    holders: list[dict[str, Any]] = []
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pid, usename, application_name, backend_type, state, xact_start, query_start,"
            " extract(epoch FROM clock_timestamp() - xact_start)::float8,"
            " greatest(age(backend_xmin), age(backend_xid))"
            " FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND (datname = current_database() OR backend_type = 'walsender')"
            " AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)"
            " AND xact_start <= clock_timestamp() - make_interval(secs => %s)"
            " ORDER BY xact_start",
            (min_age_seconds,),
        )
        for pid, user, application, backend_type, state, xact_start, query_start, age, xid_age in cur:
            holders.append(
                {
                    "kind": "session",
                    "pid": pid,
                    "user": user,
                    "application_name": application,
                    "backend_type": backend_type,
                    "state": state,
                    "transaction_start": xact_start.isoformat() if xact_start else None,
                    "query_start": query_start.isoformat() if query_start else None,
                    "transaction_age_seconds": round(age, 1) if age is not None else None,
                    "xmin_age_xids": xid_age,
                }
            )
        cur.execute(
            "SELECT gid, owner, prepared, extract(epoch FROM clock_timestamp() - prepared)::float8,"
            " age(transaction) FROM pg_prepared_xacts WHERE database = current_database()"
            " AND prepared <= clock_timestamp() - make_interval(secs => %s) ORDER BY prepared",
            (min_age_seconds,),
        )
        for gid, owner, prepared, age, xid_age in cur:
            holders.append(
                {
                    "kind": "prepared_transaction",
                    "gid": gid,
                    "user": owner,
                    "transaction_start": prepared.isoformat(),
                    "transaction_age_seconds": round(age, 1),
                    "xmin_age_xids": xid_age,
                }
            )
        cur.execute(
            "SELECT slot_name, slot_type, active, age(xmin) FROM pg_replication_slots WHERE xmin IS NOT NULL"
        )
        for slot_name, slot_type, active, xid_age in cur:
            holders.append(
                {
                    "kind": "replication_slot",
                    "slot_name": slot_name,
                    "slot_type": slot_type,
                    "active": active,
                    "xmin_age_xids": xid_age,
                }
            )
    return holders


def describe_holder(holder: dict[str, Any]) -> str:
    if holder["kind"] == "session":
        return (
            f"pid {holder['pid']} (user {holder['user']}, {holder['state'] or holder['backend_type']}, "
            f"transaction open {holder['transaction_age_seconds']:.0f} s since {holder['transaction_start']}, "
            f"last query started {holder['query_start']})"
        )
    if holder["kind"] == "prepared_transaction":
        return (
            f"prepared transaction {holder['gid']!r} (owner {holder['user']}, prepared "
            f"{holder['transaction_age_seconds']:.0f} s ago)"
        )
    return f"replication slot {holder['slot_name']!r} ({holder['slot_type']}, active {holder['active']})"


_FINISHED = re.compile(r'finished vacuuming "(?P<relation>[^"]+)"')
_PAGES = re.compile(r"pages: (?P<removed>\d+) removed, (?P<remain>\d+) remain")
_TUPLES = re.compile(
    r"tuples: (?P<removed>\d+) removed, (?P<remain>\d+) remain, (?P<not_removable>\d+) are dead but not yet removable"
)


def parse_vacuum_verbose(messages: list[str]) -> dict[str, dict[str, int | str]]:
    """Extract pages and tuples per relation from VACUUM VERBOSE messages (PostgreSQL 15 wording).

    Returns ``{"heap": {...}, "toast": {...}}`` with the keys found. Other server versions may word
    their messages differently. The result is then empty, and the measured sizes still apply.
    """
    parsed: dict[str, dict[str, int | str]] = {}
    for message in messages:
        finished = _FINISHED.search(message)
        if not finished:
            continue
        relation = finished.group("relation")
        entry: dict[str, int | str] = {"relation": relation}
        pages = _PAGES.search(message)
        if pages:
            entry["pages_removed"] = int(pages.group("removed"))
            entry["pages_remain"] = int(pages.group("remain"))
        tuples = _TUPLES.search(message)
        if tuples:
            entry["tuples_removed"] = int(tuples.group("removed"))
            entry["dead_not_removable"] = int(tuples.group("not_removable"))
        parsed["toast" if ".pg_toast." in relation else "heap"] = entry
    return parsed


def check_timeouts(reclaim: dict[str, Any]) -> None:
    """Raise ConfigurationError unless ``lock_timeout_ms`` is positive and below ``statement_timeout_ms``."""
    lock_ms = reclaim["lock_timeout_ms"]
    statement_ms = reclaim["statement_timeout_ms"]
    if lock_ms <= 0:
        raise ConfigurationError(
            f"reclaim.lock_timeout_ms must be positive, got {lock_ms}; without it a maintenance statement "
            "can queue behind a lock indefinitely and block the application's queries behind it."
        )
    if statement_ms < 0 or (statement_ms and lock_ms >= statement_ms):
        raise ConfigurationError(
            f"reclaim.lock_timeout_ms ({lock_ms}) must be below reclaim.statement_timeout_ms ({statement_ms}); "
            "0 disables the statement timeout."
        )


@contextmanager
def maintenance_session(
    conn_or_conninfo: psycopg.Connection | str, reclaim: dict[str, Any]
) -> Iterator[psycopg.Connection]:
    """Yield an autocommit session with the reclaim timeouts set for the session.

    A connection passed in must be in autocommit mode and idle, because VACUUM cannot run in a
    transaction block. Its timeouts are changed for the rest of the session. A conninfo string
    gets a session of its own, closed at the end.

    :raises ValueError: when the connection passed in is not in autocommit mode or not idle.
    """
    check_timeouts(reclaim)
    if isinstance(conn_or_conninfo, str):
        conn = connect(
            conn_or_conninfo,
            autocommit=True,
            statement_timeout_ms=reclaim["statement_timeout_ms"],
            lock_timeout_ms=reclaim["lock_timeout_ms"],
        )
        try:
            yield conn
        finally:
            conn.close()
        return

    import psycopg

    conn = conn_or_conninfo
    status = conn.info.transaction_status
    if not conn.autocommit or status != psycopg.pq.TransactionStatus.IDLE:
        raise ValueError(
            f"VACUUM cannot run inside a transaction block, but this connection has autocommit "
            f"{conn.autocommit} and status {status.name}. Pass a conninfo string, or a connection with "
            "autocommit = True that is idle."
        )
    conn.execute(
        "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
        (f"{reclaim['statement_timeout_ms']}ms", f"{reclaim['lock_timeout_ms']}ms"),
    )
    yield conn


def _session_settings(conn: psycopg.Connection) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')")
        lock_timeout, statement_timeout = cur.fetchone()
    return {
        "autocommit": conn.autocommit,
        "lock_timeout": lock_timeout,
        "statement_timeout": statement_timeout,
    }


@contextmanager
def _captured_notices(conn: psycopg.Connection) -> Iterator[list[str]]:
    messages: list[str] = []

    def handler(diagnostic: Any) -> None:
        messages.append(diagnostic.message_primary or "")

    conn.add_notice_handler(handler)
    try:
        yield messages
    finally:
        conn.remove_notice_handler(handler)


def _lock_holders(conn: psycopg.Connection, target: TableTarget) -> list[str]:
    """Describe the other sessions that hold a lock on the table or its TOAST table."""
    import psycopg

    oids = [oid for oid in (target.oid, target.toast_oid) if oid]
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT l.pid, a.usename, l.mode, a.state, a.xact_start FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'relation' AND l.relation = ANY(%s) AND l.granted"
                " AND l.pid <> pg_backend_pid() ORDER BY a.xact_start",
                (oids,),
            )
            rows = cur.fetchall()
    except psycopg.Error as error:
        log.warning("Could not list the sessions locking %s: %s", target.display_name, error)
        return []
    return [
        f"pid {pid} (user {user}, {mode}, {state}, transaction since "
        f"{xact_start.isoformat() if xact_start else 'unknown'})"
        for pid, user, mode, state, xact_start in rows
    ]


def _maintenance_error(
    conn: psycopg.Connection, target: TableTarget, action: str, error: Exception, reclaim: dict[str, Any]
) -> Exception:
    import psycopg

    if isinstance(error, psycopg.errors.LockNotAvailable):
        holders = _lock_holders(conn, target)
        who = "; ".join(holders) if holders else "no holder is visible any more"
        return TransientError(
            f"{action} on {target.display_name} timed out after waiting {reclaim['lock_timeout_ms']} ms for a "
            f"lock (reclaim.lock_timeout_ms). Sessions holding locks on the table: {who}. Retry when they "
            "have finished, or raise reclaim.lock_timeout_ms."
        )
    if isinstance(error, psycopg.errors.QueryCanceled):
        return TransientError(
            f"{action} on {target.display_name} was cancelled after {reclaim['statement_timeout_ms']} ms by "
            "statement_timeout (reclaim.statement_timeout_ms). Raise it, or run in a longer maintenance window."
        )
    return classify_pg_error(error, f"run {action} on {target.display_name}")


def vacuum_analyze(conn_or_conninfo: psycopg.Connection | str, config: MaintenanceConfig) -> dict[str, Any]:
    """Run VACUUM (VERBOSE, ANALYZE) on the attachments table and report what it changed.

    Returns a JSON-serialisable dict. It has the session's timeouts, sizes before and after (heap,
    TOAST, indexes, total), pages truncated, dead tuples and free space, and the parsed VERBOSE
    figures. ``xmin_holders`` names the sessions and slots holding back the xmin horizon. The plain
    ``message`` states how much space became reusable and how much went back to the operating system.

    :raises ValueError: when given a connection that is not in autocommit mode or not idle.
    :raises TransientError: when a lock is not granted within ``reclaim.lock_timeout_ms`` (the
        message names the sessions holding locks on the table) or ``statement_timeout`` cancels it.
    :raises MappingError: when the configured table does not exist.
    :raises PermanentError: when the role may not vacuum the table, which Postgres only warns about.
    """
    import psycopg
    from psycopg import sql

    reclaim = config.section("reclaim")
    started_at = datetime.now(timezone.utc)
    with maintenance_session(conn_or_conninfo, reclaim) as conn:
        target = resolve_target(conn, config)
        session = _session_settings(conn)
        log.info(
            "VACUUM (ANALYZE) of %s with lock_timeout %s and statement_timeout %s",
            target.display_name,
            session["lock_timeout"],
            session["statement_timeout"],
        )
        action = "measuring sizes before VACUUM"
        try:
            before = relation_sizes(conn, target.oid)
            space_before = space_stats(conn, target, include_toast=False)
            action = "VACUUM (ANALYZE)"
            clock = time.monotonic()
            with _captured_notices(conn) as messages:
                conn.execute(sql.SQL("VACUUM (VERBOSE, ANALYZE) {}").format(target.identifier))
            duration = time.monotonic() - clock
            action = "measuring sizes after VACUUM"
            after = relation_sizes(conn, target.oid)
            space_after = space_stats(conn, target, include_toast=True)
            holders = xmin_holders(conn, reclaim["old_transaction_seconds"])
        except psycopg.Error as error:
            raise _maintenance_error(conn, target, action, error, reclaim) from error

    # A role that may not vacuum the table gets only a warning, and the statement succeeds. The
    # warning reads 'skipping "t" --- only table or database owner can vacuum it' in PostgreSQL 15
    # and 'permission denied to vacuum "t", skipping it' in later releases.
    skipped = [message for message in messages if message.startswith("skipping") or "skipping it" in message]
    if skipped:
        raise PermanentError(
            f"VACUUM (ANALYZE) did not process {target.display_name}: {skipped[0]}. Run it as the table's "
            "owner or a superuser: set that role on the Postgres connection (connections.postgres)."
        )
    verbose = parse_vacuum_verbose(messages)
    result: dict[str, Any] = {
        "table": target.display_name,
        "method": "vacuum_analyze",
        "started_at": started_at.isoformat(),
        "duration_seconds": round(duration, 3),
        "session": session,
        "before": before,
        "after": after,
        "returned_to_os_bytes": before["total_bytes"] - after["total_bytes"],
        "pages_truncated": {
            "heap": before["heap_main_pages"] - after["heap_main_pages"],
            "toast": before["toast_main_pages"] - after["toast_main_pages"],
        },
        "space_before": space_before,
        "space_after": space_after,
        "reusable_bytes": _reusable_bytes(space_after),
        "vacuum_verbose": verbose,
        "xmin_holders": holders,
    }
    result["message"] = vacuum_message(result)
    log.info("%s", result["message"])
    for holder in holders:
        log.warning("Holding back VACUUM's cleanup of %s: %s", target.display_name, describe_holder(holder))
    return result


def _reusable_bytes(space: dict[str, Any]) -> int | None:
    figures = [space[label]["free_bytes"] for label in ("heap", "toast") if label in space]
    if not figures or any(figure is None for figure in figures):
        return None
    return sum(figures)


def _mib(value: int) -> str:
    return f"{value / MIB:,.1f} MiB"


def vacuum_message(result: dict[str, Any]) -> str:
    """Build the operator's summary of a VACUUM: reusable space, space returned, and what blocks cleanup."""
    returned = result["returned_to_os_bytes"]
    reusable = result["reusable_bytes"]
    total = result["after"]["total_bytes"]
    if reusable is None:
        reusable_text = "an unknown amount of free space (install pgstattuple to measure it)"
    else:
        reusable_text = f"{_mib(reusable)} of free space"
    parts = [
        f"VACUUM left {result['table']} at {_mib(total)} on disk, {reusable_text} that new rows will reuse. "
        f"It returned {_mib(max(returned, 0))} to the operating system by truncating empty pages at the end "
        "of the files. Space in the middle of a file stays allocated until a full reclaim (VACUUM FULL or "
        "pg_repack) rewrites the table."
    ]
    not_removable = sum(
        int(entry.get("dead_not_removable", 0)) for entry in result["vacuum_verbose"].values()
    )
    if not_removable:
        parts.append(f"{not_removable} dead tuples could not be removed yet.")
    if result["xmin_holders"]:
        named = "; ".join(describe_holder(holder) for holder in result["xmin_holders"])
        parts.append(f"Holding back cleanup: {named}. End them and run VACUUM again to remove those rows.")
    return " ".join(parts)


def full_reclaim(
    conninfo: str,
    config: MaintenanceConfig,
    method: str,
    *,
    pg_repack_path: str | None = None,
) -> dict[str, Any]:
    """Rewrite the attachments table with VACUUM FULL or pg_repack and report the space returned.

    The gate (maintenance window, approval, disk room) is the caller's job; see
    ``attachment_ops.reclaim_gate``. VACUUM FULL holds an ACCESS EXCLUSIVE lock on the table for
    the whole rewrite, so the application cannot read or write attachments meanwhile. pg_repack
    holds brief locks at start and end, runs with ``--no-kill-backend`` so that it never cancels
    the application's sessions, and needs ``conninfo`` to be a superuser's.

    :raises ConfigurationError: on an unknown method or invalid timeouts.
    :raises PermanentError: when pg_repack's client or extension is missing (the message names
        the Debian package to install), the role is not a superuser, or pg_repack fails.
    :raises TransientError: on a lock or statement timeout, or when pg_repack runs out of time.
    """
    import psycopg
    from psycopg import sql

    if method not in FULL_METHODS:
        raise ConfigurationError(
            f"Full reclaim method {method!r} is invalid; use one of {', '.join(FULL_METHODS)}."
        )
    reclaim = config.section("reclaim")
    started_at = datetime.now(timezone.utc)
    output: list[str] = []
    with maintenance_session(conninfo, reclaim) as conn:
        target = resolve_target(conn, config)
        action = f"measuring sizes before {method}"
        try:
            before = relation_sizes(conn, target.oid)
            clock = time.monotonic()
            if method == "vacuum_full":
                action = "VACUUM FULL"
                log.info(
                    "VACUUM FULL of %s (%s): ACCESS EXCLUSIVE lock until it finishes",
                    target.display_name,
                    _mib(before["total_bytes"]),
                )
                with _captured_notices(conn) as output:
                    conn.execute(sql.SQL("VACUUM (FULL, VERBOSE, ANALYZE) {}").format(target.identifier))
            else:
                status = pg_repack_status(conn, config, client_path=pg_repack_path)
                if status["problem"]:
                    raise PermanentError(status["problem"])
                output = _run_pg_repack(conninfo, conn, target, status["client_path"], reclaim)
            duration = time.monotonic() - clock
            action = f"measuring sizes after {method}"
            after = relation_sizes(conn, target.oid)
            holders = xmin_holders(conn, reclaim["old_transaction_seconds"])
        except psycopg.Error as error:
            raise _maintenance_error(conn, target, action, error, reclaim) from error

    if after["relfilenode"] == before["relfilenode"]:
        raise PermanentError(
            f"{method} finished but {target.display_name} was not rewritten (its file is unchanged). "
            f"Output: {' | '.join(output[-10:])}"
        )
    returned = before["total_bytes"] - after["total_bytes"]
    result = {
        "table": target.display_name,
        "method": method,
        "started_at": started_at.isoformat(),
        "duration_seconds": round(duration, 3),
        "before": before,
        "after": after,
        "returned_to_os_bytes": returned,
        "output": output[-40:],
        "xmin_holders": holders,
        "message": (
            f"{method} rewrote {target.display_name} from {_mib(before['total_bytes'])} to "
            f"{_mib(after['total_bytes'])} and returned {_mib(max(returned, 0))} to the operating system "
            f"in {duration:.1f} s."
        ),
    }
    if holders:
        # The rewrite copies rows that these snapshots may still see, so their space stays in use.
        named = "; ".join(describe_holder(holder) for holder in holders)
        result["message"] += f" Rows still visible to these may have been kept: {named}."
    log.info("%s", result["message"])
    return result


def _find_pg_repack(configured: str | None, server_major: int) -> str | None:
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("pg_repack")
    if found:
        return found
    debian_path = f"/usr/lib/postgresql/{server_major}/bin/pg_repack"
    return debian_path if os.access(debian_path, os.X_OK) else None


def pg_repack_status(
    conn: psycopg.Connection, config: MaintenanceConfig, *, client_path: str | None = None
) -> dict[str, Any]:
    """Check that pg_repack can run: client, server extension, matching versions and a superuser.

    Returns a dict whose ``problem`` is None when everything is in place, or else a message naming
    what to install or change (the Debian package is ``postgresql-<major>-repack``).
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT current_setting('server_version_num')::int / 10000, current_database(), current_user,"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
            " (SELECT default_version FROM pg_available_extensions WHERE name = 'pg_repack'),"
            " (SELECT extversion FROM pg_extension WHERE extname = 'pg_repack')"
        )
        major, database, user, superuser, available, installed = cur.fetchone()
    package = f"postgresql-{major}-repack"
    configured = client_path or config.section("reclaim")["pg_repack_path"]
    client = _find_pg_repack(configured, major)
    client_version = _client_version(client) if client else None
    status: dict[str, Any] = {
        "client_path": client,
        "client_version": client_version,
        "extension_available": available,
        "extension_version": installed,
        "superuser": bool(superuser),
        "package": package,
        "problem": None,
    }
    if client is None:
        where = (
            f"at {configured} (reclaim.pg_repack_path)"
            if configured
            else (f"on PATH or in /usr/lib/postgresql/{major}/bin")
        )
        status["problem"] = (
            f"The pg_repack client was not found {where}. Install the Debian package {package} on the "
            "worker, or set reclaim.pg_repack_path to the client."
        )
    elif available is None:
        status["problem"] = (
            f"The pg_repack extension is not available on the database server. Install the Debian package "
            f"{package} there, then run CREATE EXTENSION pg_repack in database {database} as a superuser."
        )
    elif installed is None:
        status["problem"] = (
            f"The pg_repack extension is not installed in database {database}. Run CREATE EXTENSION "
            "pg_repack there as a superuser."
        )
    elif client_version and client_version != installed:
        status["problem"] = (
            f"The pg_repack client {client} is version {client_version} but the extension in database "
            f"{database} is {installed}. Install matching versions ({package} on both hosts, then "
            "ALTER EXTENSION pg_repack UPDATE)."
        )
    elif not superuser:
        status["problem"] = (
            f"pg_repack needs a superuser connection, and role {user} is not one. Run the full reclaim "
            "with a superuser's connection, or use vacuum_full."
        )
    return status


def _client_version(client: str) -> str | None:
    try:
        completed = subprocess.run(
            [client, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("Could not run %s --version: %s", client, error)
        return None
    match = re.search(r"pg_repack (\S+)", completed.stdout)
    return match.group(1) if match else None


def libpq_environment(conninfo: str) -> dict[str, str]:
    """Translate a conninfo string into libpq environment variables for a client program.

    :raises ConfigurationError: when the conninfo uses a parameter that has no environment variable.
    """
    from psycopg.conninfo import conninfo_to_dict

    environment = {}
    for key, value in conninfo_to_dict(conninfo).items():
        if value is None:
            continue
        if key not in _LIBPQ_ENVIRONMENT:
            raise ConfigurationError(
                f"Connection parameter {key!r} cannot be passed to pg_repack; remove it from the "
                "connection or run pg_repack by hand."
            )
        environment[_LIBPQ_ENVIRONMENT[key]] = str(value)
    return environment


def _run_pg_repack(
    conninfo: str, conn: psycopg.Connection, target: TableTarget, client: str, reclaim: dict[str, Any]
) -> list[str]:
    """Run the pg_repack client on the table and return its output lines.

    On timeout the client gets SIGINT, which makes it drop its log table and triggers, and is
    killed if it has not exited ``PG_REPACK_CLEANUP_SECONDS`` later.
    """
    wait_seconds = max(1, -(-reclaim["lock_timeout_ms"] // 1000))
    timeout_seconds = reclaim["statement_timeout_ms"] / 1000 or None
    command = [
        client,
        "--table",
        target.identifier.as_string(conn),
        "--no-order",
        "--no-kill-backend",
        "--wait-timeout",
        str(wait_seconds),
        "--no-password",
    ]
    environment = {**os.environ, **libpq_environment(conninfo)}
    log.info("Running %s", " ".join(command))
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
    )
    try:
        stdout, _ = process.communicate(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            stdout, _ = process.communicate(timeout=PG_REPACK_CLEANUP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, _ = process.communicate()
        lines = stdout.splitlines()
        raise TransientError(
            f"pg_repack on {target.display_name} did not finish within {timeout_seconds:.0f} s "
            "(reclaim.statement_timeout_ms) and was interrupted. If a later run reports leftover objects, "
            f"run DROP EXTENSION pg_repack CASCADE and CREATE EXTENSION pg_repack. Output: {' | '.join(lines[-10:])}"
        ) from None
    lines = stdout.splitlines()
    for line in lines:
        log.info("pg_repack: %s", line)
    if process.returncode != 0:
        raise PermanentError(
            f"pg_repack failed on {target.display_name} with exit code {process.returncode}: "
            f"{' | '.join(lines[-10:])}"
        )
    return lines
