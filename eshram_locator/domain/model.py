"""Domain types of the locator: the records of contract.md as frozen dataclasses.

Pure: imports nothing that does I/O. The Avro adapter (``eshram_locator.records``) converts
between these types and the dicts fastavro reads and writes; a unit test checks that every
field here exists in the ``.avsc`` files and the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

RULE_VERSION = "v1"


class AuthMode(StrEnum):
    FINGERPRINT = "FINGERPRINT"
    IRIS = "IRIS"
    FACE = "FACE"
    OTP = "OTP"
    MANUAL = "MANUAL"

    @property
    def is_biometric(self) -> bool:
        """Rule 1: only biometric authentication proves the worker was at the shop."""
        return self in _BIOMETRIC


_BIOMETRIC = frozenset({AuthMode.FINGERPRINT, AuthMode.IRIS, AuthMode.FACE})


class Portability(StrEnum):
    NONE = "NONE"
    INTRA_STATE = "INTRA_STATE"
    INTER_STATE = "INTER_STATE"


class ChangeType(StrEnum):
    MOVED = "MOVED"
    RETURNED_HOME = "RETURNED_HOME"
    RETRACTED = "RETRACTED"


class Migration(StrEnum):
    NON_MIGRANT = "NON_MIGRANT"
    INTRA_DISTRICT = "INTRA_DISTRICT"
    INTER_DISTRICT = "INTER_DISTRICT"
    INTER_STATE = "INTER_STATE"


class District(NamedTuple):
    """Rule 2: locations are compared at district level."""

    state_lgd: int
    district_lgd: int

    def __str__(self) -> str:
        return f"{self.state_lgd:02d}-{self.district_lgd}"


@dataclass(frozen=True, slots=True)
class Location:
    """A place as LGD codes; LGD is the canonical key, pincode only an attribute."""

    state_lgd: int
    district_lgd: int
    subdistrict_lgd: int | None = None
    village_town_lgd: int | None = None
    pincode: str | None = None

    @property
    def district(self) -> District:
        return District(self.state_lgd, self.district_lgd)

    def as_list(self) -> list[int | str | None]:
        """Its fields in order: the compact JSON form the stores keep (``from_list`` reads it)."""
        return [
            self.state_lgd,
            self.district_lgd,
            self.subdistrict_lgd,
            self.village_town_lgd,
            self.pincode,
        ]

    @classmethod
    def from_list(cls, stored: Sequence[Any]) -> Location:
        return cls(*stored)


@dataclass(frozen=True, slots=True)
class CollectionItem:
    commodity: str
    scheme: str
    quantity_grams: int


@dataclass(frozen=True, slots=True)
class RationCollection:
    """One ePoS transaction at a Fair Price Shop."""

    transaction_id: str
    source: str
    ration_card_id: str
    member_ref: str
    auth_mode: AuthMode
    fps_id: str
    fps_location: Location
    card_state_lgd: int
    portability: Portability
    allocation_month: str  # YYYY-MM
    transacted_at: datetime  # timezone-aware UTC
    items: tuple[CollectionItem, ...]


@dataclass(frozen=True, slots=True)
class WorkerRegistration:
    """An e-Shram registry record (CDC)."""

    uan: str
    member_ref: str
    permanent_address: Location
    present_address: Location | None
    occupation_nco: str | None
    consent_state_sharing: bool
    sms_reachable: bool
    updated_at: datetime

    @property
    def baseline(self) -> Location:
        """Rule 4: the registered present address, else the permanent address."""
        return self.present_address if self.present_address is not None else self.permanent_address


@dataclass(frozen=True, slots=True)
class Evidence:
    months_observed: int
    transactions: int
    first_month: str
    last_month: str
    fps_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LocationChanged:
    event_id: str
    change_type: ChangeType
    uan: str
    previous_location: Location | None
    current_location: Location
    effective_month: str
    detected_at: datetime
    migration: Migration
    home_state_lgd: int
    evidence: Evidence
    confidence: float
    present_address_matches: bool
    supersedes_event_id: str | None
    rule_version: str = RULE_VERSION


@dataclass(frozen=True, slots=True)
class AddressUpdateRequested:
    request_id: str
    uan: str
    derived_location: Location
    registered_present_address: Location | None
    reason: str
    requested_at: datetime


@dataclass(frozen=True, slots=True)
class MigrationFlow:
    month: str
    from_state_lgd: int
    from_district_lgd: int
    to_state_lgd: int
    to_district_lgd: int
    workers: int
    moves_in: int
