"""Crash safety: SIGKILL the locator at random moments, restart it, compare with a clean run.

The crash run is the real process (``python -m eshram_locator locator``) killed with SIGKILL at
least five times while it works through a simulated population; the reference is an
uninterrupted run over the same input into its own database and topics. Batches fall at
different offsets in the two runs, so a change that one run published and later retracted may
never have been published by the other: the comparison is of what holds at the end (the state
in PostgreSQL, the non-retracted changes, the address requests), and of the crash run's own
output, where no effect may appear twice except as a byte-identical copy of a message.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time

import psycopg
import pytest

from eshram_locator import bootstrap
from eshram_locator.kafka.publish import publish_simulation
from eshram_locator.simulator.config import SimulationConfig
from eshram_locator.simulator.population import simulate
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

pytestmark = pytest.mark.integration

KILLS = 6


def test_sigkill_at_random_moments_loses_nothing_and_applies_nothing_twice(
    pipeline: Pipeline, reference: Pipeline
) -> None:
    # No SMS-reachability flips: rule 9 reads the registration as it is when a change is found,
    # so a flip makes the address requests depend on which topic is read first, crash or not.
    simulation = simulate(
        SimulationConfig(seed=11, workers=700, months=12, registry_update_share=0)
    )
    for target in (pipeline, reference):
        publish_simulation(target.producer(), target.codec, target.names, simulation.messages())
    total = simulation.total_messages

    reference.run_locator()

    bootstrap.migrate(pipeline.endpoints)
    rng = random.Random(5)
    kills = 0
    command, env = locator_command(pipeline)
    # Small batches and short waits, so that six kills land before the input runs out.
    env["LOCATOR_BATCH_SIZE"] = "100"
    while kills < KILLS:
        before = committed(pipeline.endpoints.postgres_dsn)
        process = subprocess.Popen(command, env=env)
        try:
            # Kill once it has committed something new, at a random moment of its work.
            deadline = time.monotonic() + 60
            while committed(pipeline.endpoints.postgres_dsn) == before:
                assert process.poll() is None, "the locator exited on its own"
                assert time.monotonic() < deadline, "the locator made no progress"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.1))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        kills += 1
    assert committed(pipeline.endpoints.postgres_dsn) < total, "input ran out before the kills"

    command, env = locator_command(pipeline, "--until-idle")
    finished = subprocess.run(command, env=env, timeout=300, check=False)
    assert finished.returncode == 0
    assert committed(pipeline.endpoints.postgres_dsn) == total

    moved_twice = unsettled(pipeline.endpoints.postgres_dsn, reference.endpoints.postgres_dsn)
    crashed = final_state(pipeline.endpoints.postgres_dsn, moved_twice)
    clean = final_state(reference.endpoints.postgres_dsn, moved_twice)
    for part in crashed:
        left, right = crashed[part], clean[part]
        if isinstance(left, list) and isinstance(right, list):
            assert sorted(set(left) - set(right)) == [], part
            assert sorted(set(right) - set(left)) == [], part
        assert left == right, part
    assert crashed["outbox"] == (0,)

    # The crash run's output: every event at most once, or repeated byte for byte.
    with psycopg.connect(pipeline.endpoints.postgres_dsn) as conn:
        recorded = {
            str(row[0]): bytes(row[1])
            for row in conn.execute("SELECT event_id::text, body FROM location_changes")
        }
    assert published_once(pipeline) == recorded

    # What holds at the end is the same in both runs, and so are the address requests.
    assert holding(pipeline) == holding(reference)
    assert holding(pipeline) == {row[0] for row in crashed["active_changes"]}  # type: ignore[attr-defined]

    crash_requests = address_requests(pipeline, moved_twice)
    assert crash_requests  # the population has workers whose present address is stale
    assert crash_requests == address_requests(reference, moved_twice)
    assert len(moved_twice) < len(holding(reference)) // 10  # the exception, not the rule
