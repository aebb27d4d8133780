"""Topic names of contract.md. Pure constants and name builders; provisioning is in kafka/.

``TopicNames`` applies an optional prefix (setting ``LOCATOR_TOPIC_PREFIX``, empty in
production) so that tests and parallel demos can run isolated on one broker.
"""

from __future__ import annotations

from dataclasses import dataclass

from eshram_locator.geography import STATES

COLLECTIONS = "pds.ration-collections.v1"
REGISTRY = "eshram.worker-registry.v1"
LOCATION_CHANGES = "eshram.location-changes.v1"
ADDRESS_UPDATE_REQUESTS = "eshram.address-update-requests.v1"
MIGRATION_FLOWS = "eshram.migration-flows.v1"
SCHEMAS = "locator.schemas"

INPUT_TOPICS = (COLLECTIONS, REGISTRY)
DLQ_SUFFIX = ".dlq"


def dlq(topic: str) -> str:
    return f"{topic}{DLQ_SUFFIX}"


def state_topic(state_lgd: int) -> str:
    """eshram.location-changes.state.<SS>, SS the two-digit state LGD code."""
    return f"eshram.location-changes.state.{state_lgd:02d}"


STATE_TOPICS = tuple(state_topic(state.lgd) for state in STATES)


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The contract's topic names, each with ``prefix`` in front."""

    prefix: str = ""

    @property
    def collections(self) -> str:
        return self.prefix + COLLECTIONS

    @property
    def registry(self) -> str:
        return self.prefix + REGISTRY

    @property
    def location_changes(self) -> str:
        return self.prefix + LOCATION_CHANGES

    @property
    def address_update_requests(self) -> str:
        return self.prefix + ADDRESS_UPDATE_REQUESTS

    @property
    def migration_flows(self) -> str:
        return self.prefix + MIGRATION_FLOWS

    @property
    def schemas(self) -> str:
        return self.prefix + SCHEMAS

    @property
    def inputs(self) -> tuple[str, str]:
        return (self.collections, self.registry)

    def state(self, state_lgd: int) -> str:
        return self.prefix + state_topic(state_lgd)

    @property
    def states(self) -> tuple[str, ...]:
        return tuple(self.prefix + name for name in STATE_TOPICS)

    @staticmethod
    def dlq(topic: str) -> str:
        return dlq(topic)
