"""Forward-only schema migrations, applied at start.

Each ``migrations/NNNN_name.sql`` runs once, in order, in its own transaction, recorded in
``schema_migrations``. Concurrent starters serialise on an advisory lock, so several locator
processes starting together apply each migration exactly once.

Least privilege: migrations run as the role that owns the schema; the processes run as an
application role. After every migration run, ``grant_app_role`` gives that role what the
processes need and nothing more, on every table in the schema, whichever migration made it
(so a new migration file needs no GRANT of its own): SELECT, INSERT, UPDATE and DELETE on the
tables, USAGE on the sequences (``bigserial``), nothing on ``schema_migrations``. No TRUNCATE,
REFERENCES or TRIGGER, no CREATE on the schema, and not the owner, so no ALTER or DROP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
import structlog
from psycopg import sql

from eshram_locator.errors import ConfigError

log = structlog.get_logger(__name__)

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x6573_6872_616D  # "eshram": one advisory lock key for migrations


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    folder = resources.files("eshram_locator.postgres") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {versions}")
    return found


def apply_migrations(
    conninfo: str, app_role: str | None = None, *, up_to: int | None = None
) -> list[int]:
    """Apply every pending migration (up to version ``up_to``, if given: tests of a migration
    start from the schema before it); returns the versions applied now.

    ``conninfo`` is the owner role's; with ``app_role``, that role is then granted what the
    processes need (``grant_app_role``), in the same advisory lock."""
    applied_now: list[int] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in available_migrations():
                if migration.version in done or (up_to is not None and migration.version > up_to):
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                applied_now.append(migration.version)
                log.info("migration_applied", version=migration.version, name=migration.name)
            if app_role is not None:
                grant_app_role(conn, app_role)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


_APP_TABLE_PRIVILEGES = sql.SQL("SELECT, INSERT, UPDATE, DELETE")


def grant_app_role(
    conn: psycopg.Connection[Any],
    app_role: str,
    private_tables: tuple[str, ...] = ("schema_migrations",),
) -> None:
    """Grant ``app_role`` rows-only access to every table of the current schema (one transaction).

    Run as the schema's owner after each migration run: ``ON ALL TABLES`` covers the tables of
    every migration so far, and the default privileges cover tables the owner creates later.
    ``private_tables`` stay the owner's alone.
    """
    role = sql.Identifier(app_role)
    with conn.transaction():
        row = conn.execute("SELECT current_schema()").fetchone()
        if row is None or row[0] is None:
            raise ConfigError("the owner role's search_path names no schema to grant on")
        schema = sql.Identifier(row[0])
        statements = [
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role),
            sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(
                _APP_TABLE_PRIVILEGES, schema, role
            ),
            sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, role),
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT {} ON TABLES TO {}").format(
                schema, _APP_TABLE_PRIVILEGES, role
            ),
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT USAGE ON SEQUENCES TO {}").format(
                schema, role
            ),
        ]
        # Nothing of the service needs temporary tables (revoking needs the database owner).
        database = sql.Identifier(conn.info.dbname)
        statements.append(
            sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC, {}").format(database, role)
        )
        for table in private_tables:
            exists = conn.execute(
                "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (row[0], table)
            ).fetchone()
            if exists is not None and exists[0] is not None:
                statements.append(
                    sql.SQL("REVOKE ALL ON TABLE {}.{} FROM {}").format(
                        schema, sql.Identifier(table), role
                    )
                )
        for statement in statements:
            conn.execute(statement)
    log.info("app_role_granted", role=app_role, schema=row[0])
