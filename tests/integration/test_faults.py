"""Faults: the broker or the database restarts in the middle of a run.

The locator must wait and resume, lose nothing and apply nothing twice; the streams worker must
wait and resume, and publish what an uninterrupted run publishes. The servers restarted here
are this module's own: a Kafka broker and a PostgreSQL server started on free ports with their
own data directories, so no other test (and no other session on the machine) sees a restart.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from eshram_locator import bootstrap
from eshram_locator.domain.model import Location
from eshram_locator.kafka.publish import publish_simulation
from eshram_locator.kafka.topics import provision_topics, topic_specs
from eshram_locator.local.kafka_server import LocalKafka
from eshram_locator.local.postgres_server import ROOT_DATA_PARENT, LocalPostgres, data_dir_for
from eshram_locator.settings import Settings
from eshram_locator.simulator.config import SimulationConfig
from eshram_locator.simulator.population import simulate
from eshram_locator.topics import TopicNames
from tests.integration.conftest import Pipeline
from tests.integration.locator_support import (
    address_requests,
    committed,
    final_state,
    holding,
    locator_command,
    published_once,
    unsettled,
)
from tests.integration.test_streams_recovery import (
    expected_flows,
    latest_flows,
    wait_for_flows,
)
from tests.integration.test_streams_support import (
    StreamsWorker,
    TopicReader,
    free_port,
    moved,
    produce_changes,
    produce_registrations,
    registration,
    wait_until,
)

pytestmark = pytest.mark.integration

POPULATION = SimulationConfig(seed=23, workers=700, months=12, registry_update_share=0)
DOWN_S = 6.0  # how long a server stays down


@dataclass
class PrivateServices:
    kafka: LocalKafka
    postgres: LocalPostgres
    settings: Settings

    def endpoints(self) -> bootstrap.Endpoints:
        return bootstrap.Endpoints(
            self.kafka.bootstrap_servers,
            self.postgres.app_dsn(),
            postgres_owner_dsn=self.postgres.owner_dsn(),
        )

    def pipeline(self, name: str, state_topics: bool = False) -> Pipeline:
        """A namespace of its own: topics under a prefix, a database owned by the owner."""
        suffix = uuid.uuid4().hex[:6]
        prefix = f"fault-{name}-{suffix}."
        database = f"fault_{name}_{suffix}"
        with psycopg.connect(self.postgres.owner_dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        specs = [
            spec
            for spec in topic_specs(3, 2, 1, prefix=prefix)
            if state_topics or ".state." not in spec.name
        ]
        provision_topics(bootstrap.admin_client(self.kafka.bootstrap_servers), specs)
        live = self.endpoints().in_database(database)
        settings = self.settings.model_copy(
            update={
                "topic_prefix": prefix,
                "kafka_bootstrap": live.bootstrap_servers,
                "consumer_group": f"locator-{suffix}",
                "batch_timeout_s": 0.25,
                "collections_partitions": 3,
                "topic_partitions": 2,
            }
        )
        return Pipeline(settings, live, TopicNames(prefix), bootstrap.codec(settings))


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServices]:
    settings = bootstrap.load_settings()
    if not settings.uses_local_kafka or not settings.uses_local_postgres:
        pytest.skip("restarts only servers of its own; needs the local Kafka and PostgreSQL")
    base = tmp_path_factory.mktemp("fault-services")
    postgres_port = free_port()
    kafka = LocalKafka(
        version=settings.kafka_version,
        cache_dir=settings.cache_dir,
        data_dir=base / "kafka",
        port=free_port(),
        controller_port=free_port(),
        heap="384m",
        initial_rebalance_delay_ms=0,
    )
    postgres_dir = data_dir_for(base, postgres_port)
    postgres = LocalPostgres(port=postgres_port, database="fault_tests", data_dir=postgres_dir)
    try:
        postgres.start()
        kafka.start()
        yield PrivateServices(kafka, postgres, settings)
    finally:
        kafka.stop()
        postgres.stop()
        if postgres_dir.is_relative_to(ROOT_DATA_PARENT) or postgres_dir.is_relative_to(base):
            shutil.rmtree(postgres_dir, ignore_errors=True)
            postgres_dir.with_name(postgres_dir.name + ".lock").unlink(missing_ok=True)


def _run_with_restart(pipeline: Pipeline, server: LocalKafka | LocalPostgres, total: int) -> str:
    """The locator process to the end of its input, ``server`` restarted while it works;
    returns what it logged."""
    command, env = locator_command(pipeline, "--until-idle")
    env["LOCATOR_LOG_LEVEL"] = "INFO"
    dsn = pipeline.endpoints.postgres_dsn
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while committed(dsn) == 0:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the locator made no progress"
            time.sleep(0.05)
        time.sleep(random.Random(3).uniform(0.0, 0.3))
        assert committed(dsn) < total * 0.8, "the input ran out before the restart"
        server.stop()
        time.sleep(DOWN_S)
        assert process.poll() is None, "the locator exited while the server was down"
        server.start()
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, err[-3000:]
    assert b"consumed" in out
    return err.decode(errors="replace")


def _compare_with_reference(pipeline: Pipeline, reference: Pipeline, total: int) -> None:
    assert committed(pipeline.endpoints.postgres_dsn) == total
    moved_twice = unsettled(pipeline.endpoints.postgres_dsn, reference.endpoints.postgres_dsn)
    interrupted = final_state(pipeline.endpoints.postgres_dsn, moved_twice)
    clean = final_state(reference.endpoints.postgres_dsn, moved_twice)
    assert interrupted == clean
    assert interrupted["outbox"] == (0,)

    published_once(pipeline)  # each event once, or repeated byte for byte
    assert holding(pipeline) == holding(reference)
    assert address_requests(pipeline, moved_twice) == address_requests(reference, moved_twice)


@pytest.mark.parametrize("server", ["kafka", "postgres"])
def test_the_locator_survives_a_server_restart(services: PrivateServices, server: str) -> None:
    simulation = simulate(POPULATION)
    pipeline = services.pipeline(f"locator-{server}")
    reference = services.pipeline(f"reference-{server}")
    for target in (pipeline, reference):
        publish_simulation(target.producer(), target.codec, target.names, simulation.messages())
    reference.run_locator()
    bootstrap.migrate(pipeline.endpoints)

    logged = _run_with_restart(
        pipeline,
        services.kafka if server == "kafka" else services.postgres,
        simulation.total_messages,
    )
    if server == "postgres":
        assert "database_retry" in logged  # it waited, and did not crash or skip

    _compare_with_reference(pipeline, reference, simulation.total_messages)


HOMES = [Location(9, 901), Location(9, 902), Location(10, 1001)]
PLACES = [Location(27, 2701), Location(27, 2702), Location(7, 701), Location(24, 2401)]


def test_the_streams_worker_survives_a_broker_restart(
    services: PrivateServices, tmp_path: Path
) -> None:
    """Every change reaches its state topics after the restart, as without it."""
    pipeline = services.pipeline("streams", state_topics=True)
    rng = random.Random(8)
    workers = [f"1000000{n:05d}" for n in range(60)]
    homes = {uan: rng.choice(HOMES) for uan in workers}
    produce_registrations(pipeline, *(registration(uan, homes[uan], True) for uan in workers))
    changes = [
        moved(uan, homes[uan], homes[uan], rng.choice(PLACES), f"2025-{rng.randint(1, 9):02d}")
        for uan in workers
    ]
    expected = {
        (pipeline.names.state(state), change.event_id)
        for change in changes
        for state in {homes[change.uan].state_lgd, change.current_location.state_lgd}
    }
    worker = StreamsWorker(pipeline, tmp_path / "streams", tmp_path / "streams.log")
    reader = TopicReader(
        pipeline.endpoints.bootstrap_servers,
        [*pipeline.names.states, pipeline.names.migration_flows],
    )
    try:
        produce_changes(pipeline, *changes[:30])
        first = {pair for pair in expected if pair[1] in {c.event_id for c in changes[:30]}}
        wait_until(lambda: _shared(pipeline, reader) >= first, 120, "the first half shared")
        services.kafka.stop()
        time.sleep(DOWN_S)
        assert worker.process.poll() is None, worker.log_tail()
        services.kafka.start()
        produce_changes(pipeline, *changes[30:])
        wait_until(lambda: _shared(pipeline, reader) >= expected, 180, "every change shared")
        # The flows count each move once (no replay after the restart counted one twice).
        figures, per_month = expected_flows(homes, changes)
        wait_for_flows(reader, pipeline, figures, "the flows after the restart")
        reader.poll(3.0)
        assert _shared(pipeline, reader) == expected  # nothing else, nowhere else
        published: Counter[str] = Counter()
        for (month, _, _), (_, moves_in) in latest_flows(reader, pipeline).items():
            published[month] += moves_in
        assert published == per_month
        assert worker.process.poll() is None, worker.log_tail()
    finally:
        worker.stop()
        reader.close()


def _shared(pipeline: Pipeline, reader: TopicReader) -> set[tuple[str, str]]:
    """(state topic, event_id) of everything the state topics received (duplicates once)."""
    reader.poll()
    shared = set()
    states = set(pipeline.names.states)
    for topic, _, value, _ in reader.messages:
        if topic not in states:
            continue
        _, datum = pipeline.codec.decode(value or b"", "LocationChanged")
        shared.add((topic, str(datum["event_id"])))
    return shared
