"""Regression: topics written by librdkafka (the locator, PDS producers) with lz4 or zstd are
readable by the aiokafka consumer Faust runs on. aiokafka decompresses with ``cramjam``, not
with the ``lz4``/``zstandard`` packages: without it the worker crashes on the first batch."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.codec import has_lz4, has_zstd
from confluent_kafka import Producer

from tests.conftest import TopicFactory

pytestmark = pytest.mark.integration


def test_the_codecs_are_installed() -> None:
    assert has_lz4()
    assert has_zstd()


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_librdkafka_compressed_topic_is_readable_by_aiokafka(
    kafka_bootstrap: str, unique_topic: TopicFactory, compression: str
) -> None:
    topic = unique_topic(partitions=1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "compression.type": compression})
    sent = [(f"k{n}".encode(), f"value {n} ".encode() * 50) for n in range(200)]
    for key, value in sent:
        producer.produce(topic, value, key)
    assert producer.flush(30) == 0

    async def read() -> list[tuple[bytes | None, bytes | None]]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            got: list[tuple[bytes | None, bytes | None]] = []
            while len(got) < len(sent):
                batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
                for records in batches.values():
                    got.extend((record.key, record.value) for record in records)
            return got
        finally:
            await consumer.stop()

    assert asyncio.run(read()) == sent
