"""``bench/run --preload-registry``: a preloaded worker is stored exactly as the locator stores
a registration it reads from the registry topic, and the locator treats the preloaded
population as registered (bench/preload.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from bench.preload import (
    SyntheticRegistry,
    collection_messages,
    plan_collections,
    preload_registry,
    produce_collections,
)
from eshram_locator import bootstrap
from eshram_locator.domain.aadhaar import find_aadhaar_like, is_aadhaar_like
from eshram_locator.domain.model import WorkerRegistration
from eshram_locator.records import WORKER_REGISTRATION, worker_registration_to_avro
from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration

WORKERS = 2_000
IDENTITY = {"uan", "member_ref"}
CLOCK = {"updated_at", "first_seen_at"}  # now() when the row was written


def _stored(dsn: str, uan: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        worker = conn.execute("SELECT * FROM workers WHERE uan = %s", (uan,)).fetchone()
        member = conn.execute("SELECT * FROM members WHERE uan = %s", (uan,)).fetchone()
    assert worker is not None, uan
    assert member is not None, uan
    return {"workers": worker, "members": member}


def _address_kind(registration: WorkerRegistration) -> str:
    if registration.present_address is None:
        return "no present address"
    if registration.present_address == registration.permanent_address:
        return "present = permanent"
    return "present elsewhere"


def test_a_preloaded_worker_is_stored_as_the_locator_stores_its_registration(
    pipeline: Pipeline,
) -> None:
    registry = SyntheticRegistry(pipeline.codec, seed=11, workers=WORKERS)
    picks: dict[str, int] = {}
    for index in range(WORKERS):
        picks.setdefault(_address_kind(registry.registration(index)), index)
    assert len(picks) == 3, picks
    # Worker A: a registration the real locator reads from the registry topic. Worker B: the
    # preloaded worker with the same fields but its own uan and member_ref.
    twins = {
        index: replace(
            registry.registration(index),
            uan=f"10{index:010d}",
            member_ref=f"MR-LOCATOR-{index:06d}",
        )
        for index in picks.values()
    }
    producer = pipeline.producer()
    for twin in twins.values():
        value = pipeline.codec.encode(
            WORKER_REGISTRATION, worker_registration_to_avro(twin), topic=pipeline.names.registry
        )
        producer.produce(pipeline.names.registry, value, twin.uan.encode())
    assert producer.flush(30) == 0
    pipeline.run_locator()  # applies the migrations and registers the twins
    dsn = pipeline.endpoints.postgres_dsn
    stats = preload_registry(dsn, registry)
    assert stats.workers == WORKERS

    with psycopg.connect(dsn) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM workers), (SELECT count(*) FROM members),"
            " (SELECT count(*) FROM members WHERE uan IS NULL OR history IS NOT NULL)"
        ).fetchone()
    assert counts == (WORKERS + len(twins), WORKERS + len(twins), 0)

    for index, twin in twins.items():
        by_locator = _stored(dsn, twin.uan)
        preloaded = _stored(dsn, registry.uan(index))
        assert preloaded["workers"]["member_ref"] == registry.member_ref(index)
        assert preloaded["members"]["member_ref"] == registry.member_ref(index)
        for table, row in by_locator.items():
            other = preloaded[table]
            assert row.keys() == other.keys()
            for column, value in row.items():
                if column in IDENTITY | CLOCK:
                    continue
                if column == "registration":
                    _, mine = pipeline.codec.decode(bytes(value), WORKER_REGISTRATION)
                    _, theirs = pipeline.codec.decode(bytes(other[column]), WORKER_REGISTRATION)
                    assert theirs["uan"] == registry.uan(index)
                    assert theirs["member_ref"] == registry.member_ref(index)
                    for identity in IDENTITY:
                        mine.pop(identity)
                        theirs.pop(identity)
                    assert theirs == mine, _address_kind(twin)
                    continue
                assert other[column] == value, (table, column, _address_kind(twin))


def test_the_synthetic_registry_is_deterministic_and_never_aadhaar_like(
    pipeline: Pipeline,
) -> None:
    first = SyntheticRegistry(pipeline.codec, seed=3, workers=WORKERS)
    again = SyntheticRegistry(pipeline.codec, seed=3, workers=WORKERS)
    other = SyntheticRegistry(pipeline.codec, seed=4, workers=WORKERS)
    assert list(first.worker_rows()) == list(again.worker_rows())
    assert list(first.worker_rows()) != list(other.worker_rows())
    uans = {first.uan(index) for index in range(WORKERS)}
    refs = {first.member_ref(index) for index in range(WORKERS)}
    assert len(uans) == len(refs) == WORKERS
    for index in range(WORKERS):
        assert len(first.uan(index)) == 12
        assert first.uan(index).isdigit()
        assert not is_aadhaar_like(first.uan(index))
        assert find_aadhaar_like(first.member_ref(index)) == []
        first.verify(index)  # the spliced Avro is the codec's
    big = SyntheticRegistry(pipeline.codec, seed=3, workers=10_000_000, pool_size=64)
    assert not is_aadhaar_like(big.uan(9_999_999))
    big.verify(9_999_999)


def test_the_locator_finds_the_moves_of_preloaded_workers(pipeline: Pipeline) -> None:
    bootstrap.migrate(pipeline.endpoints)  # as the owner; the app role may load rows
    dsn = pipeline.endpoints.postgres_dsn
    registry = SyntheticRegistry(pipeline.codec, seed=5, workers=WORKERS)
    preload_registry(dsn, registry)
    plan = plan_collections(3 * 500, WORKERS)
    assert (plan.months, plan.collectors) == (3, 500)
    move_share = 0.3
    collectors = {
        int(message.key[-10:], 16) for message in collection_messages(registry, plan, move_share)
    }
    assert len(collectors) == plan.collectors
    movers = {
        registry.uan(index)
        for index in collectors
        if registry.mover(index, plan.months, move_share) is not None
    }
    assert 0.2 * plan.collectors < len(movers) < 0.4 * plan.collectors

    counts = produce_collections(
        pipeline.producer(), pipeline.codec, pipeline.names, registry, plan, move_share
    )
    assert counts.total == plan.events
    pipeline.run_locator()

    with psycopg.connect(dsn) as conn:
        members = conn.execute(
            "SELECT count(*), count(uan), count(history) FROM members"
        ).fetchone()
        workers = conn.execute("SELECT count(*) FROM workers").fetchone()
        changed = {
            str(uan)
            for (uan,) in conn.execute("SELECT uan FROM location_changes WHERE active").fetchall()
        }
    # Every collection was a registered member's: no member was added, each collector has a
    # history, and exactly the workers away for two months have an active change.
    assert members == (WORKERS, WORKERS, plan.collectors)
    assert workers == (WORKERS,)
    assert changed == movers
