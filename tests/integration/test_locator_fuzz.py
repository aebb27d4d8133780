"""A mixed batch of valid and hostile messages through the real locator process.

The process must neither crash nor stall on any input, and account for every message: events
in (the offsets committed in PostgreSQL) = processed + dead-lettered (the DLQ topics), with
exactly the messages the intake rejects offline in the DLQ, and every accepted collection
stored.
"""

from __future__ import annotations

import random
import re
import subprocess

import psycopg
import pytest

from eshram_locator.domain.history import MemberHistory, transaction_digest
from eshram_locator.errors import PermanentRecordError
from eshram_locator.intake import RawMessage, read_collection, read_registration
from eshram_locator.kafka.clients import DeliveryTracker
from eshram_locator.kafka.publish import publish_simulation
from eshram_locator.postgres.store import observation_key
from eshram_locator.records import to_avro
from eshram_locator.simulator.config import SimulationConfig
from eshram_locator.simulator.population import simulate
from eshram_locator.topics import COLLECTIONS
from tests.fuzz_inputs import fuzz_message
from tests.integration.conftest import Pipeline
from tests.integration.locator_support import committed, locator_command, worker_heads_astray

pytestmark = pytest.mark.integration

HOSTILE = 600


def test_hostile_input_is_dead_lettered_and_the_locator_neither_crashes_nor_stalls(
    pipeline: Pipeline,
) -> None:
    rng = random.Random(2024)
    hostile = [fuzz_message(rng, pipeline.codec, pipeline.names, offset=i) for i in range(HOSTILE)]
    simulation = simulate(SimulationConfig(seed=17, workers=150, months=4, deregistered_share=0.0))

    # What the intake makes of each hostile message, offline.
    rejected = 0
    stored: set[tuple[str, str]] = set()
    for message in hostile:
        try:
            if message.topic == pipeline.names.collections:
                collection = read_collection(pipeline.codec, message)
                stored.add((collection.source, collection.transaction_id))
            else:
                read_registration(pipeline.codec, message)
        except PermanentRecordError:
            rejected += 1
    assert 0 < rejected < HOSTILE, "the mix needs both outcomes"
    for sim in simulation.messages():
        if sim.topic == COLLECTIONS and sim.value is not None:
            _, datum = to_avro(sim.value)
            stored.add((datum["source"], datum["transaction_id"]))

    # Produce: hostile, valid, hostile, so batches mix them.
    half = HOSTILE // 2
    _produce(pipeline, hostile[:half])
    counts = publish_simulation(
        pipeline.producer(), pipeline.codec, pipeline.names, simulation.messages()
    )
    _produce(pipeline, hostile[half:])
    total = HOSTILE + counts.total

    command, env = locator_command(pipeline, "--until-idle")
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr
    match = re.search(r"consumed (\d+), changes (\d+), dead-lettered (\d+)", finished.stdout)
    assert match, finished.stdout

    consumed, _, dead_lettered = (int(group) for group in match.groups())
    dlq = pipeline.consume_all(pipeline.names.dlq(pipeline.names.collections))
    dlq += pipeline.consume_all(pipeline.names.dlq(pipeline.names.registry), timeout_s=2)
    assert committed(pipeline.endpoints.postgres_dsn) == total  # events in, from PostgreSQL
    assert consumed == total
    assert len(dlq) == dead_lettered == rejected  # dead-lettered, from the DLQ topics
    for _, _, headers in dlq:
        meta = dict(headers)
        assert meta["error.class"]
        assert meta["error.reason"]
        assert meta["source.topic"].decode() in pipeline.names.inputs
    with psycopg.connect(pipeline.endpoints.postgres_dsn) as conn:
        histories = conn.execute("SELECT history FROM members WHERE history IS NOT NULL")
        counted = {
            digest
            for (history,) in histories
            for digest in MemberHistory.from_bytes(history).digests()
        }
        outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()
    # processed: every accepted collection is counted in its member's history (rule 8's digests)
    assert counted == {transaction_digest(observation_key(s, t)) for s, t in stored}
    assert outbox == (0,)
    assert worker_heads_astray(pipeline.endpoints.postgres_dsn) == []


def _produce(pipeline: Pipeline, messages: list[RawMessage]) -> None:
    producer = pipeline.producer()
    tracker = DeliveryTracker()
    for message in messages:
        producer.produce(
            message.topic,
            message.value,
            message.key,
            headers=list(message.headers),
            on_delivery=tracker,
        )
    assert producer.flush(30) == 0
    tracker.raise_if_failed()  # every hostile message is on the broker
