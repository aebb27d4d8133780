"""records.py: domain objects <-> fastavro dicts, and the checks beyond the schema."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from eshram_locator import records
from eshram_locator.avro_codec import AvroCodec, SchemaCatalog
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

AVRO_DIR = Path(__file__).resolve().parents[2] / "avro"

# Timestamps at millisecond precision: timestamp-millis keeps no more.
T0 = datetime(2024, 3, 31, 23, 59, 58, 123000, tzinfo=UTC)

FULL_LOCATION = Location(27, 519, 4156, 556677, "400001")
BARE_LOCATION = Location(9, 164)

COLLECTION = RationCollection(
    transaction_id="IMPDS-2024-03-000001",
    source="IM-PDS",
    ration_card_id="MH-27-0042-7788",
    member_ref="adv:7f3c9a1e",
    auth_mode=AuthMode.FINGERPRINT,
    fps_id="FPS-27-519-0012",
    fps_location=FULL_LOCATION,
    card_state_lgd=9,
    portability=Portability.INTER_STATE,
    allocation_month="2024-04",
    transacted_at=T0,
    items=(
        CollectionItem("RICE", "PMGKAY", 15000),
        CollectionItem("WHEAT", "NFSA-PHH", 0),
    ),
)

REGISTRATION = WorkerRegistration(
    uan="123456789012",
    member_ref="adv:7f3c9a1e",
    permanent_address=BARE_LOCATION,
    present_address=FULL_LOCATION,
    occupation_nco="7112.0100",
    consent_state_sharing=True,
    sms_reachable=False,
    updated_at=T0,
)

CHANGE = LocationChanged(
    event_id="4a1d8f4e-6c1b-5f0e-9a3d-2b7c8e9f0a1b",
    change_type=ChangeType.RETRACTED,
    uan="123456789012",
    previous_location=BARE_LOCATION,
    current_location=FULL_LOCATION,
    effective_month="2024-03",
    detected_at=T0,
    migration=Migration.INTER_STATE,
    home_state_lgd=9,
    evidence=Evidence(2, 3, "2024-02", "2024-03", ("FPS-27-519-0012", "FPS-27-519-0013")),
    confidence=0.75,
    present_address_matches=False,
    supersedes_event_id="0b0e1c2d-3e4f-5a6b-8c7d-9e0f1a2b3c4d",
)

REQUEST = AddressUpdateRequested(
    request_id="9d2f7a10-1c3e-5b4a-8f6e-0a1b2c3d4e5f",
    uan="123456789012",
    derived_location=FULL_LOCATION,
    registered_present_address=BARE_LOCATION,
    reason="biometric collections in Mumbai for 2 months",
    requested_at=T0,
)

FLOW = MigrationFlow("2024-03", 9, 164, 27, 519, workers=120, moves_in=7)

SAMPLES: list[Any] = [
    COLLECTION,
    dataclasses.replace(
        COLLECTION, auth_mode=AuthMode.MANUAL, items=(), fps_location=BARE_LOCATION
    ),
    REGISTRATION,
    dataclasses.replace(REGISTRATION, present_address=None, occupation_nco=None),
    CHANGE,
    dataclasses.replace(
        CHANGE,
        change_type=ChangeType.MOVED,
        previous_location=None,
        supersedes_event_id=None,
        evidence=Evidence(1, 1, "2024-03", "2024-03", ()),
    ),
    REQUEST,
    dataclasses.replace(REQUEST, registered_present_address=None),
    FLOW,
]


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(SchemaCatalog.load(AVRO_DIR))


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_round_trip_through_bytes(codec: AvroCodec, record: Any) -> None:
    name, datum = records.to_avro(record)
    payload = codec.encode(name, datum)
    decoded_name, decoded = codec.decode(payload, expected_record=name)
    assert decoded_name == name == type(record).__name__
    assert records.FROM_AVRO[decoded_name](decoded) == record


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_datetimes_come_back_utc_aware(codec: AvroCodec, record: Any) -> None:
    name, datum = records.to_avro(record)
    back = records.FROM_AVRO[name](codec.decode(codec.encode(name, datum))[1])
    for field in dataclasses.fields(back):
        value = getattr(back, field.name)
        if isinstance(value, datetime):
            assert value.tzinfo is not None
            assert value.utcoffset() == timedelta(0)


def test_enums_are_the_domain_enums(codec: AvroCodec) -> None:
    name, datum = records.to_avro(COLLECTION)
    back = records.ration_collection_from_avro(codec.decode(codec.encode(name, datum))[1])
    assert type(back.auth_mode) is AuthMode
    assert type(back.portability) is Portability
    assert back.auth_mode.is_biometric
    assert isinstance(back.items, tuple)


def test_non_utc_aware_datetimes_are_converted_on_write(codec: AvroCodec) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    event = dataclasses.replace(CHANGE, detected_at=T0.astimezone(ist))
    back = records.location_changed_from_avro(
        codec.decode(codec.encode("LocationChanged", records.location_changed_to_avro(event)))[1]
    )
    assert back.detected_at == T0
    assert back.detected_at.tzinfo is not None
    assert back.detected_at.utcoffset() == timedelta(0)


def test_to_avro_rejects_foreign_types() -> None:
    with pytest.raises(TypeError, match="no Avro record"):
        records.to_avro(FULL_LOCATION)


def test_every_record_has_a_reader_and_a_writer() -> None:
    names = SchemaCatalog.load(AVRO_DIR).record_names()
    assert sorted(records.FROM_AVRO) == names
    assert sorted(name for name, _ in records.TO_AVRO.values()) == names


# --- validation -----------------------------------------------------------------------------


def _collection_dict(**changes: Any) -> dict[str, Any]:
    datum = records.ration_collection_to_avro(COLLECTION)
    datum.update(changes)
    return datum


@pytest.mark.parametrize(
    "month",
    [
        "2024-4",
        "2024-13",
        "2024-00",
        "1999-12",
        "2100-01",
        "24-04",
        "2024/04",
        "2024-04-01",
        " 2024-04",
        "",
        "20२४-04",
    ],
)
def test_allocation_month_must_be_yyyy_mm(month: str) -> None:
    with pytest.raises(ValidationError, match="allocation_month"):
        records.ration_collection_from_avro(_collection_dict(allocation_month=month))


@pytest.mark.parametrize("month", ["2000-01", "2099-12", "2024-10"])
def test_allocation_month_accepts_the_range(month: str) -> None:
    assert records.ration_collection_from_avro(_collection_dict(allocation_month=month))


@pytest.mark.parametrize("state", [0, 25, 26, 39, 99, -9])
def test_state_must_be_known(state: int) -> None:
    location = records.location_to_avro(dataclasses.replace(FULL_LOCATION, state_lgd=state))
    with pytest.raises(ValidationError, match=r"fps_location\.state_lgd"):
        records.ration_collection_from_avro(_collection_dict(fps_location=location))
    with pytest.raises(ValidationError, match="card_state_lgd"):
        records.ration_collection_from_avro(_collection_dict(card_state_lgd=state))


@pytest.mark.parametrize("district", [0, -1])
def test_district_must_be_positive(district: int) -> None:
    location = records.location_to_avro(dataclasses.replace(FULL_LOCATION, district_lgd=district))
    with pytest.raises(ValidationError, match=r"district_lgd must be > 0"):
        records.ration_collection_from_avro(_collection_dict(fps_location=location))


def test_quantity_must_not_be_negative() -> None:
    items = [{"commodity": "RICE", "scheme": "PMGKAY", "quantity_grams": -1}]
    with pytest.raises(ValidationError, match="quantity_grams"):
        records.ration_collection_from_avro(_collection_dict(items=items))


def test_at_most_100_items() -> None:
    item = {"commodity": "RICE", "scheme": "PMGKAY", "quantity_grams": 1}
    assert (
        len(records.ration_collection_from_avro(_collection_dict(items=[item] * 100)).items) == 100
    )
    with pytest.raises(ValidationError, match="items"):
        records.ration_collection_from_avro(_collection_dict(items=[item] * 101))


@pytest.mark.parametrize("field", ["member_ref", "transaction_id"])
@pytest.mark.parametrize("value", ["", "   "])
def test_identifiers_must_not_be_empty(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        records.ration_collection_from_avro(_collection_dict(**{field: value}))


@pytest.mark.parametrize("value", ["MR\x1f1", "MR\n1", "MR\x001"])
def test_a_member_ref_with_a_control_character_is_rejected(value: str) -> None:
    with pytest.raises(ValidationError, match="member_ref"):
        records.ration_collection_from_avro(_collection_dict(member_ref=value))
    datum = records.worker_registration_to_avro(REGISTRATION)
    with pytest.raises(ValidationError, match="member_ref"):
        records.worker_registration_from_avro(datum | {"member_ref": value})


def test_unknown_enum_symbol_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="auth_mode"):
        records.ration_collection_from_avro(_collection_dict(auth_mode="PALM"))


@pytest.mark.parametrize(
    "uan", ["12345678901", "1234567890123", "12345678901a", "", "١٢٣٤٥٦٧٨٩٠١٢", " 23456789012"]
)
def test_uan_must_be_12_digits(uan: str) -> None:
    registration = records.worker_registration_to_avro(REGISTRATION) | {"uan": uan}
    with pytest.raises(ValidationError, match="uan") as caught:
        records.worker_registration_from_avro(registration)
    if uan.strip():
        assert uan.strip() not in str(caught.value)  # reasons never carry the value
    change = records.location_changed_to_avro(CHANGE) | {"uan": uan}
    with pytest.raises(ValidationError, match="uan"):
        records.location_changed_from_avro(change)
    request = records.address_update_requested_to_avro(REQUEST) | {"uan": uan}
    with pytest.raises(ValidationError, match="uan"):
        records.address_update_requested_from_avro(request)


def test_registration_checks_both_addresses() -> None:
    bad = records.location_to_avro(Location(99, 1))
    datum = records.worker_registration_to_avro(REGISTRATION)
    with pytest.raises(ValidationError, match="permanent_address"):
        records.worker_registration_from_avro(datum | {"permanent_address": bad})
    with pytest.raises(ValidationError, match="present_address"):
        records.worker_registration_from_avro(datum | {"present_address": bad})
    with pytest.raises(ValidationError, match="member_ref"):
        records.worker_registration_from_avro(datum | {"member_ref": ""})


@pytest.mark.parametrize("confidence", [-0.01, 1.01, float("nan")])
def test_confidence_is_within_0_1(confidence: float) -> None:
    datum = records.location_changed_to_avro(CHANGE) | {"confidence": confidence}
    with pytest.raises(ValidationError, match="confidence"):
        records.location_changed_from_avro(datum)


def test_location_changed_checks_months_and_state() -> None:
    datum = records.location_changed_to_avro(CHANGE)
    with pytest.raises(ValidationError, match="effective_month"):
        records.location_changed_from_avro(datum | {"effective_month": "2024-3"})
    with pytest.raises(ValidationError, match="home_state_lgd"):
        records.location_changed_from_avro(datum | {"home_state_lgd": 0})
    evidence = datum["evidence"] | {"first_month": "2024-13"}
    with pytest.raises(ValidationError, match=r"evidence\.first_month"):
        records.location_changed_from_avro(datum | {"evidence": evidence})


def test_migration_flow_checks() -> None:
    datum = records.migration_flow_to_avro(FLOW)
    for field, value in [
        ("month", "2024-3"),
        ("from_state_lgd", 99),
        ("to_state_lgd", 0),
        ("from_district_lgd", 0),
        ("to_district_lgd", -5),
        ("workers", -1),
        ("moves_in", -1),
    ]:
        with pytest.raises(ValidationError, match=field):
            records.migration_flow_from_avro(datum | {field: value})


def test_output_writers_reject_non_uuid_ids() -> None:
    with pytest.raises(ValidationError, match="event_id"):
        records.location_changed_to_avro(dataclasses.replace(CHANGE, event_id="not-a-uuid"))
    with pytest.raises(ValidationError, match="supersedes_event_id"):
        records.location_changed_to_avro(dataclasses.replace(CHANGE, supersedes_event_id="x"))
    with pytest.raises(ValidationError, match="request_id"):
        records.address_update_requested_to_avro(dataclasses.replace(REQUEST, request_id="r-1"))


def test_output_writers_reject_naive_datetimes() -> None:
    naive = datetime(2024, 3, 1, 12, 0)
    with pytest.raises(ValidationError, match="detected_at"):
        records.location_changed_to_avro(dataclasses.replace(CHANGE, detected_at=naive))
    with pytest.raises(ValidationError, match="requested_at"):
        records.address_update_requested_to_avro(dataclasses.replace(REQUEST, requested_at=naive))


def test_input_writers_do_not_validate() -> None:
    """The simulator writes bad records on purpose (to exercise the DLQ)."""
    bad = dataclasses.replace(COLLECTION, allocation_month="2024-13", member_ref="")
    datum = records.ration_collection_to_avro(bad)
    assert datum["allocation_month"] == "2024-13"


def test_invalid_content_survives_the_codec_and_fails_validation(codec: AvroCodec) -> None:
    bad = dataclasses.replace(COLLECTION, allocation_month="2024-13")
    name, decoded = codec.decode(codec.encode(*records.to_avro(bad)))
    with pytest.raises(ValidationError, match="allocation_month"):
        records.FROM_AVRO[name](decoded)


def test_shared_instances_are_still_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    good = records.location_to_avro(FULL_LOCATION)
    assert records.location_from_avro(dict(good)) is records.location_from_avro(dict(good))
    bad = records.location_to_avro(Location(99, 1))
    for _ in range(2):
        with pytest.raises(ValidationError, match="state_lgd"):
            records.location_from_avro(bad)
    items = [{"commodity": "RICE", "scheme": "X", "quantity_grams": -5}]
    for _ in range(2):
        with pytest.raises(ValidationError, match="quantity_grams"):
            records.ration_collection_from_avro(_collection_dict(items=items))
    monkeypatch.setattr(records, "INTERN_LIMIT", 2)
    for district in range(1, 10):
        location = records.location_from_avro(good | {"district_lgd": district})
        assert location == dataclasses.replace(FULL_LOCATION, district_lgd=district)
    assert len(records._LOCATIONS) <= 2
