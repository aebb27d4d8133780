"""The locator process while the broker is away: it waits, it does not crash."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumers.locator import LocatorConfig, LocatorProcess, _transient
from eshram_locator.avro_codec import load_codec
from eshram_locator.topics import TopicNames

AVRO_DIR = Path(__file__).resolve().parents[2] / "avro"


@pytest.mark.parametrize(
    "code",
    [
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._PARTITION_EOF,
        KafkaError.NOT_COORDINATOR,
        KafkaError.LEADER_NOT_AVAILABLE,
    ],
)
def test_errors_of_a_broker_restart_are_waited_out(code: int) -> None:
    assert _transient(KafkaError(code))


@pytest.mark.parametrize(
    "error",
    [
        KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED),
        KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED),
        KafkaError(KafkaError._TRANSPORT, fatal=True),
    ],
)
def test_authorisation_and_fatal_errors_end_the_process(error: KafkaError) -> None:
    assert not _transient(error)


class _BrokerAway:
    def get_watermark_offsets(self, partition: TopicPartition, **kwargs: Any) -> tuple[int, int]:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))


def test_with_the_broker_away_the_locator_is_not_caught_up() -> None:
    process = LocatorProcess(
        consumer=_BrokerAway(),  # type: ignore[arg-type]
        conninfo="",
        codec=load_codec(AVRO_DIR),
        locator=None,  # type: ignore[arg-type]
        relay=None,  # type: ignore[arg-type]
        config=LocatorConfig("g", TopicNames(""), 10, 0.1, timedelta(days=1), idle_exit_polls=1),
    )
    process._positions[("t", 0)] = 5
    assert process._caught_up() is False
