"""The local broker and database: idempotent start, taken ports, provisioning, round trips."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from eshram_locator import bootstrap
from eshram_locator.errors import LocalServiceError
from eshram_locator.kafka.topics import (
    COMPACT,
    TopicMismatchError,
    TopicSpec,
    provision_topics,
)
from eshram_locator.local.kafka_server import LocalKafka
from eshram_locator.local.postgres_server import (
    LocalPostgres,
    machine_memory_bytes,
    shared_buffers_mb,
)
from eshram_locator.settings import Settings

pytestmark = pytest.mark.integration

TopicFactory = Callable[..., str]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process (this socket) listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- lifecycle -----------------------------------------------------------------------------


def test_starting_kafka_twice_leaves_one_broker(
    settings: Settings, endpoints: bootstrap.Endpoints
) -> None:
    if not settings.uses_local_kafka:
        pytest.skip("an external broker is configured")
    kafka = bootstrap.local_kafka(settings)
    first = kafka.status()
    assert first.running
    started = time.monotonic()
    second = kafka.start()
    assert time.monotonic() - started < 5
    assert second.pid == first.pid
    assert kafka.status().pid == first.pid


def test_the_broker_runs_with_the_configured_initial_rebalance_delay(
    settings: Settings, endpoints: bootstrap.Endpoints, admin: AdminClient
) -> None:
    """The setting reaches the broker; settings with another value are told apart from the
    running broker's (it keeps its configuration until restarted). The broker may have been
    started with another value than this session's (``services up`` before the tests)."""
    if not settings.uses_local_kafka:
        pytest.skip("an external broker is configured")
    broker = ConfigResource(ResourceType.BROKER, "1")
    config = admin.describe_configs([broker])[broker].result(timeout=30)
    delay = int(config["group.initial.rebalance.delay.ms"].value)
    for value, current in ((delay, True), (delay + 1, False)):
        other = settings.model_copy(update={"kafka_initial_rebalance_delay_ms": value})
        assert bootstrap.local_kafka(other).config_current() is current


def test_starting_postgres_twice_leaves_one_server(
    settings: Settings, endpoints: bootstrap.Endpoints
) -> None:
    if not settings.uses_local_postgres:
        pytest.skip("an external database is configured")
    postgres = bootstrap.local_postgres(settings)
    first = postgres.status()
    assert first.running
    second = postgres.start()
    assert second.pid == first.pid
    assert postgres.status().pid == first.pid


def test_the_local_server_is_tuned_for_the_locator(
    settings: Settings, endpoints: bootstrap.Endpoints
) -> None:
    """Its buffer cache sized to the machine, and deadlocks looked for soon: two locators'
    batches can deadlock, and both wait until PostgreSQL looks (1 s by default)."""
    if not settings.uses_local_postgres:
        pytest.skip("an external database is configured")
    with psycopg.connect(endpoints.postgres_dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT setting::bigint * 8192 / 1048576 FROM pg_settings"
            " WHERE name = 'shared_buffers'), current_setting('deadlock_timeout')"
        ).fetchone()
    assert row == (shared_buffers_mb(machine_memory_bytes()), "100ms")


def test_kafka_on_a_taken_port_names_the_setting(
    settings: Settings, taken_port: int, tmp_path: Path
) -> None:
    kafka = LocalKafka(
        version=settings.kafka_version,
        cache_dir=settings.cache_dir,
        data_dir=tmp_path / "kafka",
        port=taken_port,
        controller_port=free_port(),
        heap="256m",
        initial_rebalance_delay_ms=0,
    )
    with pytest.raises(LocalServiceError, match=rf"port {taken_port}.*LOCATOR_KAFKA_PORT"):
        kafka.start()
    assert not kafka.status().running
    kafka.stop()  # a no-op on a broker that never ran


def test_postgres_on_a_taken_port_names_the_setting(taken_port: int, tmp_path: Path) -> None:
    postgres = LocalPostgres(port=taken_port, database="unused", data_dir=tmp_path / "postgres")
    with pytest.raises(LocalServiceError, match=rf"port {taken_port}.*LOCATOR_POSTGRES_PORT"):
        postgres.start()
    assert not postgres.status().running
    postgres.stop()  # a no-op on a server that never ran


# --- provisioning --------------------------------------------------------------------------


def test_provisioning_the_contract_twice_changes_nothing(
    settings: Settings, kafka_bootstrap: str
) -> None:
    bootstrap.provision(settings, kafka_bootstrap)  # creates whatever is missing
    again = bootstrap.provision(settings, kafka_bootstrap)
    assert again.created == ()
    assert len(again.unchanged) == 45


def test_provision_creates_once_then_leaves_alone(
    admin: AdminClient, unique_topic: TopicFactory
) -> None:
    specs = [
        TopicSpec(unique_topic(create=False), 3, 1, {"cleanup.policy": "delete"}),
        TopicSpec(unique_topic(create=False), 1, 1, dict(COMPACT)),
    ]
    first = provision_topics(admin, specs)
    assert first.created == (specs[0].name, specs[1].name)
    assert first.unchanged == ()
    metadata = admin.list_topics(timeout=10)
    assert len(metadata.topics[specs[0].name].partitions) == 3

    second = provision_topics(admin, specs)
    assert second.created == ()
    assert second.unchanged == (specs[0].name, specs[1].name)


def test_existing_topic_with_fewer_partitions_is_an_error(
    admin: AdminClient, unique_topic: TopicFactory
) -> None:
    name = unique_topic(partitions=1)
    with pytest.raises(TopicMismatchError, match=rf"{name} has 1 partitions.*asks for 4"):
        provision_topics(admin, [TopicSpec(name, 4)])
    assert len(admin.list_topics(timeout=10).topics[name].partitions) == 1  # not altered


def test_existing_topic_with_other_cleanup_policy_is_an_error(
    admin: AdminClient, unique_topic: TopicFactory
) -> None:
    name = unique_topic(partitions=1)
    with pytest.raises(TopicMismatchError, match=rf"{name} has cleanup.policy=delete"):
        provision_topics(admin, [TopicSpec(name, 1, 1, dict(COMPACT))])


# --- round trips ---------------------------------------------------------------------------


def test_postgres_round_trip(fresh_database: str) -> None:
    with psycopg.connect(fresh_database) as conn:
        conn.execute("CREATE TABLE presence (uan text PRIMARY KEY, allocation_month text)")
        conn.execute("INSERT INTO presence VALUES (%s, %s)", ("100000000001", "2025-01"))
        conn.commit()
    with psycopg.connect(fresh_database) as conn:
        rows = conn.execute("SELECT uan, allocation_month FROM presence").fetchall()
        encoding = conn.execute("SHOW server_encoding").fetchone()
    assert rows == [("100000000001", "2025-01")]
    assert encoding == ("UTF8",)


def test_kafka_round_trip_of_bytes(kafka_bootstrap: str, unique_topic: TopicFactory) -> None:
    topic = unique_topic(partitions=1)
    payload = bytes(range(256))
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    producer.produce(topic, key=b"100000000001", value=payload, headers=[("source", b"test")])
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        message = None
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is not None:
                pytest.fail(f"consumer error: {message.error()}")
        assert message is not None, "no message within 30 s"
        assert message.key() == b"100000000001"
        assert message.value() == payload
        assert message.headers() == [("source", b"test")]
    finally:
        consumer.close()
