"""Gate of the full reclaim: maintenance window, disk room, approval and the decision to run or skip.

A full reclaim (VACUUM FULL or pg_repack) runs only inside the configured maintenance window,
only after a person approved it (or the run was explicitly marked unattended), and only if the
database server's disk has room for the rewrite. The Airflow wiring (the approval operator, the
branch) lives in the DAG; this module decides.

Maintenance window format (``reclaim.maintenance_window``)::

    WINDOW [; WINDOW ...]
    WINDOW = DAYS HH:MM-HH:MM [TIMEZONE]

- ``DAYS`` is ``daily``, or a comma-separated list of day names and ranges: ``Sat``,
  ``Sat,Sun``, ``Mon-Fri``, ``Fri-Mon`` (a range may wrap past Sunday). Three-letter or full
  English names, in any case.
- Times are 24-hour wall-clock times. The start is inclusive and the end exclusive. ``24:00`` is
  allowed as an end. An end earlier than the start crosses midnight, and the day names the day
  the window starts: ``Sat 23:00-02:00`` runs from Saturday 23:00 to Sunday 02:00.
- ``TIMEZONE`` is ``UTC`` (the default) or an IANA name such as ``Europe/Berlin``. Times are
  compared as wall-clock times in that zone, so a window keeps its local hours across DST.

Examples: ``Sat 01:00-05:00 UTC``, ``daily 02:00-04:00``, ``Mon-Fri 22:00-02:00 Europe/Berlin``,
``Sat 01:00-05:00; Sun 01:00-03:00``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any

from attachment_ops.config import MaintenanceConfig
from attachment_ops.errors import ConfigurationError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

_DAY_NAMES = {
    "mon": 0,
    "monday": 0,
    "tue": 1,
    "tuesday": 1,
    "wed": 2,
    "wednesday": 2,
    "thu": 3,
    "thursday": 3,
    "fri": 4,
    "friday": 4,
    "sat": 5,
    "saturday": 5,
    "sun": 6,
    "sunday": 6,
}
_RULE = re.compile(
    r"^(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})(?:\s+(?P<zone>\S+))?$"
)
_FORMAT_HINT = (
    "Expected e.g. 'Sat 01:00-05:00 UTC', 'daily 02:00-04:00' or 'Mon-Fri 22:00-02:00 Europe/Berlin'."
)


@dataclass(frozen=True)
class WindowRule:
    """One ``DAYS HH:MM-HH:MM [TIMEZONE]`` part of a maintenance window; minutes count from midnight."""

    days: frozenset[int]
    start_minute: int
    end_minute: int
    zone_name: str

    @property
    def zone(self) -> tzinfo:
        return _zone(self.zone_name)

    @property
    def crosses_midnight(self) -> bool:
        return self.end_minute <= self.start_minute

    def _start_on(self, day: date) -> datetime:
        return datetime.combine(day, time(), tzinfo=self.zone) + timedelta(minutes=self.start_minute)

    def _end_for_start_on(self, day: date) -> datetime:
        end_day = day + timedelta(days=1) if self.crosses_midnight else day
        return datetime.combine(end_day, time(), tzinfo=self.zone) + timedelta(minutes=self.end_minute)

    def current_end(self, now: datetime) -> datetime | None:
        """Return when the window that contains ``now`` ends, or None when ``now`` is outside it."""
        local = now.astimezone(self.zone)
        seconds = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        start, end = self.start_minute * 60, self.end_minute * 60
        today = local.date()
        if not self.crosses_midnight:
            if today.weekday() in self.days and start <= seconds < end:
                return self._end_for_start_on(today)
            return None
        if today.weekday() in self.days and seconds >= start:
            return self._end_for_start_on(today)
        yesterday = today - timedelta(days=1)
        if yesterday.weekday() in self.days and seconds < end:
            return self._end_for_start_on(yesterday)
        return None

    def next_start(self, now: datetime) -> datetime:
        local_day = now.astimezone(self.zone).date()
        for offset in range(8):
            day = local_day + timedelta(days=offset)
            if day.weekday() in self.days and self._start_on(day) > now:
                return self._start_on(day)
        raise AssertionError("a rule with at least one day starts within 8 days")


@dataclass(frozen=True)
class MaintenanceWindow:
    """A parsed ``reclaim.maintenance_window``: one or more rules, any of which opens the window."""

    text: str
    rules: tuple[WindowRule, ...]

    def contains(self, now: datetime) -> bool:
        return self.current_end(now) is not None

    def current_end(self, now: datetime) -> datetime | None:
        """Return when the open window ends (the latest end of the rules containing ``now``), or None."""
        _require_aware(now)
        ends = [end for rule in self.rules if (end := rule.current_end(now)) is not None]
        return max(ends) if ends else None

    def next_start(self, now: datetime) -> datetime:
        _require_aware(now)
        return min(rule.next_start(now) for rule in self.rules)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(
            f"The time {now.isoformat()} has no timezone; pass an aware datetime such as "
            "datetime.now(timezone.utc)."
        )


def _zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ConfigurationError(
            f"Unknown timezone {name!r} in reclaim.maintenance_window; use UTC or an IANA name such as "
            "Europe/Berlin (the tzdata package provides them)."
        ) from error


def _parse_minute(text: str, window: str, *, allow_24: bool) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if allow_24 and (hours, minutes) == (24, 0):
        return 24 * 60
    if hours > 23 or minutes > 59:
        raise ConfigurationError(
            f"Time {text!r} in maintenance window {window!r} is invalid; use HH:MM from 00:00 to 23:59 "
            "(24:00 only as an end)."
        )
    return hours * 60 + minutes


def _parse_days(text: str, window: str) -> frozenset[int]:
    if text.lower() == "daily":
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.lower().split(","):
        names = part.split("-")
        if len(names) > 2 or any(name not in _DAY_NAMES for name in names):
            raise ConfigurationError(
                f"Days {text!r} in maintenance window {window!r} are invalid; use 'daily', day names "
                f"(Mon, Tue, ... Sun) or ranges such as Mon-Fri. {_FORMAT_HINT}"
            )
        first = _DAY_NAMES[names[0]]
        last = _DAY_NAMES[names[-1]]
        span = (last - first) % 7
        days.update((first + offset) % 7 for offset in range(span + 1))
    return frozenset(days)


def parse_maintenance_window(text: str) -> MaintenanceWindow:
    """Parse a maintenance window in the format described in this module's docstring.

    :raises ConfigurationError: naming the part that is invalid, with examples of the format.
    """
    if not text or not text.strip():
        raise ConfigurationError(f"The maintenance window is empty. {_FORMAT_HINT}")
    rules = []
    for part in text.split(";"):
        part = part.strip()
        match = _RULE.match(part)
        if match is None:
            raise ConfigurationError(f"Maintenance window {part!r} is invalid. {_FORMAT_HINT}")
        days = _parse_days(match.group("days"), text)
        start = _parse_minute(match.group("start"), text, allow_24=False)
        end = _parse_minute(match.group("end"), text, allow_24=True)
        if start == end:
            raise ConfigurationError(
                f"Maintenance window {part!r} starts and ends at the same time; for a whole day use 00:00-24:00."
            )
        zone_name = match.group("zone") or "UTC"
        _zone(zone_name)
        rules.append(WindowRule(days=days, start_minute=start, end_minute=end, zone_name=zone_name))
    return MaintenanceWindow(text=text, rules=tuple(rules))


def in_maintenance_window(window: str | MaintenanceWindow, now: datetime | None = None) -> bool:
    """Return whether ``now`` (default: the current time) falls inside ``window``."""
    if isinstance(window, str):
        window = parse_maintenance_window(window)
    return window.contains(now or datetime.now(timezone.utc))


@dataclass
class DiskRoom:
    """Free space on the database server's data volume compared with what a table rewrite needs.

    ``enough`` is None when the free space could not be measured; ``problem`` then explains why.
    """

    path: str | None
    free_bytes: int | None
    table_total_bytes: int
    headroom_factor: float
    required_bytes: int
    enough: bool | None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_disk_room(
    conn_or_conninfo: psycopg.Connection | str,
    config: MaintenanceConfig,
    *,
    data_dir: str | None = None,
    free_bytes: int | None = None,
) -> DiskRoom:
    """Compare the free space of the Postgres data volume with the table's total size × headroom.

    The requirement is ``pg_total_relation_size`` × ``reclaim.rewrite_headroom_factor``: room for a
    new copy of the table, its TOAST and indexes, plus WAL. After an offload the new copy is much
    smaller than the old table, so this overestimates on purpose.

    The free space is measured with ``statvfs`` on a path visible from this worker: ``data_dir``,
    then ``reclaim.data_dir``, then the table's tablespace location, then ``$PG_DATA_DIR``, then the
    server's ``data_directory``. Pass ``free_bytes`` when it was measured elsewhere (for example on
    the database host by the preflight).
    """
    from attachment_ops.reclaim import maintenance_session, resolve_target

    reclaim = config.section("reclaim")
    factor = float(reclaim["rewrite_headroom_factor"])
    with maintenance_session(conn_or_conninfo, reclaim) as conn:
        target = resolve_target(conn, config)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_total_relation_size(c.oid), CASE WHEN c.reltablespace <> 0"
                " THEN pg_tablespace_location(c.reltablespace) END FROM pg_class c WHERE c.oid = %s",
                (target.oid,),
            )
            total, tablespace_location = cur.fetchone()
            server_data_directory = _server_data_directory(conn)
    required = int(total * factor)
    if free_bytes is not None:
        return DiskRoom("measured by the caller", free_bytes, total, factor, required, free_bytes >= required)

    candidates = [
        data_dir,
        reclaim["data_dir"],
        tablespace_location or None,
        os.environ.get("PG_DATA_DIR"),
        server_data_directory,
    ]
    path = next((candidate for candidate in candidates if candidate), None)
    if path is None or not os.path.isdir(path):
        shown = path or "no path (the server's data_directory is not readable by this role)"
        return DiskRoom(
            path,
            None,
            total,
            factor,
            required,
            None,
            problem=(
                f"Cannot measure free disk space for the rewrite: {shown} is not a directory on this worker. "
                "Set reclaim.data_dir to a mount of the database server's data volume, or run the check on "
                "the database host."
            ),
        )
    stats = os.statvfs(path)
    free = stats.f_bavail * stats.f_frsize
    return DiskRoom(path, free, total, factor, required, free >= required)


def _server_data_directory(conn: psycopg.Connection) -> str | None:
    import psycopg

    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('data_directory')")
            return cur.fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        # Readable only by superusers and members of pg_read_all_settings.
        return None


@dataclass
class ReclaimDecision:
    """Whether a full reclaim may run now, and why.

    ``approval`` is one of ``approved``, ``unattended``, ``rejected``, ``required`` (no response
    yet) or ``not_checked`` (for the check before the approval step). ``reasons`` lists the
    failed checks when ``allow`` is False, and the passed ones otherwise.
    """

    method: str
    allow: bool
    approval: str
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_approval(self) -> bool:
        return self.approval in ("required", "not_checked")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "needs_approval": self.needs_approval}


def _bytes_text(value: int | None) -> str:
    return "unknown" if value is None else f"{value / 1024**3:,.2f} GiB"


def decide_full_reclaim(
    method: str,
    config: MaintenanceConfig,
    *,
    now: datetime | None = None,
    disk_room: DiskRoom | None = None,
    approved: bool | None = None,
    unattended: bool | None = None,
    check_approval: bool = True,
    pg_repack_problem: str | None = None,
) -> ReclaimDecision:
    """Decide whether the full reclaim ``method`` may run now; every failed check is a reason to skip.

    Call it once before the approval step with ``check_approval=False``, so nobody is asked to
    approve something that cannot run, and again after it with ``approved`` set from the response.
    ``unattended`` (or ``reclaim.unattended_approval``) replaces the approval for unattended runs,
    but an explicit rejection (``approved=False``) always skips.

    :raises ConfigurationError: on an unknown method or an invalid maintenance window.
    """
    from attachment_ops.reclaim import RECLAIM_METHODS

    if method not in RECLAIM_METHODS:
        raise ConfigurationError(f"reclaim {method!r} is invalid; use one of {', '.join(RECLAIM_METHODS)}.")
    if method == "none":
        return ReclaimDecision(
            method, False, "not_checked", ["reclaim is 'none', so no full reclaim was requested."]
        )
    reclaim = config.section("reclaim")
    now = now or datetime.now(timezone.utc)
    passed: list[str] = []
    failed: list[str] = []
    checks: dict[str, Any] = {}

    window_text = reclaim["maintenance_window"]
    if not window_text:
        failed.append(
            "No maintenance window is configured; set reclaim.maintenance_window, e.g. 'Sat 01:00-05:00 UTC'."
        )
        checks["window"] = {"configured": None, "open": False}
    else:
        window = parse_maintenance_window(window_text)
        end = window.current_end(now)
        checks["window"] = {
            "configured": window_text,
            "open": end is not None,
            "ends_at": end.isoformat() if end else None,
        }
        if end is None:
            next_start = window.next_start(now)
            checks["window"]["next_start"] = next_start.isoformat()
            failed.append(
                f"Outside the maintenance window {window_text!r}; the next one opens at {next_start.isoformat()}."
            )
        else:
            passed.append(f"Inside the maintenance window {window_text!r} until {end.isoformat()}.")

    unattended = bool(unattended) or bool(reclaim["unattended_approval"])
    if approved is False:
        approval = "rejected"
        failed.append("The full reclaim was rejected in the Airflow UI.")
    elif approved:
        approval = "approved"
        passed.append("Approved in the Airflow UI.")
    elif unattended:
        approval = "unattended"
        passed.append("Unattended run: approval is replaced by the unattended setting.")
    elif check_approval:
        approval = "required"
        failed.append(
            "Nobody approved the full reclaim. Approve it under Required Actions in the Airflow UI, or set "
            "the unattended parameter for runs without a person."
        )
    else:
        approval = "not_checked"
    checks["approval"] = approval

    if disk_room is None:
        failed.append("The disk room for the rewrite was not checked.")
    else:
        checks["disk"] = disk_room.to_dict()
        if disk_room.enough is None:
            failed.append(disk_room.problem or "Free disk space is unknown.")
        elif not disk_room.enough:
            failed.append(
                f"Not enough free disk for the rewrite: {_bytes_text(disk_room.free_bytes)} free at "
                f"{disk_room.path}, {_bytes_text(disk_room.required_bytes)} needed (table "
                f"{_bytes_text(disk_room.table_total_bytes)} × {disk_room.headroom_factor:g}). Free space, or run "
                "pg_repack or VACUUM FULL on a host with more room."
            )
        else:
            passed.append(
                f"Disk: {_bytes_text(disk_room.free_bytes)} free, {_bytes_text(disk_room.required_bytes)} needed."
            )

    if method == "pg_repack":
        checks["pg_repack_problem"] = pg_repack_problem
        if pg_repack_problem:
            failed.append(pg_repack_problem)

    allow = not failed
    decision = ReclaimDecision(method, allow, approval, passed if allow else failed, checks)
    log.info("Full reclaim %s %s: %s", method, "allowed" if allow else "skipped", " ".join(decision.reasons))
    return decision


def evaluate_full_reclaim(
    conninfo: str,
    config: MaintenanceConfig,
    method: str,
    *,
    now: datetime | None = None,
    approved: bool | None = None,
    unattended: bool | None = None,
    check_approval: bool = True,
    data_dir: str | None = None,
    free_bytes: int | None = None,
) -> ReclaimDecision:
    """Measure the disk room and pg_repack's availability, then call ``decide_full_reclaim``.

    ``conninfo`` should be the connection the full reclaim will use (a superuser's for pg_repack).
    """
    if method == "none":
        return decide_full_reclaim(method, config, now=now)
    from attachment_ops.reclaim import maintenance_session, pg_repack_status

    disk_room = check_disk_room(conninfo, config, data_dir=data_dir, free_bytes=free_bytes)
    pg_repack_problem = None
    if method == "pg_repack":
        with maintenance_session(conninfo, config.section("reclaim")) as conn:
            pg_repack_problem = pg_repack_status(conn, config)["problem"]
    return decide_full_reclaim(
        method,
        config,
        now=now,
        disk_room=disk_room,
        approved=approved,
        unattended=unattended,
        check_approval=check_approval,
        pg_repack_problem=pg_repack_problem,
    )
