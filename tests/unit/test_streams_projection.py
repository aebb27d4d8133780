"""Per-state projections keep the record a valid LocationChanged and drop what they must."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eshram_locator.avro_codec import AvroCodec, load_codec
from eshram_locator.domain.model import (
    ChangeType,
    Evidence,
    Location,
    LocationChanged,
    Migration,
)
from eshram_locator.domain.rules import location_event_id
from eshram_locator.records import location_changed_to_avro
from eshram_locator.settings import REPO_ROOT
from streams.projection import (
    WITHHELD_DISTRICT,
    Granularity,
    StateProjection,
    WithholdableField,
    project_change,
)

HOME = Location(9, 901, 90101, 9010101, "221001")
MUMBAI = Location(27, 2701, 270101, 2701011, "400001")


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return load_codec(REPO_ROOT / "avro", None)


def change() -> LocationChanged:
    return LocationChanged(
        event_id=location_event_id("100000000001", "2025-03", MUMBAI.district, ChangeType.MOVED),
        change_type=ChangeType.MOVED,
        uan="100000000001",
        previous_location=HOME,
        current_location=MUMBAI,
        effective_month="2025-03",
        detected_at=datetime(2025, 5, 1, tzinfo=UTC),
        migration=Migration.INTER_STATE,
        home_state_lgd=9,
        evidence=Evidence(2, 5, "2025-03", "2025-04", ("FPS-1", "FPS-2")),
        confidence=0.5,
        present_address_matches=False,
        supersedes_event_id=None,
    )


def roundtrip(codec: AvroCodec, datum: dict[str, object]) -> dict[str, object]:
    _, decoded = codec.decode(codec.encode("LocationChanged", datum), "LocationChanged")
    return decoded


def test_default_is_district_granularity_without_shops(codec: AvroCodec) -> None:
    out = roundtrip(codec, project_change(location_changed_to_avro(change()), StateProjection()))
    assert out["current_location"] == {
        "state_lgd": 27,
        "district_lgd": 2701,
        "subdistrict_lgd": None,
        "village_town_lgd": None,
        "pincode": None,
    }
    assert out["previous_location"]["district_lgd"] == 901  # type: ignore[index]
    assert out["evidence"]["fps_ids"] == []  # type: ignore[index]
    assert out["evidence"]["transactions"] == 5  # type: ignore[index]
    assert out["confidence"] == 0.5


def test_state_granularity_withholds_the_district(codec: AvroCodec) -> None:
    projection = StateProjection(Granularity.STATE)
    out = roundtrip(codec, project_change(location_changed_to_avro(change()), projection))
    assert out["current_location"]["state_lgd"] == 27  # type: ignore[index]
    assert out["current_location"]["district_lgd"] == WITHHELD_DISTRICT  # type: ignore[index]
    assert out["previous_location"]["district_lgd"] == WITHHELD_DISTRICT  # type: ignore[index]


def test_withheld_fields(codec: AvroCodec) -> None:
    projection = StateProjection(
        withheld_fields=frozenset({WithholdableField.EVIDENCE, WithholdableField.PREVIOUS_LOCATION})
    )
    out = roundtrip(codec, project_change(location_changed_to_avro(change()), projection))
    assert out["previous_location"] is None
    assert out["evidence"] == {
        "months_observed": 0,
        "transactions": 0,
        "first_month": "2025-03",
        "last_month": "2025-03",
        "fps_ids": [],
    }
    assert str(out["event_id"]) == change().event_id


def test_projection_does_not_touch_its_input() -> None:
    datum = location_changed_to_avro(change())
    project_change(datum, StateProjection(Granularity.STATE))
    assert datum["current_location"]["district_lgd"] == 2701
    assert datum["evidence"]["fps_ids"] == ["FPS-1", "FPS-2"]
