"""The locator against the real broker and database: changes out, dead letters, idempotency."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from consumers import locator as locator_module
from consumers.locator import LocatorProcess
from eshram_locator import bootstrap
from eshram_locator.domain.aadhaar import find_aadhaar_like, verhoeff_check_digit
from eshram_locator.domain.model import (
    AuthMode,
    ChangeType,
    CollectionItem,
    Location,
    Portability,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.postgres.store import LocatorStore
from eshram_locator.records import (
    location_changed_from_avro,
    ration_collection_to_avro,
    worker_registration_to_avro,
)
from tests.integration.conftest import Pipeline
from tests.integration.locator_support import COUNT_OBSERVATIONS, worker_heads_astray

pytestmark = pytest.mark.integration

HOME = Location(9, 901, 90101, None, "221001")
MUMBAI = Location(27, 2701, 270101, None, "400001")
UAN = "100000000001"
MEMBER = "MR-0001"


def registration(uan: str = UAN, member_ref: str = MEMBER) -> WorkerRegistration:
    return WorkerRegistration(
        uan=uan,
        member_ref=member_ref,
        permanent_address=HOME,
        present_address=None,
        occupation_nco="9313",
        consent_state_sharing=True,
        sms_reachable=True,
        updated_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def collection(
    number: int, month: str, where: Location, card: str = "UP-1234", member_ref: str = MEMBER
) -> RationCollection:
    year, mon = (int(part) for part in month.split("-"))
    return RationCollection(
        transaction_id=f"T-{number}",
        source="IM-PDS",
        ration_card_id=card,
        member_ref=member_ref,
        auth_mode=AuthMode.FINGERPRINT,
        fps_id=f"FPS-{where.district_lgd}",
        fps_location=where,
        card_state_lgd=9,
        portability=Portability.NONE if where == HOME else Portability.INTER_STATE,
        allocation_month=month,
        transacted_at=datetime(year, mon, 10, 6, 0, tzinfo=UTC),
        items=(CollectionItem("RICE", "NFSA", 5000),),
    )


def produce(
    pipeline: Pipeline,
    registrations: list[WorkerRegistration],
    collections: list[RationCollection],
    raw: Sequence[tuple[str, bytes, bytes | None]] = (),
) -> None:
    producer = pipeline.producer()
    for worker in registrations:
        producer.produce(
            pipeline.names.registry,
            pipeline.codec.encode("WorkerRegistration", worker_registration_to_avro(worker)),
            worker.uan.encode(),
        )
    for event in collections:
        producer.produce(
            pipeline.names.collections,
            pipeline.codec.encode("RationCollection", ration_collection_to_avro(event)),
            event.member_ref.encode(),
        )
    for topic, key, value in raw:
        producer.produce(topic, value, key)
    assert producer.flush(30) == 0


def test_a_two_month_stay_moves_the_worker_once(pipeline: Pipeline) -> None:
    months = ["2025-04", "2025-05", "2025-06", "2025-07"]
    places = [HOME, MUMBAI, MUMBAI, MUMBAI]
    events = [collection(i, m, p) for i, (m, p) in enumerate(zip(months, places, strict=True))]
    produce(pipeline, [registration()], [*events, events[2]])  # one duplicate delivery

    totals = pipeline.run_locator()
    assert totals.collections == 5
    assert totals.changes == 1

    changes = pipeline.consume_all(pipeline.names.location_changes)
    assert len(changes) == 1
    key, value, _ = changes[0]
    assert key == UAN.encode()
    _, datum = pipeline.codec.decode(value or b"", "LocationChanged")
    change = location_changed_from_avro(datum)
    assert change.change_type is ChangeType.MOVED
    assert change.effective_month == "2025-05"
    assert change.current_location.district == MUMBAI.district
    assert change.previous_location is not None
    assert change.previous_location.district == HOME.district
    requests = pipeline.consume_all(pipeline.names.address_update_requests, timeout_s=2)
    assert len(requests) == 1

    # A replay of the same input changes nothing: no new change, no new request.
    produce(pipeline, [registration()], events)
    totals = pipeline.run_locator()
    assert totals.changes == 0
    assert len(pipeline.consume_all(pipeline.names.location_changes, timeout_s=2)) == 1
    with psycopg.connect(pipeline.endpoints.postgres_dsn) as conn:
        row = conn.execute(
            "SELECT current_state_lgd, current_district_lgd FROM workers WHERE uan = %s", (UAN,)
        ).fetchone()
        assert row == (27, 2701)
        head = conn.execute(
            "SELECT worker_state_lgd, worker_district_lgd, worker_rebaseline FROM members"
            " WHERE member_ref = %s",
            (MEMBER,),
        ).fetchone()
        assert head == (27, 2701, None)  # the member row's mirror of the worker (0004)
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def _aadhaar_like() -> str:
    payload = "23456789012"
    return payload + verhoeff_check_digit(payload)


def test_bad_records_are_dead_lettered_with_reason_and_aadhaar_masked(pipeline: Pipeline) -> None:
    number = _aadhaar_like()
    leaky = collection(1, "2025-04", HOME, card=f"UP-{number}")
    good = collection(2, "2025-04", HOME)
    produce(
        pipeline,
        [registration()],
        [leaky, good],
        raw=[
            (
                pipeline.names.collections,
                MEMBER.encode(),
                b"\xc3\x01" + bytes(range(8)) + b"garbage",
            ),
            (pipeline.names.registry, b"not-a-uan", b"\x00\x00"),
        ],
    )
    totals = pipeline.run_locator()
    assert totals.dead_lettered == 3
    dead = pipeline.consume_all(pipeline.names.dlq(pipeline.names.collections))
    dead += pipeline.consume_all(pipeline.names.dlq(pipeline.names.registry), timeout_s=2)
    assert len(dead) == 3
    classes = set()
    for key, value, headers in dead:
        meta = dict(headers)
        classes.add(meta["error.class"].decode())
        assert meta["error.reason"]
        assert meta["source.topic"].decode() in pipeline.names.inputs
        assert int(meta["source.partition"]) >= 0
        assert int(meta["source.offset"]) >= 0
        for blob in (key or b"", value or b"", *meta.values()):
            assert not find_aadhaar_like(blob.decode("latin-1")), "a raw Aadhaar number leaked"
    assert classes == {"raw_aadhaar", "unknown_schema", "validation_error"}
    masked = next(v for _, v, h in dead if dict(h)["error.class"] == b"raw_aadhaar")
    _, datum = pipeline.codec.decode(masked or b"", "RationCollection")
    assert datum["ration_card_id"] == f"UP-XXXXXXXX{number[-4:]}"
    with psycopg.connect(pipeline.endpoints.postgres_dsn) as conn:
        stored = conn.execute(COUNT_OBSERVATIONS).fetchone()
        assert stored == (1, 1)


def test_the_registry_is_read_before_the_collections(pipeline: Pipeline) -> None:
    """After an assignment the collections wait until the registry is read: a registration read
    after its worker's collections would derive the whole history again."""
    workers = [registration(f"1000000{n:05d}", f"MR-B{n:03d}") for n in range(40)]
    months = ["2025-04", "2025-05", "2025-06", "2025-07", "2025-08"]
    events = [
        collection(n * 10 + i, month, HOME, member_ref=worker.member_ref)
        for n, worker in enumerate(workers)
        for i, month in enumerate(months)
    ]
    produce(pipeline, [], events)  # the collections are in the log first
    produce(pipeline, workers, [])
    seen: list[tuple[int, int]] = []  # (registry, collections) read so far, after each batch
    settings = pipeline.settings.model_copy(update={"batch_size": 25})
    process = bootstrap.locator_process(
        settings,
        pipeline.endpoints,
        idle_exit_polls=4,
        on_batch=lambda totals: seen.append((totals.registry, totals.collections)),
    )
    totals = process.run()
    assert (totals.registry, totals.collections) == (len(workers), len(events))
    first_with_collections = next(registry for registry, read in seen if read)
    assert first_with_collections == len(workers), seen[:5]


def test_collections_paused_for_the_registry_are_resumed_when_revoked(
    pipeline: Pipeline,
) -> None:
    """librdkafka keeps a partition paused across unassign and assign: collections paused for
    the registry bootstrap, revoked before it ended and assigned again (here without the
    registry, so no new bootstrap), must be read, not left paused for ever."""
    produce(pipeline, [registration()], [collection(1, "2025-04", HOME)])
    process = bootstrap.locator_process(pipeline.settings, pipeline.endpoints, idle_exit_polls=4)
    consumer = process._consumer
    registry, collections = partitions(pipeline)
    try:
        process._on_assign(consumer, registry + collections)
        assert process._paused  # the bootstrap waits for the registration
        process._on_revoke(consumer, registry + collections)
        registry_read_by_another_process(pipeline)  # so no new bootstrap
        process._on_assign(consumer, collections)
        assert not process._paused
        assert topics_read(consumer) == [pipeline.names.collections]
    finally:
        consumer.close()


def partitions(pipeline: Pipeline) -> tuple[list[TopicPartition], list[TopicPartition]]:
    """Every partition of the registry, and of the collections."""
    names, settings = pipeline.names, pipeline.settings
    return (
        [TopicPartition(names.registry, p) for p in range(settings.topic_partitions)],
        [TopicPartition(names.collections, p) for p in range(settings.collections_partitions)],
    )


def topics_read(consumer: Consumer) -> list[str | None]:
    """The topics of the first messages the consumer reads (waiting up to 10 s for any)."""
    read: list[str | None] = []
    for _ in range(20):
        read += [message.topic() for message in consumer.consume(100, 0.5)]
        if read:
            break
    return read


def registry_read_by_another_process(pipeline: Pipeline) -> None:
    """Store the offsets another process of the group stores once it has read the registry up
    to its high watermarks."""
    names, settings = pipeline.names, pipeline.settings
    consumer = Consumer(
        {"bootstrap.servers": pipeline.endpoints.bootstrap_servers, "group.id": "watermarks"}
    )
    try:
        ends = {
            (names.registry, p): consumer.get_watermark_offsets(
                TopicPartition(names.registry, p), timeout=10
            )[1]
            for p in range(settings.topic_partitions)
        }
    finally:
        consumer.close()
    store = LocatorStore.connect(pipeline.endpoints.postgres_dsn)
    try:
        with store.unit_of_work():
            store.save_offsets(settings.consumer_group, ends)
    finally:
        store.close()


def test_collections_wait_for_the_registry_another_process_reads(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry is keyed by uan, the collections by member: a collection's registration is
    as likely in a registry partition another process of the group reads. Collections wait
    until every registry partition is read, the others' as their offsets in PostgreSQL show."""
    with collections_assigned_alone(pipeline, monkeypatch, idle_after_s=60.0) as process:
        consumer = process._consumer
        assert process._paused
        assert consumer.consume(100, 2.0) == []
        process._advance_bootstrap()
        assert process._paused  # the registration is not read yet
        registry_read_by_another_process(pipeline)
        process._advance_bootstrap()
        assert not process._paused
        assert topics_read(consumer) == [pipeline.names.collections]


def test_a_registry_bootstrap_that_stops_advancing_ends(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that reads its registry partitions no further (stalled, or gone before the
    group rebalanced) holds the collections back only for a while: late registrations derive
    again, correct and only slower."""
    with collections_assigned_alone(pipeline, monkeypatch, idle_after_s=0.5) as process:
        process._advance_bootstrap()
        assert process._paused  # not yet
        time.sleep(0.6)
        process._advance_bootstrap()
        assert not process._paused


@contextmanager
def collections_assigned_alone(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, *, idle_after_s: float
) -> Iterator[LocatorProcess]:
    """A registration and a collection of its member in the log, and a locator assigned by
    hand every collections partition and no registry partition (the registry is another
    process's), its bootstrap ending after ``idle_after_s`` without progress."""
    produce(pipeline, [registration()], [collection(1, "2025-04", HOME)])
    monkeypatch.setattr(locator_module, "_BOOTSTRAP_IDLE_AFTER_S", idle_after_s)
    process = bootstrap.locator_process(pipeline.settings, pipeline.endpoints, idle_exit_polls=4)
    _, collections = partitions(pipeline)
    try:
        process._on_assign(process._consumer, collections)
        yield process
    finally:
        process._consumer.close()


def test_a_registration_in_the_current_schema_is_stored_as_it_came(pipeline: Pipeline) -> None:
    """Its bytes are kept, not encoded again. This record writes the uan's length (12, zigzag
    24) as a two-byte varint, which Avro readers accept and writers do not produce: only a kept
    copy still has it."""
    worker = registration()
    encoded = pipeline.codec.encode("WorkerRegistration", worker_registration_to_avro(worker))
    assert encoded[10] == 24
    padded = encoded[:10] + bytes([24 | 0x80, 0]) + encoded[11:]
    assert pipeline.codec.decode(padded, "WorkerRegistration") == pipeline.codec.decode(encoded)
    produce(pipeline, [], [], raw=[(pipeline.names.registry, worker.uan.encode(), padded)])
    totals = pipeline.run_locator()
    assert totals.registry == 1
    with psycopg.connect(pipeline.endpoints.postgres_dsn) as conn:
        stored = conn.execute("SELECT registration FROM workers WHERE uan = %s", (UAN,)).fetchone()
    assert stored == (padded,)


def test_members_end_with_the_uan_the_registry_path_decides(pipeline: Pipeline) -> None:
    """A member seen first in a batch is inserted with the uan of the registration naming it
    (no update after); where the registry path then decides otherwise, the member ends as it
    decides: an older registration re-delivered naming another member does not apply, and a
    registration deleted in the same batch leaves its member unregistered."""
    newer = replace(registration(), updated_at=datetime(2025, 2, 1, tzinfo=UTC))
    produce(pipeline, [newer], [])
    pipeline.run_locator()
    stale = replace(registration(), member_ref="MR-STALE")  # updated_at 2025-01-01: older
    second = registration("100000000002", "MR-0002")
    deleted = registration("100000000003", "MR-0003")
    produce(
        pipeline,
        [stale, second, deleted],
        [collection(1, "2025-04", HOME, member_ref="MR-STALE")],
        raw=[(pipeline.names.registry, deleted.uan.encode(), None)],
    )
    totals = pipeline.run_locator()
    assert totals.registry == 4
    with psycopg.connect(pipeline.endpoints.postgres_dsn) as conn:
        uans = dict(conn.execute("SELECT member_ref, uan FROM members").fetchall())
        workers = dict(conn.execute("SELECT uan, member_ref FROM workers").fetchall())
    assert uans == {MEMBER: UAN, "MR-STALE": None, "MR-0002": "100000000002", "MR-0003": None}
    assert workers == {UAN: MEMBER, "100000000002": "MR-0002"}
    assert worker_heads_astray(pipeline.endpoints.postgres_dsn) == []
