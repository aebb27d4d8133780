"""Topic specs: every topic of contract.md with the partitions and configs that matter."""

from __future__ import annotations

import pytest

from eshram_locator import topics
from eshram_locator.kafka.topics import TopicSpec, topic_specs


@pytest.fixture
def specs() -> dict[str, TopicSpec]:
    listed = topic_specs(collections_partitions=12, topic_partitions=6, replication_factor=1)
    by_name = {spec.name: spec for spec in listed}
    assert len(by_name) == len(listed), "a topic is specified twice"
    return by_name


def test_every_contract_topic_is_specified(specs: dict[str, TopicSpec]) -> None:
    expected = {
        topics.COLLECTIONS,
        topics.REGISTRY,
        topics.LOCATION_CHANGES,
        topics.ADDRESS_UPDATE_REQUESTS,
        topics.MIGRATION_FLOWS,
        topics.SCHEMAS,
        *topics.STATE_TOPICS,
        topics.dlq(topics.COLLECTIONS),
        topics.dlq(topics.REGISTRY),
        topics.dlq(topics.LOCATION_CHANGES),
    }
    assert set(specs) == expected
    assert len(specs) == 45


def test_thirty_six_state_topics(specs: dict[str, TopicSpec]) -> None:
    state_topics = [name for name in specs if name.startswith("eshram.location-changes.state.")]
    assert len(state_topics) == 36
    assert "eshram.location-changes.state.09" in specs  # Uttar Pradesh
    assert "eshram.location-changes.state.27" in specs  # Maharashtra
    assert "eshram.location-changes.state.25" not in specs  # merged into 38 in 2020


def test_partitions(specs: dict[str, TopicSpec]) -> None:
    assert specs[topics.COLLECTIONS].partitions == 12
    assert specs[topics.SCHEMAS].partitions == 1
    others = [
        spec for name, spec in specs.items() if name not in (topics.COLLECTIONS, topics.SCHEMAS)
    ]
    assert {spec.partitions for spec in others} == {6}


def test_partitions_and_replication_follow_arguments() -> None:
    listed = topic_specs(collections_partitions=24, topic_partitions=2, replication_factor=3)
    by_name = {spec.name: spec for spec in listed}
    assert by_name[topics.COLLECTIONS].partitions == 24
    assert by_name[topics.REGISTRY].partitions == 2
    assert by_name[topics.SCHEMAS].partitions == 1
    assert {spec.replication_factor for spec in listed} == {3}


def test_compaction(specs: dict[str, TopicSpec]) -> None:
    compacted = {name for name, spec in specs.items() if spec.cleanup_policy == "compact"}
    assert compacted == {topics.REGISTRY, topics.SCHEMAS}
    assert all(spec.config["cleanup.policy"] in ("compact", "delete") for spec in specs.values())


def test_dead_letter_topics(specs: dict[str, TopicSpec]) -> None:
    dlqs = {name for name in specs if name.endswith(topics.DLQ_SUFFIX)}
    assert dlqs == {
        "pds.ration-collections.v1.dlq",
        "eshram.worker-registry.v1.dlq",
        "eshram.location-changes.v1.dlq",
    }
    for name in dlqs:
        assert specs[name].cleanup_policy == "delete"  # a DLQ keeps every record, not the last
        assert int(specs[name].config["retention.ms"]) >= 7 * 24 * 3600 * 1000


def test_specs_do_not_share_config_dicts() -> None:
    first, second = topic_specs(12, 6, 1)[:2]
    assert first.config is not second.config


def test_prefix_goes_in_front_of_every_name() -> None:
    listed = topic_specs(12, 6, 1, prefix="demo-1.")
    assert all(spec.name.startswith("demo-1.") for spec in listed)
    assert "demo-1.eshram.worker-registry.v1.dlq" in {spec.name for spec in listed}
