"""PostgreSQL sessions for the package, on psycopg 3.

Every session sets its own ``statement_timeout`` and ``lock_timeout``, so a role- or
database-level setting is never inherited silently (a maintenance session that inherits a 30 s
statement_timeout would kill VACUUM halfway).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from attachment_ops.errors import PermanentError, TransientError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

APPLICATION_NAME = "attachment_ops"


def connect(
    conninfo: str,
    *,
    autocommit: bool = True,
    statement_timeout_ms: int | None = 600000,
    lock_timeout_ms: int | None = 5000,
    application_name: str = APPLICATION_NAME,
    connect_timeout_seconds: int = 10,
    timeouts_at_startup: bool = True,
) -> psycopg.Connection:
    """Open a session with the package's timeouts set at session level.

    With ``timeouts_at_startup`` (the default) the timeouts travel as startup options, so they
    apply from the first statement. The preflight turns it off to read, in ``reset_val``, the
    timeouts a plain session of this role inherits.

    Autocommit is the default: a statement runs in its own short transaction, and code that needs
    several statements to commit together opens ``conn.transaction()`` explicitly.

    :raises TransientError: when the server cannot be reached or drops the connection.
    :raises PermanentError: when the credentials or the database name are wrong.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    # Startup options take effect before the first statement and override role and database
    # settings, so even a role-level statement_timeout of 1 ms cannot cancel the set-up below.
    timeouts = f"-c statement_timeout={statement_timeout_ms or 0} -c lock_timeout={lock_timeout_ms or 0}"
    options = " ".join(
        filter(None, [conninfo_to_dict(conninfo).get("options"), timeouts if timeouts_at_startup else None])
    )
    try:
        conn = psycopg.connect(
            conninfo,
            autocommit=autocommit,
            application_name=application_name,
            connect_timeout=connect_timeout_seconds,
            **({"options": options} if options else {}),
        )
    except psycopg.OperationalError as error:
        raise classify_pg_error(error, "connect to PostgreSQL") from error
    with conn.cursor() as cur:
        # set_config() takes parameters, so no value is ever formatted into SQL text.
        cur.execute(
            "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
            (f"{statement_timeout_ms or 0}ms", f"{lock_timeout_ms or 0}ms"),
        )
    if not autocommit:
        conn.commit()
    return conn


_PERMANENT_SQLSTATES = {
    "28P01": "password authentication failed",
    "28000": "invalid authorization",
    "3D000": "database does not exist",
    "42501": "insufficient privilege",
}


def classify_pg_error(error: Exception, action: str) -> Exception:
    """Map a psycopg error to TransientError or PermanentError with a message that names the cause."""
    import psycopg

    sqlstate = getattr(error, "sqlstate", None)
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if sqlstate in _PERMANENT_SQLSTATES:
        return PermanentError(
            f"Could not {action}: {_PERMANENT_SQLSTATES[sqlstate]} ({text}). "
            "Check the Postgres connection's login, password and database."
        )
    lowered = text.lower()
    if "password authentication failed" in lowered or "does not exist" in lowered and "database" in lowered:
        return PermanentError(
            f"Could not {action}: {text}. Check the Postgres connection's login, password and database."
        )
    if isinstance(
        error, psycopg.OperationalError | psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable
    ):
        return TransientError(f"Could not {action}: {text}")
    if sqlstate and sqlstate.startswith(("08", "57", "40", "53")):
        return TransientError(f"Could not {action}: {text}")
    return PermanentError(f"Could not {action}: {text}")


def fetch_one(conn: psycopg.Connection, query: Any, params: Any = None) -> tuple | None:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()


def fetch_all(conn: psycopg.Connection, query: Any, params: Any = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()
