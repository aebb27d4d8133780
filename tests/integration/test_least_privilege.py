"""Least privilege in PostgreSQL: migrations run as the owner role, the processes as an
application role that reads and writes rows and can do nothing else."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict

from eshram_locator import bootstrap
from tests.integration.conftest import Pipeline
from tests.integration.locator_support import COUNT_OBSERVATIONS
from tests.integration.test_locator import HOME, MUMBAI, collection, produce, registration

pytestmark = pytest.mark.integration

SERVICE_TABLES = (
    "members",
    "workers",
    "location_changes",
    "outbox",
    "consumer_offsets",
)

FORBIDDEN = (
    "CREATE TABLE sneaky (id int)",
    "CREATE SCHEMA sneaky",
    "CREATE INDEX sneaky ON members (first_seen_at)",
    "DROP TABLE members",
    "TRUNCATE members",
    "ALTER TABLE members ADD COLUMN aadhaar text",
    "ALTER TABLE outbox OWNER TO CURRENT_USER",
    "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE VIEW sneaky AS SELECT 1",
    "CREATE TEMP TABLE sneaky (id int)",
    "SELECT * FROM schema_migrations",
    "INSERT INTO schema_migrations (version, name) VALUES (9999, 'sneaky')",
)


@pytest.fixture
def roles(pipeline: Pipeline) -> tuple[str, str]:
    """(application role, owner role) of the pipeline's database; skip with only one role."""
    app = pipeline.endpoints.app_role
    if app is None:
        pytest.skip("the configured database has one role for migrations and processes")
    owner = conninfo_to_dict(pipeline.endpoints.owner_dsn).get("user")
    assert owner, "the owner DSN names its role"
    return app, str(owner)


def test_the_app_role_can_use_rows_but_never_change_the_schema(
    pipeline: Pipeline, roles: tuple[str, str]
) -> None:
    app, owner = roles
    bootstrap.migrate(pipeline.endpoints)
    with psycopg.connect(pipeline.endpoints.postgres_dsn, autocommit=True) as conn:
        assert conn.info.user == app
        allowed = []
        for statement in FORBIDDEN:
            try:
                conn.execute(statement.encode())
            except errors.InsufficientPrivilege:
                continue
            allowed.append(statement)
        assert allowed == [], "the application role could do this"
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles"
            " WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False, False, False)
        owners = dict(
            conn.execute(
                "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = current_schema()"
            ).fetchall()
        )
        assert set(SERVICE_TABLES) <= set(owners)
        assert set(owners.values()) == {owner}
        for table in SERVICE_TABLES:
            granted = conn.execute(
                "SELECT privilege_type FROM information_schema.role_table_grants"
                " WHERE grantee = current_user AND table_name = %s",
                (table,),
            ).fetchall()
            assert {p for (p,) in granted} == {"SELECT", "INSERT", "UPDATE", "DELETE"}, table
        # Rows, yes: what the locator does.
        with conn.transaction():
            conn.execute("INSERT INTO outbox (topic) VALUES ('x')")
            conn.execute("UPDATE outbox SET topic = 'y'")
            conn.execute("DELETE FROM outbox")


def test_grants_cover_tables_of_later_migrations(
    pipeline: Pipeline, roles: tuple[str, str]
) -> None:
    """A table a later migration adds is granted at the next migration run, with no GRANT in
    the migration file (another branch adds 0002_*.sql)."""
    app, _ = roles
    bootstrap.migrate(pipeline.endpoints)
    with psycopg.connect(pipeline.endpoints.owner_dsn, autocommit=True) as owner:
        owner.execute("CREATE TABLE later_table (id bigserial PRIMARY KEY, note text)")
        owner.execute(
            sql.SQL("REVOKE ALL ON later_table FROM {}").format(sql.Identifier(app))
        )  # as if the default privileges had been lost
    bootstrap.migrate(pipeline.endpoints)
    with psycopg.connect(pipeline.endpoints.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO later_table (note) VALUES ('ok')")  # the sequence too
        assert conn.execute("SELECT count(*) FROM later_table").fetchone() == (1,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("TRUNCATE later_table")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DROP TABLE later_table")


def test_the_locator_runs_normally_as_the_app_role(
    pipeline: Pipeline, roles: tuple[str, str]
) -> None:
    app, _ = roles
    months = ["2025-04", "2025-05", "2025-06"]
    places = [HOME, MUMBAI, MUMBAI]
    events = [collection(i, m, p) for i, (m, p) in enumerate(zip(months, places, strict=True))]
    produce(pipeline, [registration()], events)
    assert conninfo_to_dict(pipeline.endpoints.postgres_dsn).get("user") == app

    totals = pipeline.run_locator()

    assert totals.collections == 3
    assert totals.changes == 1
    assert len(pipeline.consume_all(pipeline.names.location_changes)) == 1
    with psycopg.connect(pipeline.endpoints.postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        assert conn.execute(COUNT_OBSERVATIONS).fetchone() == (3, 1)
