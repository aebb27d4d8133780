"""Thin builders for confluent-kafka clients. Nothing connects until a client is used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer
from pydantic import SecretStr

from eshram_locator.errors import RetriableError

SCRAM_MECHANISM = "SCRAM-SHA-512"


def producer(bootstrap: str, **overrides: Any) -> Producer:
    """Idempotent producer: retries never duplicate or reorder within a partition."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
    }
    config.update(overrides)
    return Producer(config)


def batch_consumer(bootstrap: str, group_id: str, **overrides: Any) -> Consumer:
    """A consumer whose offsets are stored by us, never automatically."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": 100,
        # Prefetch bounded per partition: the locator is slower than the fetcher, so whatever
        # the limits allow is held in memory (bench: 4 MB fetches and 200,000 queued messages
        # reached 650 MB of RSS; 8 MB per partition about 235 MB, 2 MB about 190 MB, at the
        # same throughput: a batch of 10,000 collections is under 2 MB).
        "max.partition.fetch.bytes": 1_048_576,
        "queued.min.messages": 20_000,
        "queued.max.messages.kbytes": 2_048,
        # With queues this small the fetcher is often at their limit, and librdkafka's default
        # wait before fetching again is 1 s: after an assignment with paused partitions the
        # first message came a second late, and a third of the bench's batches were cut short
        # by the consume timeout (a poll found the queue empty).
        "fetch.queue.backoff.ms": 50,
        "session.timeout.ms": 10_000,
        # A rebalance waits for every member to notice it on a heartbeat: a process that joins
        # waited about 2 s for its partitions at 1 s, 1.5 s at 250 ms.
        "heartbeat.interval.ms": 250,
    }
    config.update(overrides)
    return Consumer(config)


class DeliveryTracker:
    """Collects delivery reports; ``raise_if_failed`` after ``flush``."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failures: list[str] = []

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failures.append(f"{message.topic()}: {error.str()}")
        else:
            self.delivered += 1

    def raise_if_failed(self) -> None:
        if self.failures:
            failures, self.failures = self.failures, []
            raise RetriableError(f"{len(failures)} deliveries failed, first: {failures[0]}")


def flush_all(producer: Producer, timeout_s: float) -> None:
    remaining = producer.flush(timeout_s)
    if remaining:
        raise RetriableError(f"{remaining} messages not delivered within {timeout_s}s")


@dataclass(frozen=True, slots=True)
class KafkaCredentials:
    """A principal's SASL/SCRAM credentials; with ``ca_file`` the connection is TLS (SASL_SSL)."""

    username: str
    password: SecretStr
    ca_file: Path | None = None

    @property
    def security_protocol(self) -> str:
        return "SASL_PLAINTEXT" if self.ca_file is None else "SASL_SSL"


def security_config(credentials: KafkaCredentials | None) -> dict[str, Any]:
    """The librdkafka settings that authenticate as ``credentials`` (none: plaintext).

    Merge them into any client's configuration (``producer(bootstrap, **security_config(c))``).
    The result holds the password: pass it to a client, never to a log."""
    if credentials is None:
        return {}
    config: dict[str, Any] = {
        "security.protocol": credentials.security_protocol,
        "sasl.mechanism": SCRAM_MECHANISM,
        "sasl.username": credentials.username,
        "sasl.password": credentials.password.get_secret_value(),
    }
    if credentials.ca_file is not None:
        config["ssl.ca.location"] = str(credentials.ca_file)
    return config
