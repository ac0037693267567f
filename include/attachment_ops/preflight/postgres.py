"""Postgres checks: reachable, version, primary or standby, sizes, old transactions, timeouts.

Sessions idle in a transaction and old transactions hold back the xmin horizon, so VACUUM cannot
remove the dead rows that an offload leaves behind. Other roles' sessions are visible only with
``pg_read_all_stats`` (``pg_monitor`` includes it), and the check reports how many it could not see.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from attachment_ops.config import MaintenanceConfig
from attachment_ops.errors import MaintenanceError
from attachment_ops.preflight.disk import describe_source
from attachment_ops.preflight.model import CheckResult, Status, format_bytes, format_duration

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

GROUP = "postgres"
APPLICATION_NAME = "attachment_ops.preflight"
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class PostgresFacts:
    """Server facts that the runner uses besides the rows: reachability and a local data directory."""

    reachable: bool
    local_data_directory: str | None = None


def check_postgres(conninfo: str, config: MaintenanceConfig) -> tuple[list[CheckResult], PostgresFacts]:
    """Run the Postgres checks in one short session.

    The session's statement_timeout is ``preflight.postgres_timeout_seconds``. A failed
    connection gives one FAIL row. A query that fails gives an UNKNOWN row for its check, and the
    other checks still run. Database errors become rows, not exceptions.
    """
    import psycopg

    from attachment_ops.db import classify_pg_error, connect

    preflight = config.section("preflight")
    timeout_ms = int(preflight["postgres_timeout_seconds"] * 1000)
    lock_timeout_ms = min(timeout_ms // 2, 5000)
    try:
        conn = connect(
            conninfo,
            statement_timeout_ms=timeout_ms,
            lock_timeout_ms=lock_timeout_ms,
            application_name=APPLICATION_NAME,
            connect_timeout_seconds=max(1, int(preflight["postgres_timeout_seconds"])),
            timeouts_at_startup=False,
        )
    except (MaintenanceError, psycopg.Error) as error:
        if isinstance(error, psycopg.Error):
            error = classify_pg_error(error, "connect to PostgreSQL")
        log.warning("Postgres preflight could not connect: %s", error)
        return [
            CheckResult(
                group=GROUP,
                name="postgres server",
                status=Status.FAIL,
                value=str(error),
                threshold=f"reachable within {preflight['postgres_timeout_seconds']:g} s",
                source=describe_source(
                    "preflight", "postgres_timeout_seconds", preflight["postgres_timeout_seconds"]
                ),
                hint="Check the Postgres connection's host, port, login and password, and that the server is up.",
                error=type(error).__name__,
            )
        ], PostgresFacts(False)

    results: list[CheckResult] = []
    with conn:
        steps: list[tuple[str, Callable[[], CheckResult]]] = [
            ("postgres server", lambda: _server_result(conn)),
            ("postgres primary", lambda: _recovery_result(conn)),
            ("postgres database size", lambda: _database_size_result(conn)),
            ("postgres attachments table", lambda: _table_size_result(conn, config)),
            ("postgres old transactions", lambda: _old_transactions_result(conn, preflight)),
            ("postgres timeouts", lambda: _timeouts_result(conn, config, timeout_ms, lock_timeout_ms)),
        ]
        for name, step in steps:
            try:
                results.append(step())
            except psycopg.Error as error:
                text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                log.warning("Postgres preflight check %r failed: %s", name, text)
                results.append(
                    CheckResult(
                        group=GROUP,
                        name=name,
                        status=Status.UNKNOWN,
                        value=f"query failed: {text}",
                        hint="Grant the connection's role pg_monitor, or raise preflight.postgres_timeout_seconds "
                        "if the query timed out.",
                        error=type(error).__name__,
                    )
                )
        facts = PostgresFacts(True, _local_data_directory(conn))
    return results, facts


def _fetch_one(conn: psycopg.Connection, query: Any, params: Any = None) -> tuple:
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    if row is None:
        raise AssertionError(f"Query returned no row: {query!r}")
    return row


def _fetch_all(conn: psycopg.Connection, query: Any, params: Any = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def _server_result(conn: psycopg.Connection) -> CheckResult:
    version, version_num = _fetch_one(
        conn, "SELECT current_setting('server_version'), current_setting('server_version_num')::int"
    )
    return CheckResult(
        group=GROUP,
        name="postgres server",
        status=Status.PASS,
        value=f"PostgreSQL {version} at {conn.info.host}:{conn.info.port}, database {conn.info.dbname}",
        threshold="reachable",
        metrics={"server_version": version, "server_version_num": version_num},
    )


def _recovery_result(conn: psycopg.Connection) -> CheckResult:
    (in_recovery,) = _fetch_one(conn, "SELECT pg_is_in_recovery()")
    if in_recovery:
        return CheckResult(
            group=GROUP,
            name="postgres primary",
            status=Status.FAIL,
            value="the server is a standby (pg_is_in_recovery() is true), so offload writes would fail",
            threshold="must be a primary",
            hint="Point the Postgres connection at the primary, not at a replica.",
            metrics={"in_recovery": True},
        )
    return CheckResult(
        group=GROUP,
        name="postgres primary",
        status=Status.PASS,
        value="primary (pg_is_in_recovery() is false)",
        threshold="must be a primary",
        metrics={"in_recovery": False},
    )


def _database_size_result(conn: psycopg.Connection) -> CheckResult:
    name, size = _fetch_one(conn, "SELECT current_database(), pg_database_size(current_database())")
    return CheckResult(
        group=GROUP,
        name="postgres database size",
        status=Status.PASS,
        value=f"{format_bytes(size)} in database {name}",
        threshold="information",
        metrics={"database": name, "size_bytes": size},
    )


def _table_size_result(conn: psycopg.Connection, config: MaintenanceConfig) -> CheckResult:
    from psycopg import sql

    mapping = config.mapping
    schema, table = mapping.schema_and_table
    # sql.Identifier quotes both parts; to_regclass then resolves the quoted name without
    # raising when the table does not exist.
    qualified = sql.Identifier(schema, table).as_string(conn)
    row = _fetch_one(
        conn,
        "SELECT c.oid IS NOT NULL, pg_relation_size(c.oid), coalesce(pg_total_relation_size(c.reltoastrelid), 0),"
        " pg_indexes_size(c.oid), pg_total_relation_size(c.oid)"
        " FROM (SELECT to_regclass(%s) AS oid) AS r LEFT JOIN pg_class AS c ON c.oid = r.oid",
        (qualified,),
    )
    found, heap, toast, indexes, total = row
    if not found:
        return CheckResult(
            group=GROUP,
            name="postgres attachments table",
            status=Status.FAIL,
            value=f"table {qualified} not found in database {conn.info.dbname}",
            threshold="must exist",
            source="attachments.table",
            hint="Set attachments.table in maintenance_config to the table holding the attachments, as schema.table.",
            metrics={"table": qualified},
            error="MappingError",
        )
    return CheckResult(
        group=GROUP,
        name="postgres attachments table",
        status=Status.PASS,
        value=(
            f"{qualified}: {format_bytes(total)} total = heap {format_bytes(heap)} + TOAST {format_bytes(toast)} "
            f"+ indexes {format_bytes(indexes)} (+ free space and visibility maps)"
        ),
        threshold="information",
        source="attachments.table",
        metrics={
            "table": qualified,
            "heap_bytes": heap,
            "toast_bytes": toast,
            "index_bytes": indexes,
            "total_bytes": total,
        },
    )


_OLD_TRANSACTIONS_SQL = """
SELECT pid, usename, application_name, state,
       extract(epoch FROM now() - xact_start)::float8 AS transaction_seconds,
       extract(epoch FROM now() - state_change)::float8 AS state_seconds
FROM pg_stat_activity
WHERE datname = current_database()
  AND pid <> pg_backend_pid()
  AND backend_type = 'client backend'
  AND (state IN ('idle in transaction', 'idle in transaction (aborted)')
       OR xact_start < now() - make_interval(secs => %s))
ORDER BY xact_start NULLS LAST, pid
"""

_HIDDEN_SESSIONS_SQL = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND state IS NULL
"""

_PREPARED_SQL = """
SELECT gid, owner, extract(epoch FROM now() - prepared)::float8
FROM pg_prepared_xacts
WHERE database = current_database() AND prepared < now() - make_interval(secs => %s)
ORDER BY prepared
"""

_SLOTS_SQL = """
SELECT slot_name, slot_type FROM pg_replication_slots
WHERE NOT active AND (xmin IS NOT NULL OR catalog_xmin IS NOT NULL)
ORDER BY slot_name
"""


def _old_transactions_result(conn: psycopg.Connection, preflight: dict[str, Any]) -> CheckResult:
    limit = preflight["postgres_old_transaction_seconds"]
    sessions = [
        {
            "pid": pid,
            "user": user,
            "application": application or "",
            "state": state,
            "transaction_seconds": None if age is None else round(age, 1),
            "state_seconds": None if state_age is None else round(state_age, 1),
        }
        for pid, user, application, state, age, state_age in _fetch_all(conn, _OLD_TRANSACTIONS_SQL, (limit,))
    ]
    (hidden,) = _fetch_one(conn, _HIDDEN_SESSIONS_SQL)
    prepared = [
        {"gid": gid, "owner": owner, "age_seconds": round(age, 1)}
        for gid, owner, age in _fetch_all(conn, _PREPARED_SQL, (limit,))
    ]
    slots = [{"slot": slot, "type": kind} for slot, kind in _fetch_all(conn, _SLOTS_SQL)]

    holders = [
        f"pid {session['pid']} ({session['user']}, application {session['application'] or '-'}) "
        f"{session['state']}, transaction open {format_duration(session['transaction_seconds'] or 0)}"
        for session in sessions
    ]
    holders += [
        f"prepared transaction {item['gid']!r} ({item['owner']}) {format_duration(item['age_seconds'])}"
        for item in prepared
    ]
    holders += [f"inactive replication slot {item['slot']!r} holding xmin" for item in slots]
    hidden_note = ""
    if hidden:
        hidden_note = f"; {hidden} sessions of other roles not visible (grant pg_read_all_stats)"
    threshold = f"any session idle in a transaction, or a transaction open longer than {limit:g} s"
    source = describe_source("preflight", "postgres_old_transaction_seconds", limit)
    metrics = {"sessions": sessions, "prepared": prepared, "slots": slots, "hidden_sessions": hidden}
    if holders:
        return CheckResult(
            group=GROUP,
            name="postgres old transactions",
            status=Status.WARN,
            value=f"{len(holders)} holding back VACUUM: " + "; ".join(holders[:5]) + hidden_note,
            threshold=threshold,
            source=source,
            hint="End them (COMMIT or ROLLBACK in the client, or SELECT pg_terminate_backend(pid)), or set "
            "idle_in_transaction_session_timeout. Until then, VACUUM cannot remove dead rows.",
            metrics=metrics,
        )
    status = Status.UNKNOWN if hidden else Status.PASS
    return CheckResult(
        group=GROUP,
        name="postgres old transactions",
        status=status,
        value="none among the visible sessions" + hidden_note,
        threshold=threshold,
        source=source,
        hint="Grant the connection's role pg_monitor to see every session." if hidden else "",
        metrics=metrics,
    )


_TIMEOUT_SETTINGS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")

_ROLE_SETTINGS_SQL = """
SELECT coalesce(r.rolname, 'all roles'), coalesce(d.datname, 'all databases'), s.setconfig
FROM pg_db_role_setting AS s
LEFT JOIN pg_roles AS r ON r.oid = s.setrole
LEFT JOIN pg_database AS d ON d.oid = s.setdatabase
WHERE s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = current_user))
  AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
"""


def _timeouts_result(
    conn: psycopg.Connection, config: MaintenanceConfig, statement_ms: int, lock_ms: int
) -> CheckResult:
    """Compare the session's timeouts with what the package set, and list inherited settings.

    ``reset_val`` in pg_settings is what a new session of this role in this database starts
    with, role- and database-level settings included. A session value that differs from the
    one just set means a pooler in transaction mode dropped the session settings.
    """
    session = dict(
        _fetch_all(
            conn,
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            (list(_TIMEOUT_SETTINGS[:2]),),
        )
    )
    inherited = dict(
        _fetch_all(
            conn, "SELECT name, reset_val FROM pg_settings WHERE name = ANY(%s)", (list(_TIMEOUT_SETTINGS),)
        )
    )
    role_settings = [
        f"{role} in {database}: {entry}"
        for role, database, entries in _fetch_all(conn, _ROLE_SETTINGS_SQL)
        for entry in entries or []
        if entry.split("=", 1)[0] in _TIMEOUT_SETTINGS
    ]
    problems = []
    if session.get("statement_timeout") != str(statement_ms) or session.get("lock_timeout") != str(lock_ms):
        problems.append(
            f"session shows statement_timeout {session.get('statement_timeout')} ms and lock_timeout "
            f"{session.get('lock_timeout')} ms right after setting {statement_ms} and {lock_ms}: a pooler in "
            "transaction mode drops session settings"
        )
    for section in ("offload", "reclaim"):
        lock_timeout, statement_timeout = (
            config.section(section)["lock_timeout_ms"],
            config.section(section)["statement_timeout_ms"],
        )
        if statement_timeout and (lock_timeout == 0 or lock_timeout >= statement_timeout):
            problems.append(
                f"{section}.lock_timeout_ms {lock_timeout} is not below {section}.statement_timeout_ms {statement_timeout}"
            )

    inherited_text = ", ".join(
        f"{name} {_milliseconds_text(inherited.get(name))}" for name in _TIMEOUT_SETTINGS
    )
    value = f"new sessions start with {inherited_text}; role/database settings: {'; '.join(role_settings) or 'none'}"
    metrics = {"session": session, "inherited": inherited, "role_settings": role_settings}
    threshold = "package sessions keep their own timeouts; lock_timeout below statement_timeout"
    source = "offload and reclaim lock_timeout_ms, statement_timeout_ms"
    if problems:
        return CheckResult(
            group=GROUP,
            name="postgres timeouts",
            status=Status.WARN,
            value="; ".join(problems) + f" ({value})",
            threshold=threshold,
            source=source,
            hint="Connect the package directly or through a session-mode pooler, and keep each lock_timeout_ms "
            "below its statement_timeout_ms.",
            metrics=metrics,
        )
    return CheckResult(
        group=GROUP,
        name="postgres timeouts",
        status=Status.PASS,
        value=value,
        threshold=threshold,
        source=source,
        metrics=metrics,
    )


def _milliseconds_text(setting: str | None) -> str:
    if setting is None:
        return "unknown"
    return "0 (off)" if setting == "0" else f"{setting} ms"


def _local_data_directory(conn: psycopg.Connection) -> str | None:
    """Return the server's data directory when the server runs on this host and the path exists here.

    pg_settings omits data_directory for roles without pg_read_all_settings, and then this
    returns None.
    """
    import psycopg

    host = conn.info.host or ""
    if host not in _LOCAL_HOSTS and not host.startswith("/"):
        return None
    try:
        rows = _fetch_all(conn, "SELECT setting FROM pg_settings WHERE name = 'data_directory'")
    except psycopg.Error as error:
        log.info("Cannot read data_directory: %s", error)
        return None
    if not rows or not os.path.isdir(rows[0][0]):
        return None
    # NOTE: a server reached through 127.0.0.1 may run in a container. When its data directory
    # path also exists on this host, the disk check measures the host's path, not the container's.
    return rows[0][0]
