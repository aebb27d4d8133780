"""Issue 4: flow totals for a simulated population equal the locator's changes for the same
months.

A small simulated population goes through the real pipeline in thirds: each third is produced
and run through the locator until idle (its relay publishes every change), so late collections
of an earlier third make the locator retract changes it has already published. The streams
worker runs on the same prefix from the first third on. After each third, once it has processed
every message (its consumer group has committed the end of its input topics, and then of its
internal flow-partials topic), the latest ``MigrationFlow`` of each key is compared with the
active changes the locator stored in PostgreSQL: per month in total, and per (month, origin,
destination), origin being the district of the permanent address of the registration the
locator holds for the worker (``streams.flows`` has the definitions)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from eshram_locator.domain.model import ChangeType, District
from eshram_locator.kafka.publish import publish_simulation
from eshram_locator.records import location_changed_from_avro, worker_registration_from_avro
from eshram_locator.simulator.config import SimulationConfig
from eshram_locator.simulator.population import simulate
from tests.integration.conftest import Pipeline
from tests.integration.test_streams_support import (
    StreamsWorker,
    TopicReader,
    streams_topics,
    wait_until,
)

pytestmark = pytest.mark.integration
__all__ = ["streams_topics"]  # the fixture, imported to be used here

POPULATION = SimulationConfig(seed=5, workers=400, months=12)
PHASES = 3
# streams.app.FLOW_PARTIALS_SUFFIX (not imported: that would load Faust into the test process).
FLOW_PARTIALS_SUFFIX = "-flow-partials"

Cell = tuple[str, District, District]
"""(month, origin, destination)."""


def locator_moves(pipeline: Pipeline) -> Counter[Cell]:
    """Active MOVED/RETURNED_HOME changes stored by the locator, by (month, origin, destination)."""
    with psycopg.connect(pipeline.endpoints.postgres_dsn) as conn:
        outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()
        rows = conn.execute(
            "SELECT l.uan, l.change_type, l.effective_month, l.body, w.registration"
            " FROM location_changes l LEFT JOIN workers w USING (uan)"
            " WHERE l.active AND l.change_type IN (%s, %s)",
            (ChangeType.MOVED.value, ChangeType.RETURNED_HOME.value),
        ).fetchall()
    assert outbox == (0,), "the relay left changes unpublished"
    moves: Counter[Cell] = Counter()
    for uan, kind, month, body, registration in rows:
        assert registration is not None, f"an active change of unregistered worker {uan}"
        change = location_changed_from_avro(
            pipeline.codec.decode(bytes(body), "LocationChanged")[1]
        )
        assert (change.uan, change.change_type.value, change.effective_month) == (uan, kind, month)
        home = worker_registration_from_avro(
            pipeline.codec.decode(bytes(registration), "WorkerRegistration")[1]
        ).permanent_address.district
        moves[(month, home, change.current_location.district)] += 1
    return moves


def retractions(pipeline: Pipeline) -> int:
    with psycopg.connect(pipeline.endpoints.postgres_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM location_changes WHERE change_type = %s",
            (ChangeType.RETRACTED.value,),
        ).fetchone()
    return int(row[0]) if row else 0


@dataclass
class Offsets:
    """End offsets of topics, and the offsets a consumer group has committed."""

    admin: AdminClient
    bootstrap: str

    def __post_init__(self) -> None:
        self._probe = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "unused-probe"})

    def ends(self, topic: str) -> dict[TopicPartition, int]:
        partitions = self.admin.list_topics(topic, timeout=30).topics[topic].partitions
        return {
            TopicPartition(topic, p): self._probe.get_watermark_offsets(
                TopicPartition(topic, p), timeout=30, cached=False
            )[1]
            for p in partitions
        }

    def committed(self, group: str) -> dict[TopicPartition, int]:
        request = [ConsumerGroupTopicPartitions(group)]
        result = self.admin.list_consumer_group_offsets(request)[group].result()
        return {
            TopicPartition(tp.topic, tp.partition): tp.offset
            for tp in result.topic_partitions or []
            if tp.error is None
        }

    def close(self) -> None:
        self._probe.close()


def caught_up(offsets: Offsets, group: str, topics: Iterable[str]) -> bool:
    """The group has committed the end of every partition of ``topics`` (ends read first)."""
    ends: dict[TopicPartition, int] = {}
    for topic in topics:
        ends.update(offsets.ends(topic))
    committed = offsets.committed(group)
    return all(end == 0 or committed.get(tp, -1) >= end for tp, end in ends.items())


def settled(offsets: Offsets, pipeline: Pipeline) -> bool:
    """Every input message was processed, and then every partial sum that it sent. Faust
    flushes the producer before it commits, and the ledgers' flows are acknowledged before their
    offsets are committed, so every flow is on the topic by then."""
    group = pipeline.settings.topic_prefix + pipeline.settings.streams_app_id
    inputs = (pipeline.names.registry, pipeline.names.location_changes)
    return caught_up(offsets, group, inputs) and caught_up(
        offsets, group, [group + FLOW_PARTIALS_SUFFIX]
    )


def published_moves(reader: TopicReader, offsets: Offsets, pipeline: Pipeline) -> Counter[Cell]:
    """``moves_in`` of the latest MigrationFlow of each key, once every flow has been read."""
    flows = pipeline.names.migration_flows
    # A non-transactional topic's offsets are contiguous from 0 (nothing expires in a test).
    published = sum(offsets.ends(flows).values())
    wait_until(lambda: len(reader.messages) >= published, 60, "every flow", tick=reader.poll)
    assert len(reader.messages) == published
    latest: Counter[Cell] = Counter()
    for topic, key, value, _ in reader.messages:
        assert topic == flows
        assert value is not None
        _, flow = pipeline.codec.decode(value, "MigrationFlow")
        origin = District(flow["from_state_lgd"], flow["from_district_lgd"])
        destination = District(flow["to_state_lgd"], flow["to_district_lgd"])
        assert key == f"{flow['month']}:{origin}:{destination}".encode()
        latest[(flow["month"], origin, destination)] = flow["moves_in"]
    return latest


def by_month(cells: Counter[Cell]) -> Counter[str]:
    months: Counter[str] = Counter()
    for (month, _, _), count in cells.items():
        months[month] += count
    return months


def test_flow_totals_of_a_simulated_population_equal_the_locators_changes(
    pipeline: Pipeline, streams_topics: list[str], admin: AdminClient, tmp_path: Path
) -> None:
    messages = list(simulate(POPULATION).messages())
    cuts = [len(messages) * k // PHASES for k in range(PHASES + 1)]
    reader = TopicReader(pipeline.endpoints.bootstrap_servers, [pipeline.names.migration_flows])
    offsets = Offsets(admin, pipeline.endpoints.bootstrap_servers)
    worker: StreamsWorker | None = None
    expected: Counter[Cell] = Counter()
    actual: Counter[Cell] = Counter()
    taken_back: list[Cell] = []  # cells whose published moves_in went down from a third on
    try:
        for phase in range(1, PHASES + 1):
            third = messages[cuts[phase - 1] : cuts[phase]]
            publish_simulation(pipeline.producer(), pipeline.codec, pipeline.names, third)
            pipeline.run_locator()
            expected = locator_moves(pipeline)
            if worker is None:
                worker = StreamsWorker(pipeline, tmp_path / "data", tmp_path / "streams.log")
            wait_until(lambda: settled(offsets, pipeline), 120, f"the flows after third {phase}")
            before, actual = actual, published_moves(reader, offsets, pipeline)
            taken_back += [cell for cell, moves in before.items() if actual[cell] < moves]

            # Counter equality: a month or cell published with 0 moves equals an absent one
            # (a cell where a worker only left the destination, or whose change was retracted).
            assert by_month(actual) == by_month(expected), f"moves_in by month, third {phase}"
            assert actual == expected, f"moves_in by (month, origin, destination), third {phase}"
    except AssertionError:
        if worker is not None:
            print(worker.log_tail())
        raise
    finally:
        if worker is not None:
            worker.stop()
        reader.close()
        offsets.close()

    # The comparison covered enough: changes in most months, and a retraction taking a change
    # back out of a flow already published (seed 5: one RETURNED_HOME of 2025-08, third 3).
    assert expected.total() > 50
    assert len(by_month(expected)) >= 8
    assert taken_back, f"no flow went down ({retractions(pipeline)} RETRACTED changes)"
