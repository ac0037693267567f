"""Mapping validation: every mismatch between configuration and catalog names what to fix."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from attachment_ops.config import load_config
from attachment_ops.db import connect
from attachment_ops.errors import ConfigurationError, MappingError
from attachment_ops.offload.mapping import resolve_table
from attachment_ops.offload.params import build_params
from tests.offload.conftest import make_table


def resolve(dsn, **attachments):
    with connect(dsn) as conn:
        return resolve_table(conn, load_config({"attachments": attachments}).mapping)


@pytest.fixture
def table(pg_dsn, pg_schema):
    make_table(pg_dsn, pg_schema)
    return f"{pg_schema}.document_attachments"


def test_valid_mapping_resolves(pg_dsn, table):
    resolved = resolve(pg_dsn, table=table)

    assert resolved.qualified_name == table


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"content_column": "blob"}, "Column 'blob' .*attachments.content_column.* was not found"),
        ({"content_column": "filename"}, "has type text; expected bytea"),
        ({"primary_key": "filename"}, "expected an integer type"),
        ({"primary_key": "company_id"}, "no primary key or unique index"),
        ({"created_at_column": "company_id"}, "expected timestamptz"),
    ],
)
def test_mapping_errors_name_the_column(pg_dsn, table, override, message):
    with pytest.raises(MappingError, match=message):
        resolve(pg_dsn, table=table, **override)


def test_missing_table_is_named(pg_dsn, pg_schema):
    with pytest.raises(MappingError, match=f"Table '{pg_schema}.nothing_here' .* was not found"):
        resolve(pg_dsn, table=f"{pg_schema}.nothing_here")


def test_view_is_rejected(pg_dsn, table, pg_schema):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(
                sql.Identifier(pg_schema, "attachments_view"),
                sql.Identifier(pg_schema, "document_attachments"),
            )
        )

    with pytest.raises(MappingError, match="is a view, not a table"):
        resolve(pg_dsn, table=f"{pg_schema}.attachments_view")


def test_table_without_primary_key(pg_dsn, pg_schema):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint, bytes bytea, storage_backend text, storage_key text,"
                " created_at timestamptz, filename text, content_type text)"
            ).format(sql.Identifier(pg_schema, "no_pk"))
        )

    with pytest.raises(MappingError, match="no primary key or unique index"):
        resolve(pg_dsn, table=f"{pg_schema}.no_pk")


def test_malicious_table_name_is_only_looked_up(pg_dsn, table, pg_schema):
    evil = f'{pg_schema}.document_attachments"; DROP TABLE {pg_schema}.document_attachments; --'

    with pytest.raises(ConfigurationError):
        resolve(pg_dsn, table=evil)

    with psycopg.connect(pg_dsn) as conn:
        still_there = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
    assert still_there is True


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"limit": 0}, "limit=0 must be at least 1"),
        ({"batch_rows": "ten"}, "batch_rows='ten' must be a whole number"),
        ({"created_from": "yesterday"}, "created_from='yesterday' is not an ISO 8601"),
        ({"created_from": "2025-02-01", "created_to": "2025-01-01"}, "must be before created_to"),
        ({"prefix": "no-slash"}, "must be a relative key prefix ending with '/'"),
        ({"storage_class": "COLD"}, "storage_class 'COLD' is not an S3 storage class"),
        ({"max_batches": 5000}, "exceeds Airflow's default"),
        ({"limitt": 3}, "Unknown offload parameter"),
    ],
)
def test_bad_parameters_are_named(overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        build_params(load_config(), overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"offload": {"limitt": 1}}, "Unknown configuration key 'offload.limitt'"),
        ({"storage": {"bucket": 3}}, "'storage.bucket' must be str, got int 3"),
        ({"storage": {"prefix": "x"}}, "must end with '/'"),
        ({"offload": {"dry": True}}, "Unknown configuration key 'offload.dry'"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_bad_configuration_is_named(overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        load_config(overrides)


def test_session_overrides_role_timeout(admin_dsn, pg_dsn):
    """A role-level statement_timeout of 1 ms cannot cancel the package's own session set-up."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    role = "t_timeout_role"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER ROLE {} SET statement_timeout = '1ms'").format(sql.Identifier(role)))
    dsn = make_conninfo(**{**conninfo_to_dict(pg_dsn), "user": role, "password": "pw"})
    try:
        with connect(dsn, statement_timeout_ms=60000, lock_timeout_ms=3000) as session:
            settings = session.execute(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), pg_sleep(0.05)"
            ).fetchone()
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    assert settings[:2] == ("1min", "3s")
