"""Producing to the contract's topics: the schema topic, and simulated input for the demo,
the tests and the benchmarks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import Producer

from eshram_locator.avro_codec import AvroCodec, schema_topic_records
from eshram_locator.kafka.clients import DeliveryTracker, flush_all
from eshram_locator.records import to_avro
from eshram_locator.simulator.population import SimMessage
from eshram_locator.topics import COLLECTIONS, REGISTRY, TopicNames


def publish_schemas(producer: Producer, codec: AvroCodec, names: TopicNames) -> int:
    """Every schema version we know, to the compacted schema topic (key: fingerprint hex)."""
    tracker = DeliveryTracker()
    records = schema_topic_records(codec.catalog)
    for key, value in records:
        producer.produce(names.schemas, value, key.encode(), on_delivery=tracker)
    flush_all(producer, 30)
    tracker.raise_if_failed()
    return len(records)


@dataclass(slots=True)
class PublishCounts:
    by_topic: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_topic.values())


def publish_simulation(
    producer: Producer,
    codec: AvroCodec,
    names: TopicNames,
    messages: Iterable[SimMessage],
    progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
) -> PublishCounts:
    """Encode and produce simulated messages in order; waits until all are delivered."""
    topic_names = {COLLECTIONS: names.collections, REGISTRY: names.registry}
    counts = PublishCounts()
    tracker = DeliveryTracker()
    produce = producer.produce
    pending = 0
    for message in messages:
        topic = topic_names[message.topic]
        value = None
        if message.value is not None:
            record_name, datum = to_avro(message.value)
            value = codec.encode(record_name, datum, topic=topic)
        while True:
            try:
                produce(topic, value, message.key.encode(), on_delivery=tracker)
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
        counts.by_topic[topic] = counts.by_topic.get(topic, 0) + 1
        pending += 1
        if pending >= progress_every:
            producer.poll(0)
            if progress is not None:
                progress(pending)
            pending = 0
    flush_all(producer, 120)
    tracker.raise_if_failed()
    if progress is not None and pending:
        progress(pending)
    return counts
