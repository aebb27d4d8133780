"""Integration fixtures: an isolated pipeline (unique topic prefix, fresh database) per test."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from consumers.locator import Totals
from eshram_locator import bootstrap
from eshram_locator.avro_codec import AvroCodec
from eshram_locator.kafka import clients
from eshram_locator.kafka.topics import provision_topics, topic_specs
from eshram_locator.settings import Settings
from eshram_locator.topics import TopicNames


@dataclass(frozen=True)
class Pipeline:
    settings: Settings
    endpoints: bootstrap.Endpoints
    names: TopicNames
    codec: AvroCodec

    def producer(self) -> Producer:
        return clients.producer(self.endpoints.bootstrap_servers, **{"linger.ms": 5})

    def run_locator(self, idle_polls: int = 4) -> Totals:
        process = bootstrap.locator_process(
            self.settings, self.endpoints, idle_exit_polls=idle_polls
        )
        return process.run()

    def consume_all(
        self, topic: str, timeout_s: float = 5.0
    ) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
        """Every message of ``topic`` from the beginning, until it is quiet for a while."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.endpoints.bootstrap_servers,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topic])
        found = []
        quiet = 0.0
        try:
            while quiet < timeout_s:
                batch = consumer.consume(1000, 0.5)
                if not batch:
                    quiet += 0.5
                    continue
                quiet = 0.0
                for message in batch:
                    if message.error() is None:
                        found.append(
                            (message.key(), message.value(), list(message.headers() or []))
                        )
        finally:
            consumer.close()
        return found


@pytest.fixture
def pipeline(
    endpoints: bootstrap.Endpoints,
    admin: AdminClient,
    fresh_database: str,
    request: pytest.FixtureRequest,
) -> Iterator[Pipeline]:
    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:30].strip("-")
    prefix = f"t-{test}-{uuid.uuid4().hex[:6]}."
    # The processes run as the application role, migrations as the owner (one role when the
    # configured database has only one).
    live = endpoints.in_database(str(conninfo_to_dict(fresh_database)["dbname"]))
    settings = bootstrap.load_settings(
        topic_prefix=prefix,
        postgres_dsn=live.postgres_dsn,
        postgres_owner_dsn=live.owner_dsn,
        kafka_bootstrap=endpoints.bootstrap_servers,
        consumer_group=f"locator-{uuid.uuid4().hex[:8]}",
        batch_timeout_s=0.25,
        collections_partitions=3,
        topic_partitions=2,
    )
    specs = [
        spec
        for spec in topic_specs(3, 2, 1, prefix=prefix)
        if ".state." not in spec.name  # the streams' fan-out topics are not needed here
    ]
    provision_topics(admin, specs)
    try:
        yield Pipeline(settings, live, TopicNames(prefix), bootstrap.codec(settings))
    finally:
        for future in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
            future.result()


@pytest.fixture
def reference(pipeline: Pipeline, admin: AdminClient, postgres_dsn: str) -> Iterator[Pipeline]:
    """A second isolated pipeline for the uninterrupted run."""
    suffix = uuid.uuid4().hex[:8]
    prefix = f"t-reference-{suffix}."
    database = f"reference_{suffix}"
    server = make_conninfo(postgres_dsn, dbname="postgres")
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    specs = [s for s in topic_specs(3, 2, 1, prefix=prefix) if ".state." not in s.name]
    provision_topics(admin, specs)
    live = pipeline.endpoints.in_database(database)
    settings = pipeline.settings.model_copy(
        update={"topic_prefix": prefix, "consumer_group": f"reference-{suffix}"}
    )
    try:
        yield Pipeline(
            settings,
            live,
            TopicNames(prefix),
            pipeline.codec,
        )
    finally:
        for future in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
            future.result()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
