"""The typed edge: fastavro dicts <-> the domain dataclasses of ``domain.model``.

``*_from_avro`` take the dict ``AvroCodec.decode`` returns (already shaped by the schema) and
check what the schema cannot (``ValidationError`` with a reason). ``*_to_avro`` build the dict
``AvroCodec.encode`` takes; the writers of input records (``RationCollection``,
``WorkerRegistration``) check nothing, so the simulator can also produce bad records on purpose;
the writers of the service's own outputs reject ids that are not UUIDs (the schema says uuid).

The collections stream decodes ~100k records/s through ``ration_collection_from_avro``: plain
constructors, precompiled checks, dict lookups for the enums, shared Location and item instances.

Reasons name the field and the rule, never the value (a value could be personal data).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from eshram_locator.domain.model import (
    AddressUpdateRequested,
    AuthMode,
    ChangeType,
    CollectionItem,
    Evidence,
    Location,
    LocationChanged,
    Migration,
    MigrationFlow,
    Portability,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.errors import ValidationError
from eshram_locator.geography import STATES_BY_LGD

MAX_ITEMS: Final = 100
INTERN_LIMIT: Final = 200_000
"""Most entries of the shared-instance caches (Locations of shops, standard ration items)."""

_MONTH = re.compile(r"20[0-9]{2}-(?:0[1-9]|1[0-2])")
_UAN = re.compile(r"[0-9]{12}")
_AUTH_MODES: Final = {mode.value: mode for mode in AuthMode}
_PORTABILITY: Final = {value.value: value for value in Portability}
_CHANGE_TYPES: Final = {value.value: value for value in ChangeType}
_MIGRATIONS: Final = {value.value: value for value in Migration}

Avro = dict[str, Any]

# Frozen dataclasses cost ~1 us each to construct; shops' locations and standard ration items
# repeat, so equal instances are shared. Only checked values are cached.
_LOCATIONS: dict[tuple[Any, ...], Location] = {}
_ITEMS: dict[tuple[Any, ...], CollectionItem] = {}


# --- checks ---------------------------------------------------------------------------------


def _month(value: str, field: str) -> str:
    if _MONTH.fullmatch(value) is None:
        raise ValidationError(f"{field} must be YYYY-MM (year 2000-2099, month 01-12)")
    return value


def _uan(value: str, field: str = "uan") -> str:
    if _UAN.fullmatch(value) is None:
        raise ValidationError(f"{field} must be exactly 12 digits")
    return value


def _non_empty(value: str, field: str) -> str:
    if not value or value.isspace():
        raise ValidationError(f"{field} must not be empty")
    return value


def _member_ref(value: str) -> str:
    """The vault's opaque id of a card member: printable, never empty."""
    if not value or value.isspace():
        raise ValidationError("member_ref must not be empty")
    if not value.isprintable():
        raise ValidationError("member_ref holds a control character")
    return value


def _state(value: int, field: str) -> int:
    if value not in STATES_BY_LGD:
        raise ValidationError(f"{field} is not a known state LGD code")
    return value


def _district(value: int, field: str) -> int:
    if value <= 0:
        raise ValidationError(f"{field} must be > 0")
    return value


def _count(value: int, field: str) -> int:
    if value < 0:
        raise ValidationError(f"{field} must be >= 0")
    return value


def _enum(table: Mapping[str, Any], value: str, field: str) -> Any:
    member = table.get(value)
    if member is None:
        raise ValidationError(f"{field} is not a known symbol")
    return member


def _utc(value: datetime, field: str) -> datetime:
    if value.tzinfo is None:
        raise ValidationError(f"{field} must be timezone-aware")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _uuid_text(value: str, field: str) -> str:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise ValidationError(f"{field} must be a UUID") from None
    return value


# --- Location -------------------------------------------------------------------------------


def location_from_avro(d: Avro, field: str = "location") -> Location:
    """A checked ``Location``; equal ones are shared (frozen), which saves most of the cost."""
    key = (
        d["state_lgd"],
        d["district_lgd"],
        d["subdistrict_lgd"],
        d["village_town_lgd"],
        d["pincode"],
    )
    location = _LOCATIONS.get(key)
    if location is None:
        if key[0] not in STATES_BY_LGD:
            raise ValidationError(f"{field}.state_lgd is not a known state LGD code")
        if key[1] <= 0:
            raise ValidationError(f"{field}.district_lgd must be > 0")
        location = Location(*key)
        if len(_LOCATIONS) >= INTERN_LIMIT:
            _LOCATIONS.clear()
        _LOCATIONS[key] = location
    return location


def location_to_avro(location: Location) -> Avro:
    return {
        "state_lgd": location.state_lgd,
        "district_lgd": location.district_lgd,
        "subdistrict_lgd": location.subdistrict_lgd,
        "village_town_lgd": location.village_town_lgd,
        "pincode": location.pincode,
    }


def _optional_location(d: Avro | None, field: str) -> Location | None:
    return None if d is None else location_from_avro(d, field)


def _optional_location_to_avro(location: Location | None) -> Avro | None:
    return None if location is None else location_to_avro(location)


# --- RationCollection -----------------------------------------------------------------------


def ration_collection_from_avro(d: Avro) -> RationCollection:
    """The hot path: one ePoS transaction, checked."""
    transaction_id = d["transaction_id"]
    if not transaction_id or transaction_id.isspace():
        raise ValidationError("transaction_id must not be empty")
    member_ref = _member_ref(d["member_ref"])
    month = d["allocation_month"]
    if _MONTH.fullmatch(month) is None:
        raise ValidationError("allocation_month must be YYYY-MM (year 2000-2099, month 01-12)")
    card_state = d["card_state_lgd"]
    if card_state not in STATES_BY_LGD:
        raise ValidationError("card_state_lgd is not a known state LGD code")
    auth_mode = _AUTH_MODES.get(d["auth_mode"])
    if auth_mode is None:
        raise ValidationError("auth_mode is not a known symbol")
    portability = _PORTABILITY.get(d["portability"])
    if portability is None:
        raise ValidationError("portability is not a known symbol")
    raw_items = d["items"]
    if len(raw_items) > MAX_ITEMS:
        raise ValidationError(f"items has more than {MAX_ITEMS} entries")
    items = []
    for item in raw_items:
        item_key = (item["commodity"], item["scheme"], item["quantity_grams"])
        collection_item = _ITEMS.get(item_key)
        if collection_item is None:
            if item_key[2] < 0:
                raise ValidationError("items.quantity_grams must be >= 0")
            collection_item = CollectionItem(*item_key)
            if len(_ITEMS) >= INTERN_LIMIT:
                _ITEMS.clear()
            _ITEMS[item_key] = collection_item
        items.append(collection_item)
    return RationCollection(
        transaction_id,
        d["source"],
        d["ration_card_id"],
        member_ref,
        auth_mode,
        d["fps_id"],
        location_from_avro(d["fps_location"], "fps_location"),
        card_state,
        portability,
        month,
        d["transacted_at"],
        tuple(items),
    )


def ration_collection_to_avro(record: RationCollection) -> Avro:
    return {
        "transaction_id": record.transaction_id,
        "source": record.source,
        "ration_card_id": record.ration_card_id,
        "member_ref": record.member_ref,
        "auth_mode": record.auth_mode.value,
        "fps_id": record.fps_id,
        "fps_location": location_to_avro(record.fps_location),
        "card_state_lgd": record.card_state_lgd,
        "portability": record.portability.value,
        "allocation_month": record.allocation_month,
        "transacted_at": record.transacted_at,
        "items": [
            {
                "commodity": item.commodity,
                "scheme": item.scheme,
                "quantity_grams": item.quantity_grams,
            }
            for item in record.items
        ],
    }


# --- WorkerRegistration ---------------------------------------------------------------------


def worker_registration_from_avro(d: Avro) -> WorkerRegistration:
    return WorkerRegistration(
        uan=_uan(d["uan"]),
        member_ref=_member_ref(d["member_ref"]),
        permanent_address=location_from_avro(d["permanent_address"], "permanent_address"),
        present_address=_optional_location(d["present_address"], "present_address"),
        occupation_nco=d["occupation_nco"],
        consent_state_sharing=d["consent_state_sharing"],
        sms_reachable=d["sms_reachable"],
        updated_at=d["updated_at"],
    )


def worker_registration_to_avro(record: WorkerRegistration) -> Avro:
    return {
        "uan": record.uan,
        "member_ref": record.member_ref,
        "permanent_address": location_to_avro(record.permanent_address),
        "present_address": _optional_location_to_avro(record.present_address),
        "occupation_nco": record.occupation_nco,
        "consent_state_sharing": record.consent_state_sharing,
        "sms_reachable": record.sms_reachable,
        "updated_at": record.updated_at,
    }


# --- LocationChanged ------------------------------------------------------------------------


def evidence_from_avro(d: Avro) -> Evidence:
    return Evidence(
        months_observed=_count(d["months_observed"], "evidence.months_observed"),
        transactions=_count(d["transactions"], "evidence.transactions"),
        first_month=_month(d["first_month"], "evidence.first_month"),
        last_month=_month(d["last_month"], "evidence.last_month"),
        fps_ids=tuple(d["fps_ids"]),
    )


def evidence_to_avro(evidence: Evidence) -> Avro:
    return {
        "months_observed": evidence.months_observed,
        "transactions": evidence.transactions,
        "first_month": evidence.first_month,
        "last_month": evidence.last_month,
        "fps_ids": list(evidence.fps_ids),
    }


def location_changed_from_avro(d: Avro) -> LocationChanged:
    confidence = d["confidence"]
    if not 0.0 <= confidence <= 1.0:  # also rejects NaN
        raise ValidationError("confidence must be within 0..1")
    supersedes = d["supersedes_event_id"]
    return LocationChanged(
        event_id=str(d["event_id"]),
        change_type=_enum(_CHANGE_TYPES, d["change_type"], "change_type"),
        uan=_uan(d["uan"]),
        previous_location=_optional_location(d["previous_location"], "previous_location"),
        current_location=location_from_avro(d["current_location"], "current_location"),
        effective_month=_month(d["effective_month"], "effective_month"),
        detected_at=d["detected_at"],
        migration=_enum(_MIGRATIONS, d["migration"], "migration"),
        home_state_lgd=_state(d["home_state_lgd"], "home_state_lgd"),
        evidence=evidence_from_avro(d["evidence"]),
        confidence=confidence,
        present_address_matches=d["present_address_matches"],
        supersedes_event_id=None if supersedes is None else str(supersedes),
        rule_version=d["rule_version"],
    )


def location_changed_to_avro(event: LocationChanged) -> Avro:
    supersedes = event.supersedes_event_id
    return {
        "event_id": _uuid_text(event.event_id, "event_id"),
        "change_type": event.change_type.value,
        "uan": event.uan,
        "previous_location": _optional_location_to_avro(event.previous_location),
        "current_location": location_to_avro(event.current_location),
        "effective_month": event.effective_month,
        "detected_at": _utc(event.detected_at, "detected_at"),
        "migration": event.migration.value,
        "home_state_lgd": event.home_state_lgd,
        "evidence": evidence_to_avro(event.evidence),
        "confidence": event.confidence,
        "present_address_matches": event.present_address_matches,
        "supersedes_event_id": (
            None if supersedes is None else _uuid_text(supersedes, "supersedes_event_id")
        ),
        "rule_version": event.rule_version,
    }


# --- AddressUpdateRequested -----------------------------------------------------------------


def address_update_requested_from_avro(d: Avro) -> AddressUpdateRequested:
    return AddressUpdateRequested(
        request_id=str(d["request_id"]),
        uan=_uan(d["uan"]),
        derived_location=location_from_avro(d["derived_location"], "derived_location"),
        registered_present_address=_optional_location(
            d["registered_present_address"], "registered_present_address"
        ),
        reason=d["reason"],
        requested_at=d["requested_at"],
    )


def address_update_requested_to_avro(request: AddressUpdateRequested) -> Avro:
    return {
        "request_id": _uuid_text(request.request_id, "request_id"),
        "uan": request.uan,
        "derived_location": location_to_avro(request.derived_location),
        "registered_present_address": _optional_location_to_avro(
            request.registered_present_address
        ),
        "reason": request.reason,
        "requested_at": _utc(request.requested_at, "requested_at"),
    }


# --- MigrationFlow --------------------------------------------------------------------------


def migration_flow_from_avro(d: Avro) -> MigrationFlow:
    return MigrationFlow(
        month=_month(d["month"], "month"),
        from_state_lgd=_state(d["from_state_lgd"], "from_state_lgd"),
        from_district_lgd=_district(d["from_district_lgd"], "from_district_lgd"),
        to_state_lgd=_state(d["to_state_lgd"], "to_state_lgd"),
        to_district_lgd=_district(d["to_district_lgd"], "to_district_lgd"),
        workers=_count(d["workers"], "workers"),
        moves_in=_count(d["moves_in"], "moves_in"),
    )


def migration_flow_to_avro(flow: MigrationFlow) -> Avro:
    return {
        "month": flow.month,
        "from_state_lgd": flow.from_state_lgd,
        "from_district_lgd": flow.from_district_lgd,
        "to_state_lgd": flow.to_state_lgd,
        "to_district_lgd": flow.to_district_lgd,
        "workers": flow.workers,
        "moves_in": flow.moves_in,
    }


# --- by record name -------------------------------------------------------------------------

# The records' short names in avro/ (the codec's names for their schemas).
RATION_COLLECTION: Final = "RationCollection"
WORKER_REGISTRATION: Final = "WorkerRegistration"
LOCATION_CHANGED: Final = "LocationChanged"
ADDRESS_UPDATE_REQUESTED: Final = "AddressUpdateRequested"
MIGRATION_FLOW: Final = "MigrationFlow"

FROM_AVRO: Final[dict[str, Callable[[Avro], Any]]] = {
    RATION_COLLECTION: ration_collection_from_avro,
    WORKER_REGISTRATION: worker_registration_from_avro,
    LOCATION_CHANGED: location_changed_from_avro,
    ADDRESS_UPDATE_REQUESTED: address_update_requested_from_avro,
    MIGRATION_FLOW: migration_flow_from_avro,
}
"""Record short name -> reader, for code that decodes whatever arrives (``codec.decode``)."""

TO_AVRO: Final[dict[type[Any], tuple[str, Callable[[Any], Avro]]]] = {
    RationCollection: (RATION_COLLECTION, ration_collection_to_avro),
    WorkerRegistration: (WORKER_REGISTRATION, worker_registration_to_avro),
    LocationChanged: (LOCATION_CHANGED, location_changed_to_avro),
    AddressUpdateRequested: (ADDRESS_UPDATE_REQUESTED, address_update_requested_to_avro),
    MigrationFlow: (MIGRATION_FLOW, migration_flow_to_avro),
}
"""Domain type -> (record short name, writer)."""


def to_avro(record: Any) -> tuple[str, Avro]:
    """(record name, fastavro dict) of any domain record; ``TypeError`` for anything else."""
    try:
        name, writer = TO_AVRO[type(record)]
    except KeyError:
        raise TypeError(f"no Avro record for {type(record).__name__}") from None
    return name, writer(record)
