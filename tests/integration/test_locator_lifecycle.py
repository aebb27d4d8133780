"""The locator process as operators run it: SIGTERM, several processes in one group,
deregistrations and the grace window for unregistered members."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from eshram_locator import bootstrap
from eshram_locator.kafka.publish import publish_simulation
from eshram_locator.postgres.store import LocatorStore
from eshram_locator.simulator.config import SimulationConfig
from eshram_locator.simulator.population import simulate
from tests.integration.conftest import Pipeline
from tests.integration.locator_support import (
    COUNT_OBSERVATIONS,
    committed,
    final_state,
    locator_command,
    unsettled,
)
from tests.integration.test_locator import HOME, MEMBER, MUMBAI, UAN, collection, produce
from tests.integration.test_locator import registration as worker_registration

pytestmark = pytest.mark.integration

POPULATION = SimulationConfig(seed=13, workers=600, months=12, registry_update_share=0)


def _wait_for_progress(pipeline: Pipeline, process: subprocess.Popen[bytes], above: int) -> None:
    deadline = time.monotonic() + 60
    while committed(pipeline.endpoints.postgres_dsn) <= above:
        assert process.poll() is None, "the locator exited on its own"
        assert time.monotonic() < deadline, "the locator made no progress"
        time.sleep(0.05)


def test_sigterm_finishes_the_batch_commits_and_exits_0_within_10_s(pipeline: Pipeline) -> None:
    simulation = simulate(POPULATION)
    publish_simulation(pipeline.producer(), pipeline.codec, pipeline.names, simulation.messages())
    bootstrap.migrate(pipeline.endpoints)
    command, env = locator_command(pipeline)
    process = subprocess.Popen(command, env=env)
    try:
        _wait_for_progress(pipeline, process, 0)
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert time.monotonic() - stopped_at < 10
    finally:
        if process.poll() is None:
            process.kill()
    state = final_state(pipeline.endpoints.postgres_dsn)
    assert state["outbox"] == (0,), "what was committed was also published before exiting"
    assert 0 < committed(pipeline.endpoints.postgres_dsn) < simulation.total_messages


def test_two_processes_in_one_group_share_the_partitions_and_agree_with_one(
    pipeline: Pipeline, reference: Pipeline
) -> None:
    simulation = simulate(POPULATION)
    for target in (pipeline, reference):
        publish_simulation(target.producer(), target.codec, target.names, simulation.messages())
    reference.run_locator()

    bootstrap.migrate(pipeline.endpoints)
    command, env = locator_command(pipeline, "--until-idle")
    first = subprocess.Popen(command, env=env)
    second: subprocess.Popen[bytes] | None = None
    try:
        _wait_for_progress(pipeline, first, 0)
        # The second process joins while the first is working: partitions move between them.
        second = subprocess.Popen(command, env=env)
        assert first.wait(300) == 0
        assert second.wait(300) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    assert committed(pipeline.endpoints.postgres_dsn) == simulation.total_messages
    moved_twice = unsettled(pipeline.endpoints.postgres_dsn, reference.endpoints.postgres_dsn)
    assert final_state(pipeline.endpoints.postgres_dsn, moved_twice) == final_state(
        reference.endpoints.postgres_dsn, moved_twice
    )


def test_a_tombstone_deletes_the_worker_and_their_history(pipeline: Pipeline) -> None:
    months = ["2025-04", "2025-05", "2025-06"]
    events = [collection(i, m, MUMBAI) for i, m in enumerate(months)]
    produce(pipeline, [worker_registration()], events)
    assert pipeline.run_locator().changes == 1

    producer = pipeline.producer()
    producer.produce(pipeline.names.registry, None, UAN.encode())  # deregistered
    assert producer.flush(30) == 0
    late = collection(9, "2025-03", HOME)  # arrives after the tombstone, from before it
    produce(pipeline, [], [late])
    pipeline.run_locator()

    with psycopg.connect(pipeline.endpoints.postgres_dsn) as conn:
        for table, column, key in (
            ("workers", "uan", UAN),
            ("location_changes", "uan", UAN),
        ):
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = %s", (key,))
            assert row.fetchone() == (0,), table
        row = conn.execute("SELECT uan, history FROM members WHERE member_ref = %s", (MEMBER,))
        assert row.fetchone() == (None, None), "the member keeps no history"


def test_collections_of_unregistered_members_are_purged_after_the_grace_window(
    pipeline: Pipeline,
) -> None:
    stranger = collection(1, "2025-04", HOME, member_ref="MR-STRANGER")
    produce(pipeline, [worker_registration()], [collection(2, "2025-04", HOME), stranger])
    pipeline.run_locator()
    store = LocatorStore.connect(pipeline.endpoints.postgres_dsn)
    try:
        with store.unit_of_work():
            assert store.purge_unregistered(datetime.now(UTC) - timedelta(days=35)) == 0
        with store.unit_of_work():
            assert store.purge_unregistered(datetime.now(UTC) + timedelta(seconds=1)) == 1
    finally:
        store.close()
    with psycopg.connect(pipeline.endpoints.postgres_dsn) as conn:
        members = dict(conn.execute("SELECT member_ref, uan FROM members").fetchall())
        assert members == {MEMBER: UAN}
        assert conn.execute(COUNT_OBSERVATIONS).fetchone() == (1, 1)
