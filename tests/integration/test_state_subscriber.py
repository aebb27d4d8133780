"""The reference state subscriber: schemas from the schema topic only, dedupe on event_id,
RETRACTED restores the previous location, and running it twice leaves the same table."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from eshram_locator import bootstrap
from eshram_locator.domain.model import Location
from eshram_locator.domain.rules import retraction
from eshram_locator.kafka import clients
from eshram_locator.kafka.publish import publish_schemas
from tests.integration.conftest import Pipeline
from tests.integration.test_streams_support import moved, produce_changes

pytestmark = pytest.mark.integration

UP = Location(9, 901)
MUMBAI = Location(27, 2701, 270101, None, "400001")
PUNE = Location(27, 2702)
W1, W2, W3 = "100000000001", "100000000002", "100000000003"


def snapshot(dsn: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT * FROM state_subscriber_workers ORDER BY state_lgd, uan"
        ).fetchall()


def test_subscriber_is_replay_safe_and_restores_on_retraction(
    pipeline: Pipeline, admin: AdminClient
) -> None:
    topic = pipeline.names.state(27)
    for future in admin.create_topics([NewTopic(topic, 2, 1)], operation_timeout=30).values():
        future.result()
    try:
        publish_schemas(
            clients.producer(pipeline.endpoints.bootstrap_servers), pipeline.codec, pipeline.names
        )
        to_mumbai = moved(W1, UP, UP, MUMBAI, "2025-03")
        to_pune = moved(W1, UP, MUMBAI, PUNE, "2025-06")
        w2 = moved(W2, UP, UP, PUNE, "2025-04")
        w3 = moved(W3, UP, UP, MUMBAI, "2025-02")
        retracted = retraction(to_pune, datetime(2025, 9, 1, tzinfo=UTC))
        retracted_w3 = retraction(w3, datetime(2025, 9, 1, tzinfo=UTC))
        produce_changes(
            pipeline, to_mumbai, to_pune, w2, to_pune, w3, retracted, retracted_w3, topic=topic
        )
        producer = pipeline.producer()
        producer.produce(topic, b"\xc3\x01garbage!", W1.encode())
        assert producer.flush(30) == 0

        first = bootstrap.state_subscriber(
            pipeline.settings, pipeline.endpoints, 27, idle_exit_polls=4
        ).run()
        assert first.consumed == 8
        assert first.duplicates == 1  # to_pune twice
        assert first.rejected == 1
        table = snapshot(pipeline.endpoints.postgres_dsn)
        # W1: Pune retracted -> back in Mumbai; W2 in Pune; W3's only change retracted -> UP.
        assert [(row[1], row[2], row[3]) for row in table] == [
            (W1, 27, 2701),
            (W2, 27, 2702),
            (W3, 9, 901),
        ]

        resumed = bootstrap.state_subscriber(
            pipeline.settings, pipeline.endpoints, 27, idle_exit_polls=4
        ).run()
        assert resumed.consumed == 0  # offsets stored with the rows
        replayed = bootstrap.state_subscriber(
            pipeline.settings, pipeline.endpoints, 27, from_beginning=True, idle_exit_polls=4
        ).run()
        assert replayed.consumed == 8
        assert snapshot(pipeline.endpoints.postgres_dsn) == table
    finally:
        for future in admin.delete_topics([topic], operation_timeout=30).values():
            future.result()
