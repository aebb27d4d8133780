"""The locator's batch decoding (``LocatorProcess._read``) with the compiled batch reader
(``intake.fast_batch_reader``, ``_collection_reader.read_collections``) against the loop it
replaces.

``previous_read`` below is the per-message loop as it was before the compiled batch reader: the
oracle. Every path ``_read`` can take must give the same ``_Batch`` (registry updates, the
collections grouped by member in the same order, the count, the dead letters, the next offsets
in the same order, the error counts), or raise the same error: the compiled batch reader, the
per-message compiled readers alone (``_read_batch`` None) and no extension at all.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.locator import (
    LocatorConfig,
    LocatorProcess,
    _Batch,
    _timestamp,
    _transient,
)
from eshram_locator import intake
from eshram_locator.avro_codec import load_codec
from eshram_locator.domain.aadhaar import verhoeff_check_digit
from eshram_locator.domain.model import RationCollection, WorkerRegistration
from eshram_locator.errors import PermanentRecordError, RetriableError
from eshram_locator.intake import (
    RawMessage,
    dead_letter,
    fast_batch_reader,
    read_collection,
    read_registration,
)
from eshram_locator.locating import RegistryUpdate, by_member
from eshram_locator.postgres.store import OutboxRow
from eshram_locator.records import ration_collection_to_avro, to_avro
from eshram_locator.simulator.config import SimulationConfig
from eshram_locator.simulator.population import simulate
from eshram_locator.topics import TopicNames
from tests.fuzz_inputs import COLLECTION, fuzz_message

AVRO_DIR = Path(__file__).resolve().parents[2] / "avro"
CODEC = load_codec(AVRO_DIR)
NAMES = TopicNames("test.")
COLLECTIONS, REGISTRY = NAMES.collections, NAMES.registry
NUMBER = "23456789012" + verhoeff_check_digit("23456789012")
EPOCH_MS = 1_745_000_000_000


def process() -> LocatorProcess:
    return LocatorProcess(
        consumer=None,  # type: ignore[arg-type]
        conninfo="",
        codec=CODEC,
        locator=None,  # type: ignore[arg-type]
        relay=None,  # type: ignore[arg-type]
        config=LocatorConfig("g", NAMES, 10_000, 0.1, timedelta(days=1)),
    )


def per_message() -> LocatorProcess:
    """The compiled readers, one message at a time."""
    made = process()
    made._read_batch = None
    return made


def uncompiled() -> LocatorProcess:
    """As where the extension is not built."""
    made = per_message()
    made._read_fast = made._read_registration_fast = None
    return made


def previous_read(self: LocatorProcess, messages: list[Message]) -> _Batch:
    """LocatorProcess._read before the compiled batch reader, unchanged."""
    registry: list[RegistryUpdate] = []
    collections: list[RationCollection] = []
    rejected: list[OutboxRow] = []
    next_offsets: dict[tuple[str, int], int] = {}
    by_error: dict[str, int] = {}
    collections_topic, codec = self._config.topics.collections, self._codec
    read_fast, current_registration = self._read_fast, self._current_registration
    read_registration_fast = self._read_registration_fast
    for message in messages:
        error = message.error()
        if error is not None:
            if _transient(error):
                continue
            raise RetriableError(f"consumer error: {error.str()}")
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            raise RetriableError("consumed a message without topic, partition or offset")
        if topic == collections_topic:
            if read_fast is not None:
                collection = read_fast(message.value(), message.key())
                if collection is not None:
                    collections.append(collection)
                    next_offsets[(topic, partition)] = offset + 1
                    continue
        elif read_registration_fast is not None:
            value = message.value()
            registration = read_registration_fast(value, message.key())
            if registration is not None:
                registry.append(
                    RegistryUpdate(registration.uan, registration, _timestamp(message), value)
                )
                next_offsets[(topic, partition)] = offset + 1
                continue
        headers = message.headers()
        raw = RawMessage(
            topic,
            partition,
            offset,
            message.key(),
            message.value(),
            tuple((k, v or b"") for k, v in headers) if headers else (),
        )
        try:
            if topic == collections_topic:
                collections.append(read_collection(codec, raw))
            else:
                key = (raw.key or b"").decode("utf-8", errors="replace")
                registration = read_registration(codec, raw)
                value = raw.value
                registry.append(
                    RegistryUpdate(
                        key,
                        registration,
                        _timestamp(message),
                        value if value and value.startswith(current_registration) else None,
                    )
                )
        except PermanentRecordError as problem:
            rejected.append(dead_letter(raw, problem))
            by_error[problem.error_class] = by_error.get(problem.error_class, 0) + 1
        next_offsets[(topic, partition)] = offset + 1
    return _Batch(
        len(messages),
        registry,
        by_member(collections),
        len(collections),
        rejected,
        next_offsets,
        by_error,
    )


def same(one: _Batch, other: _Batch) -> None:
    assert one.messages == other.messages
    assert one.registry == other.registry
    assert list(one.collections.items()) == list(other.collections.items())
    assert one.collection_count == other.collection_count
    assert one.rejected == other.rejected
    assert list(one.next_offsets.items()) == list(other.next_offsets.items())
    assert one.by_error == other.by_error


PATHS: list[Callable[[], LocatorProcess]] = [process, per_message, uncompiled]


def agrees(messages: list[Message]) -> _Batch:
    """Every path reads the batch as the previous loop did; the compiled batch's result."""
    expected = previous_read(uncompiled(), messages)
    results = [make()._read(messages) for make in PATHS]
    for result in results:
        same(result, expected)
    return results[0]


def raises_alike(messages: list[Message]) -> str:
    with pytest.raises(RetriableError) as expected:
        previous_read(uncompiled(), messages)
    for make in PATHS:
        with pytest.raises(RetriableError) as raised:
            make()._read(messages)
        assert str(raised.value) == str(expected.value)
    return str(expected.value)


# --- messages --------------------------------------------------------------------------------


def message(
    topic: str | None,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    value: bytes | None,
    **extra: Any,
) -> Message:
    fields: dict[str, Any] = {"timestamp": (TIMESTAMP_CREATE_TIME, EPOCH_MS + (offset or 0))}
    for name, given_value in (
        ("topic", topic),
        ("partition", partition),
        ("offset", offset),
        ("key", key),
        ("value", value),
    ):
        if given_value is not None:
            fields[name] = given_value
    return Message(**fields, **extra)


def encode(record: Any) -> bytes:
    name, datum = to_avro(record)
    return CODEC.encode(name, datum)


@cache
def simulated() -> tuple[list[RationCollection], list[WorkerRegistration]]:
    messages = list(simulate(SimulationConfig(workers=300, months=4, seed=11)).messages())
    return (
        [m.value for m in messages if isinstance(m.value, RationCollection)],
        [m.value for m in messages if isinstance(m.value, WorkerRegistration)],
    )


class Offsets:
    """The next offset of each partition, as a broker hands them out."""

    def __init__(self) -> None:
        self.next: dict[tuple[str, int], int] = {}

    def take(self, topic: str, partition: int) -> int:
        offset = self.next.get((topic, partition), 100 * partition)
        self.next[(topic, partition)] = offset + 1
        return offset


def collection_message(
    offsets: Offsets, collection: RationCollection, partition: int = 0, **extra: Any
) -> Message:
    return message(
        COLLECTIONS,
        partition,
        offsets.take(COLLECTIONS, partition),
        collection.member_ref.encode(),
        encode(collection),
        **extra,
    )


def registry_message(
    offsets: Offsets, registration: WorkerRegistration, partition: int = 0
) -> Message:
    return message(
        REGISTRY,
        partition,
        offsets.take(REGISTRY, partition),
        registration.uan.encode(),
        encode(registration),
    )


def mixed_batch() -> list[Message]:
    """Collections of several partitions, the registry, repeated transactions, records only
    the general path reads, dead letters and transient errors."""
    collections, registrations = simulated()
    offsets = Offsets()
    batch = [collection_message(offsets, c, i % 3) for i, c in enumerate(collections[:40])]
    twice = collections[5]
    earlier = dataclasses.replace(twice, transacted_at=twice.transacted_at - timedelta(hours=1))
    datum = ration_collection_to_avro(COLLECTION)
    batch += [
        registry_message(offsets, registrations[0], 0),
        registry_message(offsets, registrations[1], 1),
        message(REGISTRY, 1, offsets.take(REGISTRY, 1), registrations[2].uan.encode(), None),
        collection_message(offsets, collections[3], 1),  # the same record twice
        collection_message(offsets, earlier, 2),  # the same transaction, smaller: it counts
        # what the general path reads
        message(
            COLLECTIONS,
            0,
            offsets.take(COLLECTIONS, 0),
            COLLECTION.member_ref.encode(),
            CODEC.encode("RationCollection", {**datum, "ration_card_id": "UP-१२३"}),
            headers=[("trace", b"t-1")],
        ),
        # dead letters: undecodable, an Aadhaar number, a registry key that is not a uan
        message(COLLECTIONS, 1, offsets.take(COLLECTIONS, 1), b"MR-1", b"\x00\x01junk"),
        message(
            COLLECTIONS,
            2,
            offsets.take(COLLECTIONS, 2),
            COLLECTION.member_ref.encode(),
            CODEC.encode("RationCollection", {**datum, "fps_id": f"FPS{NUMBER}"}),
            headers=[("aadhaar", NUMBER.encode())],
        ),
        message(REGISTRY, 0, offsets.take(REGISTRY, 0), b"not-a-uan", b"\x01"),
        message(COLLECTIONS, 0, None, None, None, error=KafkaError(KafkaError._PARTITION_EOF)),
        message(None, None, None, None, None, error=KafkaError(KafkaError._TRANSPORT)),
    ]
    batch += [collection_message(offsets, c, i % 2) for i, c in enumerate(collections[40:60])]
    return batch


# --- the same batches --------------------------------------------------------------------------


def test_the_locator_reads_batches_with_the_compiled_reader() -> None:
    assert process()._read_batch is not None, (
        "the C extension eshram_locator._collection_reader is not built"
    )


def test_without_the_extension_the_locator_reads_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake, "_collection_reader", None)
    made = process()
    assert made._read_batch is None
    assert made._read_fast is None
    assert made._read_registration_fast is None
    batch = mixed_batch()
    same(made._read(batch), previous_read(made, batch))


def test_a_mixed_batch_reads_as_before() -> None:
    batch = mixed_batch()
    read = agrees(batch)
    assert read.collection_count == 40 + 2 + 1 + 20
    assert len(read.registry) == 3
    assert sorted(read.by_error) == ["raw_aadhaar", "unknown_schema", "validation_error"]
    assert len(read.next_offsets) == 3 + 2


def test_the_smallest_content_of_a_transaction_seen_twice_counts() -> None:
    collections, _ = simulated()
    offsets = Offsets()
    first = collections[0]
    smaller = dataclasses.replace(first, transacted_at=first.transacted_at - timedelta(hours=1))
    other_source = dataclasses.replace(collections[1], source="XX-PDS")
    batch = [
        collection_message(offsets, c, 0)
        for c in (first, collections[1], collections[2], smaller, other_source, collections[2])
    ]
    grouped = agrees(batch).collections
    assert smaller in grouped[first.member_ref]
    assert first not in grouped[first.member_ref]
    assert other_source in grouped[other_source.member_ref]
    assert grouped[collections[2].member_ref].count(collections[2]) == 1


def test_the_compiled_batch_groups_by_member_itself_when_no_transaction_differs() -> None:
    collections, _ = simulated()
    offsets = Offsets()
    batch = [collection_message(offsets, c, i % 4) for i, c in enumerate(collections[:300])]
    batch += [collection_message(offsets, collections[7], 1)]  # the same bytes again
    read_batch = fast_batch_reader(CODEC)
    assert read_batch is not None
    compiled = read_batch(batch, COLLECTIONS)
    assert compiled is not None
    flat, grouped, next_offsets, left = compiled
    assert left == []
    assert grouped is not None
    assert flat == [*collections[:300], collections[7]]
    assert list(grouped.items()) == list(by_member(flat).items())
    assert next_offsets == {(COLLECTIONS, p): 100 * p + 75 + (p == 1) for p in range(4)}
    agrees(batch)


def test_messages_the_compiled_batch_leaves_are_read_in_their_place() -> None:
    """A collection only the general path reads, between others of the same member."""
    collections, _ = simulated()
    offsets = Offsets()
    first = collections[0]
    unusual = dataclasses.replace(first, transaction_id="T-२", fps_id="FPS-१")
    later = dataclasses.replace(first, transaction_id="T-3")
    batch = [
        collection_message(offsets, first),
        collection_message(offsets, collections[1]),
        collection_message(offsets, unusual),
        collection_message(offsets, later),
    ]
    read = agrees(batch)
    assert read.collections[first.member_ref] == [first, unusual, later]


def test_offsets_follow_each_partition_wherever_its_messages_are() -> None:
    collections, registrations = simulated()
    offsets = Offsets()
    batch = []
    for i, partition in enumerate([2, 0, 2, 1, 0, 0, 2, 1]):
        batch.append(collection_message(offsets, collections[i], partition))
        batch.append(registry_message(offsets, registrations[i], partition % 2))
    read = agrees(batch)
    assert list(read.next_offsets) == [
        (COLLECTIONS, 2),
        (REGISTRY, 0),
        (COLLECTIONS, 0),
        (COLLECTIONS, 1),
        (REGISTRY, 1),
    ]


def test_an_offset_lower_than_before_is_kept_as_the_loop_kept_it() -> None:
    """Not what a broker hands out; the loop kept the last one, and so does the batch."""
    collections, _ = simulated()
    batch = [
        message(COLLECTIONS, 0, offset, c.member_ref.encode(), encode(c))
        for offset, c in zip([10, 12, 11], collections, strict=False)
    ]
    assert agrees(batch).next_offsets == {(COLLECTIONS, 0): 12}


def test_errors_and_messages_without_a_position_raise_as_before() -> None:
    collections, _ = simulated()
    offsets = Offsets()
    good = [collection_message(offsets, c) for c in collections[:3]]
    fatal = message(None, None, None, None, None, error=KafkaError(KafkaError._FATAL, fatal=True))
    assert "consumer error" in raises_alike([*good, fatal, *good])
    nowhere = message(COLLECTIONS, 0, None, b"k", b"v")
    assert "without topic" in raises_alike([*good, nowhere])
    assert agrees([]).messages == 0


class _Duck:
    """A message of another type than confluent_kafka's, whose methods are Python code."""

    def __init__(self, wrapped: Message, topic: object = None) -> None:
        self._wrapped = wrapped
        self._topic = wrapped.topic() if topic is None else topic

    def error(self) -> KafkaError | None:
        return self._wrapped.error()

    def topic(self) -> object:
        return self._topic

    def partition(self) -> int | None:
        return self._wrapped.partition()

    def offset(self) -> int | None:
        return self._wrapped.offset()

    def key(self) -> bytes | None:
        return self._wrapped.key()

    def value(self) -> bytes | None:
        return self._wrapped.value()

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._wrapped.headers()

    def timestamp(self) -> tuple[int, int]:
        return self._wrapped.timestamp()


class _Topic(str):
    __slots__ = ()


def test_other_message_types_are_read_as_before() -> None:
    batch = mixed_batch()
    ducks: list[Any] = [_Duck(m) for m in batch]
    agrees(ducks)
    mixed: list[Any] = [m if i % 2 else _Duck(m) for i, m in enumerate(batch)]
    agrees(mixed)
    # a topic of a str subclass: the compiled batch leaves the whole batch to the loop
    odd: list[Any] = [*batch[:5], _Duck(batch[5], _Topic(COLLECTIONS)), *batch[6:]]
    read_batch = fast_batch_reader(CODEC)
    assert read_batch is not None
    assert read_batch(odd, COLLECTIONS) is None
    agrees(odd)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
@given(rng=st.randoms(use_true_random=False), size=st.integers(0, 60))
def test_any_batch_reads_as_before(rng: random.Random, size: int) -> None:
    """Simulated records, copies, repeated transactions with other contents, hostile records
    (tests/fuzz_inputs.py) and errors, in any order over a few partitions."""
    collections, registrations = simulated()
    offsets = Offsets()
    batch: list[Message] = []
    for _ in range(size):
        kind = rng.randrange(10)
        partition = rng.randrange(3)
        if kind < 4:
            batch.append(collection_message(offsets, rng.choice(collections), partition))
        elif kind == 4 and batch:
            copied = rng.choice(batch)
            batch.append(copied)
        elif kind == 5:
            base = rng.choice(collections)
            changed = dataclasses.replace(
                base,
                transacted_at=base.transacted_at + timedelta(minutes=rng.randint(-90, 90)),
                source=rng.choice([base.source, "XX-PDS"]),
            )
            batch.append(collection_message(offsets, changed, partition))
        elif kind == 6:
            batch.append(registry_message(offsets, rng.choice(registrations), partition))
        elif kind in (7, 8):
            raw = fuzz_message(rng, CODEC, NAMES)
            batch.append(
                message(
                    raw.topic,
                    partition,
                    offsets.take(raw.topic, partition),
                    raw.key,
                    raw.value,
                    headers=list(raw.headers) or None,
                )
            )
        else:
            batch.append(message(COLLECTIONS, partition, None, None, None, error=KafkaError(-191)))
    agrees(batch)


# --- references --------------------------------------------------------------------------------


def _shared(batch: list[Message], first: list[RationCollection]) -> Iterator[object]:
    """Objects each read refers to: the messages, their parts, the shared parts of the
    collections, the enum members."""
    yield COLLECTIONS
    for m in batch:
        yield m
        yield m.value()
        yield m.key()
    for collection in first:
        yield collection.fps_location
        yield collection.items
        yield collection.auth_mode
        yield collection.portability


def test_reading_batches_leaks_no_reference() -> None:
    batch = mixed_batch()
    read_batch = fast_batch_reader(CODEC)
    assert read_batch is not None
    first = read_batch(batch, COLLECTIONS)
    assert first is not None
    shared = list(_shared(batch, first[0]))
    gc.collect()
    before = [sys.getrefcount(value) for value in shared]
    tracemalloc.start()
    try:
        read_batch(batch, COLLECTIONS)
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(300):
            read_batch(batch, COLLECTIONS)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [sys.getrefcount(value) for value in shared] == before
    assert end - start < 20_000


def test_the_batch_reader_checks_its_arguments() -> None:
    read_batch = fast_batch_reader(CODEC)
    assert read_batch is not None
    with pytest.raises(TypeError):
        read_batch(tuple(mixed_batch()), COLLECTIONS)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        read_batch([], b"topic")  # type: ignore[arg-type]


def test_a_message_error_is_raised_as_it_is() -> None:
    class Broken(_Duck):
        def offset(self) -> int | None:
            raise ValueError("broken")

    read_batch = fast_batch_reader(CODEC)
    assert read_batch is not None
    with pytest.raises(ValueError, match="broken"):
        read_batch([Broken(mixed_batch()[0])], COLLECTIONS)  # type: ignore[list-item]


def test_timestamps_of_the_registry_come_from_the_messages() -> None:
    """The oracle depends on it: a registry message's time is its Kafka timestamp."""
    _, registrations = simulated()
    read = agrees([registry_message(Offsets(), registrations[0])])
    assert read.registry[0].recorded_at == datetime.fromtimestamp(EPOCH_MS / 1000, UTC)
