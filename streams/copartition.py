"""The fan-out joins two topics keyed by uan in one table: they must be co-partitioned. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from eshram_locator.errors import ConfigError


class NotCopartitionedError(ConfigError):
    """The registry and the location changes do not have the same number of partitions."""


def copartitioned_partitions(partitions: Mapping[str, int | None], topics: tuple[str, ...]) -> int:
    """The common partition count of ``topics``; ``ConfigError`` naming each count otherwise.

    Same count is necessary, not sufficient: both topics must also be written with the same
    partitioner (the locator and the registry CDC both use librdkafka's default).
    """
    missing = [topic for topic in topics if partitions.get(topic) is None]
    if missing:
        raise NotCopartitionedError(
            "topics missing (provision them first: eshram-locator topics provision): "
            + ", ".join(missing)
        )
    counts = {topic: partitions[topic] for topic in topics}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{topic} has {count}" for topic, count in counts.items())
        raise NotCopartitionedError(
            "the streams join these topics by uan, so they must have the same number of "
            f"partitions: {detail}"
        )
    count = next(iter(counts.values()))
    assert count is not None
    return count
