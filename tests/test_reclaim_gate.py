"""Gate of the full reclaim: window parsing and checking, disk room and the run-or-skip decision."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import psycopg
import pytest
from psycopg import sql

from attachment_ops.config import load_config
from attachment_ops.errors import ConfigurationError
from attachment_ops.reclaim_gate import (
    DiskRoom,
    check_disk_room,
    decide_full_reclaim,
    evaluate_full_reclaim,
    in_maintenance_window,
    parse_maintenance_window,
)

ALL_DAYS = frozenset(range(7))
GIB = 1024**3


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "days", "start", "end", "zone"),
    [
        ("Sat 01:00-05:00 UTC", {5}, 60, 300, "UTC"),
        ("daily 02:00-04:00", ALL_DAYS, 120, 240, "UTC"),
        ("Mon-Fri 22:00-02:00 Europe/Berlin", {0, 1, 2, 3, 4}, 1320, 120, "Europe/Berlin"),
        ("sat,SUN 00:00-24:00", {5, 6}, 0, 1440, "UTC"),
        ("Fri-Mon 1:30-2:00", {4, 5, 6, 0}, 90, 120, "UTC"),
        ("saturday 23:00 - 01:00 utc", {5}, 1380, 60, "utc"),
    ],
)
def test_window_parses(text, days, start, end, zone):
    (rule,) = parse_maintenance_window(text).rules

    assert rule.days == frozenset(days)
    assert rule.start_minute == start
    assert rule.end_minute == end
    assert rule.zone_name == zone


def test_window_parses_several_rules():
    window = parse_maintenance_window("Sat 01:00-05:00; Sun 01:00-03:00 Europe/Berlin")

    assert [sorted(rule.days) for rule in window.rules] == [[5], [6]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("Sat", "'Sat' is invalid"),
        ("Sat 1-5", "'Sat 1-5' is invalid"),
        ("Funday 01:00-02:00", "Days 'Funday'"),
        ("Mon-Wed-Fri 01:00-02:00", "Days 'Mon-Wed-Fri'"),
        ("Sat 25:00-26:00", "Time '25:00'"),
        ("Sat 01:60-02:00", "Time '01:60'"),
        ("Sat 24:00-01:00", "Time '24:00'"),
        ("Sat 01:00-01:00", "starts and ends at the same time"),
        ("Sat 01:00-05:00 Mars/Olympus", "Unknown timezone 'Mars/Olympus'"),
        ("Sat 01:00-05:00;", "'' is invalid"),
    ],
)
def test_window_rejects_invalid(text, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_maintenance_window(text)


# 2026-12-05 is a Saturday; 2026-07-04 is a Saturday in Central European Summer Time.
@pytest.mark.parametrize(
    ("window", "now", "inside"),
    [
        ("Sat 01:00-05:00 UTC", "2026-12-05T00:59:59", False),
        ("Sat 01:00-05:00 UTC", "2026-12-05T01:00:00", True),
        ("Sat 01:00-05:00 UTC", "2026-12-05T04:59:59", True),
        ("Sat 01:00-05:00 UTC", "2026-12-05T05:00:00", False),
        ("Sat 01:00-05:00 UTC", "2026-12-06T02:00:00", False),
        ("Fri 23:00-02:00", "2026-12-04T23:30:00", True),
        ("Fri 23:00-02:00", "2026-12-05T01:59:00", True),
        ("Fri 23:00-02:00", "2026-12-05T02:00:00", False),
        ("Fri 23:00-02:00", "2026-12-03T23:30:00", False),
        ("Sun 22:00-02:00", "2026-12-07T01:00:00", True),
        ("daily 02:00-04:00 Europe/Berlin", "2026-12-05T01:30:00", True),
        ("daily 02:00-04:00 Europe/Berlin", "2026-12-05T03:30:00", False),
        ("daily 02:00-04:00 Europe/Berlin", "2026-07-04T01:30:00", True),
        ("daily 02:00-04:00 Europe/Berlin", "2026-07-04T02:30:00", False),
        ("Sat,Sun 00:00-24:00", "2026-12-06T23:59:59", True),
        ("Sat,Sun 00:00-24:00", "2026-12-07T00:00:00", False),
        ("Mon 01:00-02:00; Sat 01:00-02:00", "2026-12-05T01:30:00", True),
    ],
)
def test_window_contains_time(window, now, inside):
    assert in_maintenance_window(window, utc(now)) is inside


def test_window_rejects_naive_time():
    with pytest.raises(ValueError, match="has no timezone"):
        in_maintenance_window("daily 02:00-04:00", datetime(2026, 12, 5, 3, 0))


@pytest.mark.parametrize(
    ("window", "now", "next_start"),
    [
        ("Sat 01:00-05:00 UTC", "2026-12-02T12:00:00", "2026-12-05T01:00:00+00:00"),
        ("Sat 01:00-05:00 UTC", "2026-12-05T01:00:00", "2026-12-12T01:00:00+00:00"),
        ("daily 02:00-04:00 Europe/Berlin", "2026-12-05T12:00:00", "2026-12-06T02:00:00+01:00"),
    ],
)
def test_window_next_start(window, now, next_start):
    assert parse_maintenance_window(window).next_start(utc(now)).isoformat() == next_start


def test_window_current_end_crossing_midnight():
    end = parse_maintenance_window("Fri 23:00-02:00").current_end(utc("2026-12-04T23:30:00"))

    assert end.isoformat() == "2026-12-05T02:00:00+00:00"


@pytest.fixture
def small_table(pg_dsn, pg_schema):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, bytes bytea, storage_backend text NOT NULL DEFAULT 'db',"
                " storage_key text, created_at timestamptz, content_type text, filename text)"
            ).format(sql.Identifier(pg_schema, "document_attachments"))
        )
        total = conn.execute(
            "SELECT pg_total_relation_size(%s::regclass)", (f"{pg_schema}.document_attachments",)
        ).fetchone()[0]
    return pg_schema, total


def gate_config(schema: str, **reclaim: object):
    return load_config({"attachments": {"table": f"{schema}.document_attachments"}, "reclaim": reclaim})


def test_disk_room_on_data_dir(pg_dsn, small_table):
    schema, total = small_table
    data_dir = os.environ["PG_DATA_DIR"]
    stats = os.statvfs(data_dir)

    room = check_disk_room(pg_dsn, gate_config(schema, rewrite_headroom_factor=1.5), data_dir=data_dir)

    assert room.path == data_dir
    assert room.table_total_bytes == total
    assert room.required_bytes == int(total * 1.5)
    assert abs(room.free_bytes - stats.f_bavail * stats.f_frsize) < 64 * 1024**2
    assert room.enough is True


def test_disk_room_uses_pg_data_dir(pg_dsn, small_table):
    schema, _ = small_table

    room = check_disk_room(pg_dsn, gate_config(schema))

    assert room.path == os.environ["PG_DATA_DIR"]


def test_disk_room_huge_factor_fails(pg_dsn, small_table):
    schema, _ = small_table

    room = check_disk_room(pg_dsn, gate_config(schema, rewrite_headroom_factor=1e12))

    assert room.enough is False


@pytest.mark.parametrize(("free_bytes", "enough"), [(0, False), (10**15, True)])
def test_disk_room_given_free_bytes(pg_dsn, small_table, free_bytes, enough):
    schema, _ = small_table

    room = check_disk_room(pg_dsn, gate_config(schema), free_bytes=free_bytes)

    assert room.enough is enough


def test_disk_room_unknown_path(pg_dsn, small_table):
    schema, _ = small_table

    room = check_disk_room(pg_dsn, gate_config(schema), data_dir="/nonexistent/pgdata")

    assert room.enough is None
    assert "/nonexistent/pgdata is not a directory on this worker" in room.problem


ROOMY = DiskRoom("/data", 100 * GIB, 10 * GIB, 1.2, 12 * GIB, True)
TIGHT = DiskRoom("/data", 5 * GIB, 10 * GIB, 1.2, 12 * GIB, False)
UNKNOWN = DiskRoom(None, None, 10 * GIB, 1.2, 12 * GIB, None, problem="Cannot measure free disk space.")
SATURDAY_NIGHT = utc("2026-12-05T02:00:00")
WEDNESDAY = utc("2026-12-02T12:00:00")


# Each case changes some inputs of an allowed run: inside the window, roomy disk, approved.
BASE_INPUTS = {
    "method": "vacuum_full",
    "window": "Sat 01:00-05:00",
    "now": SATURDAY_NIGHT,
    "disk_room": ROOMY,
    "approved": True,
    "unattended": None,
    "check_approval": True,
    "pg_repack_problem": None,
}
DECISION_CASES = {
    "approved": ({}, True, "Approved in the Airflow UI."),
    "unattended": ({"approved": None, "unattended": True}, True, "Unattended run"),
    "before approval": (
        {"method": "pg_repack", "approved": None, "check_approval": False},
        True,
        "Inside the maintenance window",
    ),
    "none": ({"method": "none"}, False, "reclaim is 'none'"),
    "outside window": ({"now": WEDNESDAY}, False, "next one opens at 2026-12-05T01:00:00+00:00"),
    "no window": ({"window": None}, False, "No maintenance window is configured"),
    "not approved": ({"approved": None}, False, "Nobody approved the full reclaim"),
    "rejected": ({"approved": False, "unattended": True}, False, "rejected in the Airflow UI"),
    "tight disk": (
        {"disk_room": TIGHT},
        False,
        "Not enough free disk for the rewrite: 5.00 GiB free at /data, 12.00 GiB needed",
    ),
    "unknown disk": ({"disk_room": UNKNOWN}, False, "Cannot measure free disk space."),
    "disk not checked": ({"disk_room": None}, False, "disk room for the rewrite was not checked"),
    "pg_repack missing": (
        {"method": "pg_repack", "pg_repack_problem": "Install the Debian package postgresql-15-repack"},
        False,
        "postgresql-15-repack",
    ),
}


@pytest.mark.parametrize(("changes", "allow", "reason"), DECISION_CASES.values(), ids=DECISION_CASES.keys())
def test_decide_full_reclaim(changes, allow, reason):
    inputs = {**BASE_INPUTS, **changes}
    config = load_config({"reclaim": {"maintenance_window": inputs.pop("window")}})

    decision = decide_full_reclaim(inputs.pop("method"), config, **inputs)

    assert decision.allow is allow
    assert any(reason in text for text in decision.reasons), decision.reasons


def test_decide_lists_every_failed_check():
    config = load_config({"reclaim": {"maintenance_window": "Sat 01:00-05:00"}})

    decision = decide_full_reclaim("vacuum_full", config, now=WEDNESDAY, disk_room=TIGHT)

    assert len(decision.reasons) == 3
    assert decision.approval == "required"
    assert decision.needs_approval is True


def test_decide_unattended_from_config():
    config = load_config(
        {"reclaim": {"maintenance_window": "daily 00:00-24:00", "unattended_approval": True}}
    )

    decision = decide_full_reclaim("vacuum_full", config, now=WEDNESDAY, disk_room=ROOMY)

    assert decision.allow is True
    assert decision.approval == "unattended"
    assert decision.needs_approval is False


def test_decide_rejects_unknown_method():
    with pytest.raises(ConfigurationError, match="reclaim 'cluster' is invalid"):
        decide_full_reclaim("cluster", load_config({}))


def test_decision_serialises_to_dict():
    config = load_config({"reclaim": {"maintenance_window": "Sat 01:00-05:00"}})

    summary = decide_full_reclaim(
        "vacuum_full", config, now=SATURDAY_NIGHT, disk_room=ROOMY, approved=True
    ).to_dict()

    assert summary["allow"] is True
    assert summary["checks"]["window"]["ends_at"] == "2026-12-05T05:00:00+00:00"
    assert summary["checks"]["disk"]["required_bytes"] == 12 * GIB


def test_evaluate_against_real_database(pg_dsn, small_table):
    schema, _ = small_table
    config = gate_config(schema, maintenance_window="daily 00:00-24:00")

    decision = evaluate_full_reclaim(pg_dsn, config, "vacuum_full", unattended=True)

    assert decision.allow is True
    assert decision.checks["disk"]["path"] == os.environ["PG_DATA_DIR"]


def test_evaluate_pg_repack_needs_superuser(pg_dsn, admin_dsn, small_table):
    schema, _ = small_table
    config = gate_config(schema, maintenance_window="daily 00:00-24:00")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_repack")

    app_decision = evaluate_full_reclaim(pg_dsn, config, "pg_repack", unattended=True)
    admin_decision = evaluate_full_reclaim(admin_dsn, config, "pg_repack", unattended=True)

    assert app_decision.allow is False
    assert "pg_repack needs a superuser connection, and role app is not one" in app_decision.reasons[0]
    assert admin_decision.allow is True
