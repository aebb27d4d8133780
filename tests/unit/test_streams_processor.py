"""The fan-out's decisions, without a broker: routing, holding, consent updates, dead letters."""

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
    WorkerRegistration,
)
from eshram_locator.domain.rules import location_event_id
from eshram_locator.intake import RawMessage
from eshram_locator.records import location_changed_to_avro, worker_registration_to_avro
from eshram_locator.settings import REPO_ROOT
from eshram_locator.topics import TopicNames
from streams.processor import Processor
from streams.projection import Granularity, StateProjection
from streams.worker_view import WorkerView

NAMES = TopicNames("p.")
UAN = "100000000001"
HOME = Location(9, 901, 90101)
MUMBAI = Location(27, 2701, 270101)
DELHI = Location(7, 701)


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return load_codec(REPO_ROOT / "avro", None)


@pytest.fixture
def processor(codec: AvroCodec) -> Processor:
    return Processor(codec, NAMES, {27: StateProjection(Granularity.STATE)})


def registration(consent: bool) -> WorkerRegistration:
    return WorkerRegistration(
        UAN, "MR-1", HOME, None, None, consent, True, datetime(2025, 1, 1, tzinfo=UTC)
    )


def change(previous: Location, current: Location, month: str = "2025-03") -> LocationChanged:
    return LocationChanged(
        event_id=location_event_id(UAN, month, current.district, ChangeType.MOVED),
        change_type=ChangeType.MOVED,
        uan=UAN,
        previous_location=previous,
        current_location=current,
        effective_month=month,
        detected_at=datetime(2025, 5, 1, tzinfo=UTC),
        migration=Migration.INTER_STATE,
        home_state_lgd=9,
        evidence=Evidence(2, 2, month, month, ("F1",)),
        confidence=1.0,
        present_address_matches=False,
        supersedes_event_id=None,
    )


def reg_message(codec: AvroCodec, consent: bool | None, offset: int = 0) -> RawMessage:
    value = (
        None
        if consent is None
        else codec.encode("WorkerRegistration", worker_registration_to_avro(registration(consent)))
    )
    return RawMessage(NAMES.registry, 0, offset, UAN.encode(), value)


def change_message(codec: AvroCodec, event: LocationChanged, offset: int = 0) -> RawMessage:
    value = codec.encode("LocationChanged", location_changed_to_avro(event))
    return RawMessage(NAMES.location_changes, 0, offset, UAN.encode(), value)


def test_consenting_change_goes_to_home_previous_and_current_state(
    processor: Processor, codec: AvroCodec
) -> None:
    view = processor.process(reg_message(codec, True), None).view
    outcome = processor.process(change_message(codec, change(MUMBAI, DELHI)), view)
    assert [o.topic for o in outcome.outputs] == [NAMES.state(7), NAMES.state(9), NAMES.state(27)]
    assert all(o.key == UAN.encode() for o in outcome.outputs)
    projected = {o.topic: codec.decode(o.value or b"")[1] for o in outcome.outputs}
    assert projected[NAMES.state(27)]["current_location"]["district_lgd"] == 0  # state only
    assert projected[NAMES.state(9)]["current_location"]["district_lgd"] == 701
    assert projected[NAMES.state(9)]["previous_location"]["subdistrict_lgd"] is None


def test_non_consenting_change_goes_nowhere_but_is_kept(
    processor: Processor, codec: AvroCodec
) -> None:
    view = processor.process(reg_message(codec, False), None).view
    outcome = processor.process(change_message(codec, change(HOME, MUMBAI)), view)
    assert outcome.outputs == ()
    assert outcome.view is not None
    assert outcome.view.current_location() == MUMBAI


def test_consent_update_takes_effect_for_the_next_change(
    processor: Processor, codec: AvroCodec
) -> None:
    view = processor.process(reg_message(codec, False), None).view
    view = processor.process(change_message(codec, change(HOME, MUMBAI)), view).view
    updated = processor.process(reg_message(codec, True), view)
    assert updated.outputs == ()  # nothing is shared retroactively
    outcome = processor.process(
        change_message(codec, change(MUMBAI, DELHI, "2025-06")), updated.view
    )
    assert {o.topic for o in outcome.outputs} == {NAMES.state(s) for s in (7, 9, 27)}


def test_change_before_registration_is_held_then_routed(
    processor: Processor, codec: AvroCodec
) -> None:
    held = processor.process(change_message(codec, change(HOME, MUMBAI)), None)
    assert held.outputs == ()
    assert held.view is not None
    assert len(held.view.held) == 1
    again = processor.process(change_message(codec, change(HOME, MUMBAI)), held.view)
    assert again.view is not None
    assert len(again.view.held) == 1
    released = processor.process(reg_message(codec, True), again.view)
    assert {o.topic for o in released.outputs} == {NAMES.state(9), NAMES.state(27)}
    assert released.view is not None
    assert released.view.held == ()


def test_change_held_for_a_non_consenting_registration_is_dropped(
    processor: Processor, codec: AvroCodec
) -> None:
    held = processor.process(change_message(codec, change(HOME, MUMBAI)), None).view
    released = processor.process(reg_message(codec, False), held)
    assert released.outputs == ()
    assert released.view is not None
    assert released.view.held == ()


def test_tombstone_forgets_the_worker(processor: Processor, codec: AvroCodec) -> None:
    view = processor.process(reg_message(codec, True), None).view
    outcome = processor.process(reg_message(codec, None), view)
    assert outcome.view is None
    assert outcome.store


def test_undecodable_record_goes_to_the_dlq_and_leaves_the_view(
    processor: Processor, codec: AvroCodec
) -> None:
    view = processor.process(reg_message(codec, True), None).view
    bad = RawMessage(NAMES.location_changes, 1, 42, UAN.encode(), b"not avro")
    outcome = processor.process(bad, view)
    assert outcome.dead_lettered
    assert not outcome.store
    (dlq,) = outcome.outputs
    assert dlq.topic == NAMES.location_changes + ".dlq"
    assert dlq.value == b"not avro"
    headers = dict(dlq.headers)
    assert headers["error.class"] == b"wrong_magic"
    assert headers["source.offset"] == b"42"


def test_key_must_be_the_uan(processor: Processor, codec: AvroCodec) -> None:
    value = codec.encode("LocationChanged", location_changed_to_avro(change(HOME, MUMBAI)))
    message = RawMessage(NAMES.location_changes, 0, 0, b"100000000009", value)
    outcome = processor.process(message, None)
    assert outcome.dead_lettered
    assert dict(outcome.outputs[0].headers)["error.class"] == b"validation_error"


def test_aadhaar_like_number_is_dead_lettered_masked(
    processor: Processor, codec: AvroCodec
) -> None:
    aadhaar = "234123412346"  # Verhoeff-valid, first digit 2-9
    datum = location_changed_to_avro(change(HOME, MUMBAI))
    datum["rule_version"] = aadhaar
    message = RawMessage(
        NAMES.location_changes, 0, 0, UAN.encode(), codec.encode("LocationChanged", datum)
    )
    outcome = processor.process(message, None)
    assert outcome.dead_lettered
    (dlq,) = outcome.outputs
    assert aadhaar.encode() not in (dlq.value or b"")
    assert dict(dlq.headers)["error.class"] == b"raw_aadhaar"


def test_worker_view_round_trips_through_json(processor: Processor, codec: AvroCodec) -> None:
    view = processor.process(change_message(codec, change(HOME, MUMBAI)), None).view
    assert view is not None
    view = processor.process(reg_message(codec, True), view).view
    assert view is not None
    assert WorkerView.from_json(view.to_json()) == view
