"""Topic names of contract.md. Pure constants and name builders; provisioning is in kafka/."""

from __future__ import annotations

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
