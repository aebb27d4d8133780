"""The population simulator: determinism, identity hygiene, behaviours, ground truth."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from eshram_locator.domain.aadhaar import scan_record
from eshram_locator.domain.model import (
    AuthMode,
    ChangeType,
    District,
    Portability,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.domain.months import IST, add_months, month_index, month_of
from eshram_locator.domain.rules import Observation, RuleParams, WorkerProfile, derive_timeline
from eshram_locator.records import to_avro
from eshram_locator.simulator.accuracy import ObservedChange, score
from eshram_locator.simulator.population import (
    BEHAVIOURS,
    SimMessage,
    Simulation,
    SimulationConfig,
    read_ground_truth,
    simulate,
    write_ground_truth,
)
from eshram_locator.simulator.truth import TrueMove, confirmed_changes, true_moves
from eshram_locator.topics import COLLECTIONS, REGISTRY

SMALL = SimulationConfig(workers=2_500)
# Any run of 12 digits starting 2-9 that is not part of a longer digit run: what an Aadhaar
# number would look like (the Verhoeff check is left out on purpose: stricter).
AADHAAR_LIKE = re.compile(r"(?<!\d)[2-9]\d{11}(?!\d)")
TWELVE_DIGIT_RUN = re.compile(r"\d{12}")


def _digest(messages: Iterator[SimMessage]) -> str:
    hasher = hashlib.sha256()
    for message in messages:
        hasher.update(repr(message).encode())
        hasher.update(b"\n")
    return hasher.hexdigest()


@pytest.fixture(scope="module")
def small() -> Simulation:
    return simulate(SMALL)


@pytest.fixture(scope="module")
def small_messages(small: Simulation) -> list[SimMessage]:
    return list(small.messages())


@pytest.fixture(scope="module")
def default() -> Simulation:
    return simulate(SimulationConfig())


# --- determinism ---------------------------------------------------------------------------------


def test_same_config_gives_the_same_sequence(small_messages: list[SimMessage]) -> None:
    again = simulate(SMALL)
    assert _digest(again.messages()) == _digest(iter(small_messages))
    assert again.ground_truth() == simulate(SMALL).ground_truth()


def test_messages_can_be_iterated_twice(
    small: Simulation, small_messages: list[SimMessage]
) -> None:
    assert _digest(small.messages()) == _digest(iter(small_messages))


def test_another_seed_gives_another_sequence(small_messages: list[SimMessage]) -> None:
    other = simulate(replace(SMALL, seed=8))
    assert _digest(other.messages()) != _digest(iter(small_messages))


# --- identity hygiene ----------------------------------------------------------------------------


def _strings(message: SimMessage) -> Iterator[str]:
    """Every string and number of a message except the uan, as text."""
    value = message.value
    if isinstance(value, RationCollection):
        yield value.transaction_id
        yield value.source
        yield value.ration_card_id
        yield value.member_ref
        yield value.fps_id
        yield value.allocation_month
        location = value.fps_location
        locations = [location]
        yield message.key
    elif isinstance(value, WorkerRegistration):
        yield value.member_ref
        yield value.occupation_nco or ""
        locations = [value.permanent_address]
        if value.present_address is not None:
            locations.append(value.present_address)
    else:
        return
    for location in locations:
        yield str(location.state_lgd)
        yield str(location.district_lgd)
        yield str(location.subdistrict_lgd)
        yield str(location.village_town_lgd)
        yield location.pincode or ""


def test_no_field_looks_like_an_aadhaar_number(small_messages: list[SimMessage]) -> None:
    for message in small_messages:
        for text in _strings(message):
            assert AADHAAR_LIKE.search(text) is None, (text, message)
            assert TWELVE_DIGIT_RUN.search(text) is None, (text, message)


def test_the_service_aadhaar_guard_finds_nothing(small_messages: list[SimMessage]) -> None:
    """What the locator itself runs on every decoded record (Verhoeff included)."""
    for message in small_messages:
        if message.value is not None:
            _, datum = to_avro(message.value)
            assert scan_record(datum) == [], message


def test_identity_formats(small_messages: list[SimMessage]) -> None:
    for message in small_messages:
        value = message.value
        if message.topic == REGISTRY:
            assert re.fullmatch(r"10\d{10}", message.key)
            assert AADHAAR_LIKE.search(message.key) is None
            if isinstance(value, WorkerRegistration):
                assert value.uan == message.key
                assert re.fullmatch(r"MR[0-9a-f]{20}", value.member_ref)
        else:
            assert isinstance(value, RationCollection)
            assert message.key == value.member_ref
            assert re.fullmatch(r"MR[0-9a-f]{20}", value.member_ref)
            assert re.fullmatch(
                r"[A-Z]{2}-PDS-\d{6}-[0-9a-f]{10}|IM-PDS-\d{6}-[0-9a-f]{10}", value.transaction_id
            )
            assert value.transaction_id.startswith(f"{value.source}-")
            assert re.fullmatch(r"FPS-\d{2}-\d{3,4}-\d{3}", value.fps_id)


def test_transaction_ids_identify_one_record(small_messages: list[SimMessage]) -> None:
    by_id: dict[str, RationCollection] = {}
    for message in small_messages:
        if isinstance(message.value, RationCollection):
            seen = by_id.setdefault(message.value.transaction_id, message.value)
            assert seen == message.value  # a repeated id is an identical duplicate


def test_household_members_are_never_registered(small_messages: list[SimMessage]) -> None:
    registered = {
        m.value.member_ref for m in small_messages if isinstance(m.value, WorkerRegistration)
    }
    lifters = {m.value.member_ref for m in small_messages if isinstance(m.value, RationCollection)}
    household = lifters - registered
    assert household  # other members of the card lift too
    cards_of_household = {
        m.value.ration_card_id
        for m in small_messages
        if isinstance(m.value, RationCollection) and m.value.member_ref in household
    }
    worker_cards = {
        m.value.ration_card_id
        for m in small_messages
        if isinstance(m.value, RationCollection) and m.value.member_ref in registered
    }
    assert cards_of_household <= worker_cards  # ... on a worker's card


# --- records -------------------------------------------------------------------------------------


def test_collections_are_well_formed(small_messages: list[SimMessage]) -> None:
    spilled = 0
    for message in small_messages:
        value = message.value
        if not isinstance(value, RationCollection):
            continue
        assert value.transacted_at.utcoffset() is not None
        local_month = month_of(value.transacted_at)
        if local_month != value.allocation_month:
            spilled += 1
            assert local_month == add_months(value.allocation_month, 1)
            assert value.transacted_at.astimezone(IST).day <= 3
        assert value.items
        assert all(item.quantity_grams > 0 for item in value.items)
        assert {item.commodity for item in value.items} <= {"rice", "wheat"}
        assert {item.scheme for item in value.items} <= {"NFSA", "PMGKAY"}
        fps = value.fps_location
        assert fps.district_lgd // 100 == fps.state_lgd  # synthetic district codes
        if fps.state_lgd != value.card_state_lgd:
            assert value.portability is Portability.INTER_STATE
            assert value.source == "IM-PDS"
        else:
            assert value.portability in (Portability.NONE, Portability.INTRA_STATE)
    assert spilled > 0  # near month ends the allocation month differs from the date


def test_portability_is_relative_to_the_home_district(small_messages: list[SimMessage]) -> None:
    homes = {
        m.value.member_ref: m.value.permanent_address.district
        for m in small_messages
        if isinstance(m.value, WorkerRegistration)
    }
    for message in small_messages:
        value = message.value
        if isinstance(value, RationCollection) and value.member_ref in homes:
            home = homes[value.member_ref]
            at = value.fps_location.district
            if at == home:
                assert value.portability is Portability.NONE
            elif at.state_lgd == home.state_lgd:
                assert value.portability is Portability.INTRA_STATE
            else:
                assert value.portability is Portability.INTER_STATE


def test_counts_match_the_stream(small: Simulation, small_messages: list[SimMessage]) -> None:
    topics = Counter(message.topic for message in small_messages)
    assert dict(topics) == small.counts["messages_by_topic"]
    assert small.total_messages == len(small_messages)
    assert sum(small.counts["workers_by_behaviour"].values()) == SMALL.workers


def test_order_is_snapshot_then_month_by_month(
    small: Simulation, small_messages: list[SimMessage]
) -> None:
    start = month_index(SMALL.start_month)
    first_collection = next(i for i, m in enumerate(small_messages) if m.topic == COLLECTIONS)
    snapshot = small_messages[:first_collection]
    for message in snapshot:
        assert isinstance(message.value, WorkerRegistration)
        assert month_index(month_of(message.value.updated_at)) < start
    batch = 0  # highest allocation month seen: the current batch
    displaced = 0
    for message in small_messages[first_collection:]:
        if isinstance(message.value, RationCollection):
            month = month_index(message.value.allocation_month) - start
            if month < batch:
                displaced += 1
                assert batch - month >= 1
            batch = max(batch, month)
    features = small.counts["events_by_feature"]
    late = features["late_transactions"] + features["late_transactions_at_end"]
    assert late <= displaced <= late + features["duplicated_transactions"]


# --- behaviours ----------------------------------------------------------------------------------


def test_every_behaviour_appears_at_default_settings(default: Simulation) -> None:
    counts = default.counts
    assert all(counts["workers_by_behaviour"][b] > 0 for b in BEHAVIOURS)
    non_migrants = counts["workers_by_behaviour"]["non_migrant"] / SimulationConfig().workers
    assert 0.65 < non_migrants < 0.78
    features = counts["events_by_feature"]
    for feature in (
        "one_month_trips",
        "household_lifts_while_away",
        "household_lifts_at_home",
        "own_otp_manual_while_away",
        "own_otp_manual_at_home",
        "missing_months",
        "duplicated_transactions",
        "late_transactions",
        "late_transactions_at_end",
        "late_registrations",
        "present_address_differs",
        "registry_consent_flips",
        "registry_sms_flips",
        "registry_address_corrections",
        "registry_mover_address_updates",
        "registry_tombstones",
        "split_move_months",
        "same_district_shop_switches",
        "auth_fingerprint",
        "auth_iris",
        "auth_face",
        "auth_otp",
        "auth_manual",
        "portability_none",
        "portability_intra_state",
        "portability_inter_state",
    ):
        assert features.get(feature, 0) > 0, feature
    kinds = counts["true_moves_by_kind"]
    assert set(kinds) == {"inter_district", "inter_state", "seasonal", "return"}


def test_behaviours_show_in_the_stream(small_messages: list[SimMessage]) -> None:
    seen_ids: set[str] = set()
    duplicates = 0
    first_collection: dict[str, int] = {}
    registered_at: dict[str, int] = {}
    versions: Counter[str] = Counter()
    tombstoned_at: dict[str, int] = {}
    member_of: dict[str, str] = {}
    collected_after_tombstone = 0
    own_non_biometric = 0
    present_elsewhere = 0
    for position, message in enumerate(small_messages):
        value = message.value
        if isinstance(value, RationCollection):
            if value.transaction_id in seen_ids:
                duplicates += 1
            seen_ids.add(value.transaction_id)
            first_collection.setdefault(value.member_ref, position)
            if value.member_ref in tombstoned_at:
                collected_after_tombstone += 1
            if value.member_ref in member_of and value.auth_mode in (AuthMode.OTP, AuthMode.MANUAL):
                own_non_biometric += 1
        elif isinstance(value, WorkerRegistration):
            versions[value.uan] += 1
            registered_at.setdefault(value.member_ref, position)
            member_of[value.member_ref] = value.uan
            present = value.present_address
            if present is not None and present.district != value.permanent_address.district:
                present_elsewhere += 1
        else:
            uan = message.key
            member = next(ref for ref, owner in member_of.items() if owner == uan)
            tombstoned_at[member] = position
    late_registrations = sum(
        1 for ref, at in registered_at.items() if first_collection.get(ref, at) < at
    )
    assert duplicates > 0
    assert late_registrations > 0
    assert collected_after_tombstone > 0
    assert own_non_biometric > 0
    assert present_elsewhere > 0
    assert any(count > 1 for count in versions.values())  # later registry versions


def test_home_states_follow_eshram_weights(default: Simulation) -> None:
    homes: Counter[int] = Counter()
    for message in default.messages():
        if message.topic != REGISTRY:
            break  # the snapshot comes first
        if isinstance(message.value, WorkerRegistration):
            homes[message.value.permanent_address.state_lgd] += 1
    ranking = [state for state, _ in homes.most_common()]
    assert ranking[0] == 9  # Uttar Pradesh
    assert set(ranking[1:3]) == {10, 19}  # Bihar, West Bengal
    assert 0.24 < homes[9] / sum(homes.values()) < 0.31


def test_one_month_trips_are_never_true_moves(default: Simulation) -> None:
    trips = default.one_month_trips
    assert len(trips) > 100
    moves = {(move.uan, move.to_district) for move in default.ground_truth()}
    assert all((trip.uan, trip.district) not in moves for trip in trips)


def test_small_configurations_work() -> None:
    for config in (
        SimulationConfig(workers=0),
        SimulationConfig(workers=50, months=1),
        SimulationConfig(workers=50, months=3, start_month="2024-11"),
        SimulationConfig(workers=50, shops_per_district=1),
    ):
        sim = simulate(config)
        assert sum(1 for _ in sim.messages()) == sim.total_messages


@pytest.mark.parametrize(
    "change",
    [
        {"seasonal_share": 1.5},
        {"late_share": -0.1},
        {"months": 0},
        {"start_month": "2025-13"},
        {"inter_state_move_share": 0.6, "seasonal_share": 0.6},
    ],
)
def test_invalid_configs_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        SimulationConfig(**change)


# --- ground truth --------------------------------------------------------------------------------

MONTHS = [add_months("2025-04", i) for i in range(12)]
HOME = District(9, 901)
CITY = District(27, 2701)
ELSEWHERE = District(7, 701)
UAN = "100000000001"


def _moves(
    residence: Sequence[District], observed: Sequence[District | None], baseline: District = HOME
) -> list[TrueMove]:
    return true_moves(UAN, MONTHS, residence, observed, baseline, HOME, 2, 3)


def _stay(home_until: int, away_until: int = 12, where: District = CITY) -> list[District]:
    return [HOME] * home_until + [where] * (away_until - home_until) + [HOME] * (12 - away_until)


def test_truth_permanent_move_seen_two_months_running() -> None:
    observed: Sequence[District | None] = [HOME] * 3 + [CITY] * 9
    (move,) = _moves(_stay(3), observed)
    assert (move.true_month, move.detectable, move.expected_effective_month) == (
        "2025-07",
        True,
        "2025-07",
    )
    assert (move.from_district, move.to_district, move.kind) == (HOME, CITY, "inter_state")


def test_truth_move_in_the_last_month_is_not_detectable() -> None:
    (move,) = _moves(_stay(11), [HOME] * 11 + [CITY])
    assert not move.detectable
    assert move.expected_effective_month == "2026-03"


def test_truth_move_never_observed_has_no_expected_month() -> None:
    (move,) = _moves(_stay(9), [HOME] * 9 + [None, None, None])
    assert not move.detectable
    assert move.expected_effective_month is None


def test_truth_gap_of_three_months_keeps_the_streak() -> None:
    observed: Sequence[District | None] = [HOME] * 3 + [CITY, None, None, None, CITY] + [None] * 4
    (move,) = _moves(_stay(3), observed)
    assert move.detectable
    assert move.expected_effective_month == "2025-07"


def test_truth_gap_of_four_months_breaks_the_streak() -> None:
    observed: Sequence[District | None] = [HOME] * 3 + [CITY] + [None] * 4 + [CITY] + [None] * 3
    (move,) = _moves(_stay(3), observed)
    assert not move.detectable
    assert move.expected_effective_month == "2025-07"  # first presence there


def test_truth_streak_after_a_broken_one_dates_from_its_own_start() -> None:
    observed: Sequence[District | None] = (
        [HOME] * 3 + [CITY] + [None] * 4 + [CITY, CITY, None, None]
    )
    (move,) = _moves(_stay(3), observed)
    assert move.detectable
    assert move.expected_effective_month == "2025-12"


def test_truth_trip_right_after_arriving_delays_the_effective_month() -> None:
    observed: Sequence[District | None] = [HOME] * 3 + [CITY, ELSEWHERE, CITY, CITY] + [CITY] * 5
    (move,) = _moves(_stay(3), observed)
    assert move.detectable
    assert move.expected_effective_month == "2025-09"


def test_truth_seasonal_stay_and_return_both_detectable() -> None:
    residence = _stay(3, 7)
    observed: Sequence[District | None] = [HOME] * 3 + [CITY, CITY, None, CITY] + [HOME] * 5
    there, back = _moves(residence, observed)
    assert there.detectable
    assert there.expected_effective_month == "2025-07"
    assert back.kind == "return"
    assert back.from_district == CITY
    assert back.to_district == HOME
    assert back.detectable
    assert back.expected_effective_month == "2025-11"


def test_truth_return_from_an_unseen_stay_is_not_detectable() -> None:
    residence = _stay(3, 7)
    observed: Sequence[District | None] = [HOME] * 3 + [CITY, None, None, None] + [HOME] * 5
    there, back = _moves(residence, observed)
    assert not there.detectable
    assert not back.detectable  # the rules never left home: nothing to return from
    assert back.expected_effective_month == "2025-11"


def test_truth_return_migrant_starts_from_the_present_address() -> None:
    residence = [CITY] * 5 + [HOME] * 7
    observed: Sequence[District | None] = [CITY] * 5 + [HOME] * 7
    (back,) = _moves(residence, observed, baseline=CITY)
    assert back.kind == "return"
    assert back.detectable
    assert back.expected_effective_month == "2025-09"


def test_truth_one_month_trip_is_no_move() -> None:
    observed: Sequence[District | None] = [HOME] * 5 + [ELSEWHERE] + [HOME] * 6
    assert _moves([HOME] * 12, observed) == []
    assert confirmed_changes(HOME, observed, 2, 3) == []


def test_truth_seasonal_kind_is_taken_from_the_plan() -> None:
    residence = _stay(3, 7, where=District(9, 902))
    observed: Sequence[District | None] = list(residence)
    there, back = true_moves(UAN, MONTHS, residence, observed, HOME, HOME, 2, 3, {3: "seasonal"})
    assert (there.kind, back.kind) == ("seasonal", "return")
    plain, _ = _moves(residence, observed)
    assert plain.kind == "inter_district"


def test_ground_truth_file_round_trip(small: Simulation, tmp_path: Path) -> None:
    path = tmp_path / "truth.jsonl"
    moves = small.ground_truth()
    write_ground_truth(path, moves)
    assert read_ground_truth(path) == moves
    write_ground_truth(tmp_path / "again.jsonl", moves)
    assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()


def test_the_rules_find_exactly_the_detectable_moves(
    small: Simulation, small_messages: list[SimMessage]
) -> None:
    """The committed rules (``domain.rules.derive_timeline``) over each worker's own
    transactions, from the first registration, give exactly the detectable true moves, with
    their expected effective months: a perfect locator scores 1.0 against the ground truth."""
    first_registration: dict[str, WorkerRegistration] = {}
    owner: dict[str, str] = {}
    deregistered: set[str] = set()
    own: dict[str, list[Observation]] = defaultdict(list)
    for message in small_messages:
        value = message.value
        if isinstance(value, WorkerRegistration):
            first_registration.setdefault(value.uan, value)
            owner[value.member_ref] = value.uan
        elif value is None:
            deregistered.add(message.key)
        else:
            own[value.member_ref].append(Observation.from_collection(value))
    changes: list[ObservedChange] = []
    for member, observations in own.items():
        uan = owner.get(member)
        if uan is None or uan in deregistered:
            continue
        registration = first_registration[uan]
        profile = WorkerProfile.from_registration(registration)
        for change in derive_timeline(profile, observations, RuleParams()).changes:
            district = change.current_location.district
            home = registration.permanent_address.district
            assert (change.change_type is ChangeType.RETURNED_HOME) == (district == home)
            changes.append(
                ObservedChange(uan, change.effective_month, district, change.change_type)
            )
    report = score(small.ground_truth(), changes)
    assert report.detectable_moves > 100
    assert report.derived_changes == report.detectable_moves
    assert (report.precision, report.recall, report.effective_month_accuracy) == (1.0, 1.0, 1.0)
