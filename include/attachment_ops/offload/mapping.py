"""Check the configured table mapping against the live database and compose its identifiers.

Every identifier goes through ``psycopg.sql.Identifier``, so a configured name can never inject
SQL: a malicious table name is only ever looked up in the catalog, where it is not found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg import sql

from attachment_ops.config import AttachmentMapping
from attachment_ops.errors import MappingError

if TYPE_CHECKING:
    import psycopg

INTEGER_TYPES = {"smallint", "integer", "bigint"}
TEXT_TYPES = {"text", "character varying", "character"}
TIME_TYPES = {"timestamp with time zone", "timestamp without time zone", "date"}


@dataclass(frozen=True)
class ResolvedTable:
    """A validated mapping: the names, the table's oid, and composed identifiers."""

    mapping: AttachmentMapping
    schema: str
    name: str
    oid: int

    @property
    def qualified_name(self) -> str:
        """The table as text for logs and the ledger, e.g. ``public.document_attachments``."""
        return f"{self.schema}.{self.name}"

    @property
    def table(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    def column(self, attribute: str) -> sql.Composable:
        """Identifier of a mapped column, by mapping attribute (``content_column`` and so on)."""
        return sql.Identifier(getattr(self.mapping, attribute))

    def optional_column(self, attribute: str) -> sql.Composable:
        """Return the mapped column, or a typed NULL when the mapping leaves it unset."""
        name = getattr(self.mapping, attribute)
        if name is None:
            return sql.SQL("NULL::text")
        return sql.Identifier(name)

    def lock_key(self, row_id: int) -> str:
        """Text hashed into the advisory lock key of one row; the same for offload and restore."""
        return f"attachment_ops:{self.oid}:{row_id}"


def resolve_table(conn: psycopg.Connection, mapping: AttachmentMapping) -> ResolvedTable:
    """Validate the mapping against the catalog.

    Checks that the table exists and is a table (not a view), that every mapped column exists
    with a usable type, that the primary key column is an integer with a unique constraint of
    its own, and that the content column accepts NULL (an offloaded row keeps no inline bytes).

    :raises MappingError: naming the table or column and the fix.
    """
    schema, name = mapping.schema_and_table
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (schema, name),
        )
        found = cur.fetchone()
        if found is None:
            raise MappingError(
                f"Table {mapping.table!r} (schema {schema!r}, name {name!r}) was not found. Set "
                "attachments.table in the maintenance_config Variable to the attachments table."
            )
        oid, relkind = found
        if relkind not in ("r", "p"):
            kinds = {"v": "a view", "m": "a materialized view", "f": "a foreign table"}
            raise MappingError(
                f"{mapping.table!r} is {kinds.get(relkind, f'a relation of kind {relkind!r}')}, not a "
                "table; offloading needs the base table that stores the bytes."
            )
        cur.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
            " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            (oid,),
        )
        columns = {row[0]: (row[1], row[2]) for row in cur.fetchall()}

    def check(attribute: str, allowed: set[str], label: str) -> None:
        column = getattr(mapping, attribute)
        if column is None:
            return
        if column not in columns:
            raise MappingError(
                f"Column {column!r} (attachments.{attribute}) was not found in table {mapping.table!r}. "
                f"Columns there: {', '.join(sorted(columns))}."
            )
        base_type = columns[column][0].split("(")[0]
        if base_type not in allowed:
            raise MappingError(
                f"Column {mapping.table}.{column} (attachments.{attribute}) has type {columns[column][0]}; "
                f"expected {label}."
            )

    check("primary_key", INTEGER_TYPES, "an integer type (smallint, integer or bigint)")
    check("content_column", {"bytea"}, "bytea")
    check("backend_column", TEXT_TYPES, "text or varchar")
    check("key_column", TEXT_TYPES, "text or varchar")
    check("created_at_column", TIME_TYPES, "timestamptz, timestamp or date")
    check("content_type_column", TEXT_TYPES, "text or varchar")
    check("filename_column", TEXT_TYPES, "text or varchar")
    if columns[mapping.content_column][1]:
        raise MappingError(
            f"Column {mapping.table}.{mapping.content_column} is NOT NULL, so offloaded rows could not "
            f"drop their inline bytes. Run: ALTER TABLE {mapping.table} ALTER COLUMN "
            f"{mapping.content_column} DROP NOT NULL"
        )
    _check_unique_key(conn, oid, mapping)
    return ResolvedTable(mapping=mapping, schema=schema, name=name, oid=oid)


def _check_unique_key(conn: psycopg.Connection, oid: int, mapping: AttachmentMapping) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = i.indkey[0]"
            " WHERE i.indrelid = %s AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL"
            " AND a.attname = %s",
            (oid, mapping.primary_key),
        )
        if cur.fetchone() is None:
            raise MappingError(
                f"Column {mapping.table}.{mapping.primary_key} (attachments.primary_key) has no primary key "
                "or unique index of its own, so a row cannot be addressed safely. Add one, or map the "
                "table's real primary key."
            )
