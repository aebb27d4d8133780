"""Every topic of contract.md as a spec, and idempotent provisioning of them.

``provision_topics`` creates what is missing and leaves what exists alone. It never alters an
existing topic: one with fewer partitions than specified, or another cleanup policy, is an
operator's decision (partitions change key placement, compaction changes retention), so it fails
with ``TopicMismatchError`` naming every difference instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from eshram_locator import topics
from eshram_locator.errors import ConfigError, LocatorError

log = structlog.get_logger()

COMPACT = {"cleanup.policy": "compact"}
DELETE = {"cleanup.policy": "delete"}
DLQ_RETENTION_MS = str(30 * 24 * 3600 * 1000)  # a month to look at a bad record and replay it
_ADMIN_TIMEOUT_S = 30.0
_METADATA_WAIT_S = 10.0


class TopicMismatchError(ConfigError):
    """An existing topic differs from its spec in a way provisioning must not change."""


class TopicProvisioningError(LocatorError):
    """The broker refused or failed to create or describe a topic."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    config: dict[str, str] = field(default_factory=dict)

    @property
    def cleanup_policy(self) -> str:
        return self.config.get("cleanup.policy", "delete")


@dataclass(frozen=True, slots=True)
class ProvisionReport:
    created: tuple[str, ...]
    unchanged: tuple[str, ...]


def topic_specs(
    collections_partitions: int, topic_partitions: int, replication_factor: int, prefix: str = ""
) -> list[TopicSpec]:
    """The topics of contract.md with their partitions and the configs that matter.

    ``prefix`` goes in front of every name (empty in production; isolates tests and demos).
    """

    def spec(name: str, partitions: int, config: dict[str, str]) -> TopicSpec:
        return TopicSpec(prefix + name, partitions, replication_factor, dict(config))

    dlq_config = {**DELETE, "retention.ms": DLQ_RETENTION_MS}
    specs = [
        spec(topics.COLLECTIONS, collections_partitions, DELETE),
        spec(topics.REGISTRY, topic_partitions, COMPACT),
        spec(topics.LOCATION_CHANGES, topic_partitions, DELETE),
        spec(topics.ADDRESS_UPDATE_REQUESTS, topic_partitions, DELETE),
        spec(topics.MIGRATION_FLOWS, topic_partitions, DELETE),
        *(spec(name, topic_partitions, DELETE) for name in topics.STATE_TOPICS),
        spec(topics.SCHEMAS, 1, COMPACT),
        *(
            spec(topics.dlq(name), topic_partitions, dlq_config)
            for name in (*topics.INPUT_TOPICS, topics.LOCATION_CHANGES)
        ),
    ]
    return specs


def provision_topics(admin: AdminClient, specs: Sequence[TopicSpec]) -> ProvisionReport:
    """Create the missing topics; check (never alter) the existing ones."""
    present = _list_topics(admin)
    created = _create(admin, [spec for spec in specs if spec.name not in present])
    _wait_listed(admin, created)  # usable by producers and consumers once we return
    # Topics that existed, or that another provisioner created first, must match their spec.
    _check(admin, [spec for spec in specs if spec.name not in created])
    unchanged = tuple(spec.name for spec in specs if spec.name not in created)
    log.info("topics.provisioned", created=len(created), unchanged=len(unchanged))
    return ProvisionReport(created=created, unchanged=unchanged)


def _list_topics(admin: AdminClient) -> dict[str, int]:
    """Topic name -> partition count."""
    try:
        metadata = admin.list_topics(timeout=_ADMIN_TIMEOUT_S)
    except KafkaException as error:
        raise TopicProvisioningError(f"could not list topics: {error}") from error
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def _create(admin: AdminClient, specs: Sequence[TopicSpec]) -> tuple[str, ...]:
    """Create these topics; the names created (a topic that already exists is not one)."""
    if not specs:
        return ()
    futures = admin.create_topics(
        [
            NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=spec.replication_factor,
                config=dict(spec.config),
            )
            for spec in specs
        ],
        operation_timeout=_ADMIN_TIMEOUT_S,
        request_timeout=_ADMIN_TIMEOUT_S,
    )
    created: set[str] = set()
    failures: list[str] = []
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as error:
            kafka_error = error.args[0] if error.args else None
            if isinstance(kafka_error, KafkaError) and (
                kafka_error.code() == KafkaError.TOPIC_ALREADY_EXISTS
            ):
                continue  # another provisioner (or stale metadata) won the race: checked later
            failures.append(f"{name}: {error}")
        else:
            created.add(name)
    if failures:
        raise TopicProvisioningError("could not create topics: " + "; ".join(failures))
    return tuple(spec.name for spec in specs if spec.name in created)


def _wait_listed(admin: AdminClient, names: Sequence[str]) -> dict[str, int]:
    """Topic name -> partitions once every name is listed (metadata lags creation a little)."""
    partitions = _list_topics(admin)
    deadline = time.monotonic() + _METADATA_WAIT_S
    while any(name not in partitions for name in names) and time.monotonic() < deadline:
        time.sleep(0.1)
        partitions = _list_topics(admin)
    absent = [name for name in names if name not in partitions]
    if absent:
        raise TopicProvisioningError(
            f"topics created or reported as existing are not listed after "
            f"{_METADATA_WAIT_S:.0f} s: {', '.join(absent)}"
        )
    return partitions


def _check(admin: AdminClient, specs: Sequence[TopicSpec]) -> None:
    if not specs:
        return
    partitions = _wait_listed(admin, [spec.name for spec in specs])
    problems = [
        f"{spec.name} has {partitions[spec.name]} partitions, the spec asks for {spec.partitions}"
        for spec in specs
        if partitions[spec.name] < spec.partitions
    ]
    policies = _cleanup_policies(admin, [spec.name for spec in specs])
    problems += [
        f"{spec.name} has cleanup.policy={policies[spec.name]}, "
        f"the spec asks for {spec.cleanup_policy}"
        for spec in specs
        if _policy_set(policies[spec.name]) != _policy_set(spec.cleanup_policy)
    ]
    if problems:
        raise TopicMismatchError(
            "existing topics differ from their specs (not altered; fix them by hand): "
            + "; ".join(problems)
        )


def _cleanup_policies(admin: AdminClient, names: Sequence[str]) -> dict[str, str]:
    if not names:
        return {}
    futures = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, name) for name in names],
        request_timeout=_ADMIN_TIMEOUT_S,
    )
    policies: dict[str, str] = {}
    for resource, future in futures.items():
        try:
            entries = future.result()
        except KafkaException as error:
            raise TopicProvisioningError(
                f"could not describe topic {resource.name}: {error}"
            ) from error
        entry = entries.get("cleanup.policy")
        policies[resource.name] = str(entry.value) if entry is not None else "delete"
    return policies


def _policy_set(policy: str) -> frozenset[str]:
    return frozenset(part.strip() for part in policy.split(",") if part.strip())
