"""Session fixtures: settings, the running services, and per-test topics and databases.

``endpoints`` starts the local broker and database when the settings ask for local ones (it is
idempotent, so ``pytest`` alone works with or without ``eshram-locator services up``). Tests
that need them are marked ``pytest.mark.integration``.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql
from psycopg.conninfo import make_conninfo

from eshram_locator import bootstrap
from eshram_locator.settings import Settings

TopicFactory = Callable[..., str]

# A local broker the tests start gives each new consumer group its partitions at once: every
# test's group is new, and Kafka's default waits 3 s for more members (scripts/test.sh too).
os.environ.setdefault("LOCATOR_KAFKA_INITIAL_REBALANCE_DELAY_MS", "0")


@pytest.fixture(scope="session")
def settings() -> Settings:
    return bootstrap.load_settings()


@pytest.fixture(scope="session")
def endpoints(settings: Settings) -> bootstrap.Endpoints:
    return bootstrap.ensure_services(settings)


@pytest.fixture(scope="session")
def kafka_bootstrap(endpoints: bootstrap.Endpoints) -> str:
    return endpoints.bootstrap_servers


@pytest.fixture(scope="session")
def postgres_dsn(endpoints: bootstrap.Endpoints) -> str:
    """The schema owner's DSN: it may create databases (and owns those it creates)."""
    return endpoints.owner_dsn


@pytest.fixture(scope="session")
def admin(kafka_bootstrap: str) -> AdminClient:
    return bootstrap.admin_client(kafka_bootstrap)


def _unique_name(request: pytest.FixtureRequest, separator: str) -> str:
    test = re.sub(r"[^a-z0-9]+", separator, request.node.name.lower()).strip(separator)[:40]
    return f"test{separator}{test}{separator}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def unique_topic(admin: AdminClient, request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    """``unique_topic(partitions=1, config=None, create=True) -> name``: a topic no other test
    uses, deleted after the test. ``create=False`` only reserves the name (for code under test
    that creates the topic itself)."""
    names: list[str] = []

    def make(
        partitions: int = 1, config: dict[str, str] | None = None, *, create: bool = True
    ) -> str:
        name = _unique_name(request, ".")
        names.append(name)
        if create:
            futures = admin.create_topics(
                [
                    NewTopic(
                        name, num_partitions=partitions, replication_factor=1, config=config or {}
                    )
                ],
                operation_timeout=30,
            )
            futures[name].result()
            _wait_listed(admin, name)
        return name

    yield make
    existing = [name for name in names if name in admin.list_topics(timeout=30).topics]
    if existing:
        for future in admin.delete_topics(existing, operation_timeout=30).values():
            future.result()


def _wait_listed(admin: AdminClient, name: str, timeout_s: float = 10.0) -> None:
    """Created is not yet listed: wait until the broker's metadata shows the topic."""
    deadline = time.monotonic() + timeout_s
    while name not in admin.list_topics(timeout=timeout_s).topics:
        assert time.monotonic() < deadline, f"topic {name} not listed {timeout_s} s after creation"
        time.sleep(0.1)


@pytest.fixture
def fresh_database(postgres_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new empty database on the server for this test, owned by the owner role; yields the
    owner's DSN to it, drops it after."""
    name = _unique_name(request, "_")[:63]
    server_dsn = make_conninfo(postgres_dsn, dbname="postgres")
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(postgres_dsn, dbname=name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
