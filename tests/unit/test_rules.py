"""Rules 1-9, 11 and 12 of shared/design/rules.md, one or more tests each (rule 10 is routing)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from eshram_locator.domain.model import (
    AuthMode,
    ChangeType,
    District,
    Location,
    LocationChanged,
    Migration,
    WorkerRegistration,
)
from eshram_locator.domain.months import (
    add_months,
    is_month,
    month_from_index,
    month_index,
    month_of,
    months_between,
)
from eshram_locator.domain.rules import (
    LOCATION_EVENT_NAMESPACE,
    REASON_REGISTERED_ADDRESS_DIFFERS,
    Observation,
    RuleParams,
    Timeline,
    WorkerProfile,
    address_update_request,
    classify_migration,
    derive_timeline,
    location_event_id,
    next_baselines,
    reconcile,
)
from eshram_locator.errors import ConfigError, ValidationError

UAN = "100000000017"
HOME = Location(9, 140, 700, 12345, "221001")  # Uttar Pradesh, the permanent address
HOME_SHOP = Location(9, 140, 701)  # another sub-district of the home district
NEARBY = Location(9, 141)  # Uttar Pradesh, another district
DELHI = Location(7, 77, 1)
DELHI_EAST = Location(7, 77, 2)  # same district as DELHI, another shop
PUNE = Location(27, 519)
DETECTED = datetime(2025, 1, 1, tzinfo=UTC)
DEFAULT = RuleParams()

_counter = iter(range(1_000_000))


def at(month: str, day: int = 10, hour: int = 6) -> datetime:
    year, mon = (int(part) for part in month.split("-"))
    return datetime(year, mon, day, hour, tzinfo=UTC)


def obs(
    month: str,
    place: Location,
    *,
    day: int = 10,
    hour: int = 6,
    auth: AuthMode = AuthMode.FINGERPRINT,
    fps: str | None = None,
    tid: str | None = None,
) -> Observation:
    return Observation(
        transaction_id=tid or f"t{next(_counter)}",
        allocation_month=month,
        transacted_at=at(month, day, hour),
        auth_mode=auth,
        fps_id=fps or f"fps-{place.state_lgd}-{place.district_lgd}-{place.subdistrict_lgd}",
        fps_location=place,
    )


def profile(
    present: Location | None = None,
    *,
    permanent: Location = HOME,
    sms: bool = True,
    rebaselined: tuple[tuple[str, Location], ...] = (),
) -> WorkerProfile:
    """A worker whose first registration had ``present``; ``rebaselined`` adds (month, baseline)."""
    first = present if present is not None else permanent
    baselines = ((None, first), *rebaselined) if rebaselined else ()
    current_present = rebaselined[-1][1] if rebaselined else present
    return WorkerProfile(UAN, permanent, current_present, sms, baselines)


def months(start: str, count: int) -> list[str]:
    return [add_months(start, offset) for offset in range(count)]


def stay(
    place: Location,
    start: str,
    count: int,
    *,
    auth: AuthMode = AuthMode.FINGERPRINT,
    fps: str | None = None,
) -> list[Observation]:
    return [obs(month, place, auth=auth, fps=fps) for month in months(start, count)]


def derive(
    observations: Iterable[Observation],
    worker: WorkerProfile | None = None,
    params: RuleParams = DEFAULT,
) -> Timeline:
    return derive_timeline(worker or profile(), observations, params)


def publish(
    worker: WorkerProfile, timeline: Timeline, emitted: Sequence[LocationChanged]
) -> tuple[list[LocationChanged], list[LocationChanged]]:
    """reconcile, then apply the events to ``emitted``: (events, new active list)."""
    events = reconcile(worker, timeline, emitted, DETECTED)
    active = {change.event_id: change for change in emitted}
    for event in events:
        if event.change_type is ChangeType.RETRACTED:
            assert event.supersedes_event_id is not None
            del active[event.supersedes_event_id]
        else:
            active[event.event_id] = event
    return events, list(active.values())


# --- months -----------------------------------------------------------------------------------


def test_month_arithmetic() -> None:
    assert month_index("2024-03") - month_index("2023-12") == 3
    assert month_from_index(month_index("2024-12")) == "2024-12"
    assert add_months("2024-11", 3) == "2025-02"
    assert add_months("2024-01", -1) == "2023-12"
    assert months_between("2024-01", "2024-05") == 4
    assert is_month("2024-09")
    assert not is_month("2024-13")
    assert not is_month("2024-9")
    with pytest.raises(ValueError, match="YYYY-MM"):
        month_index("24-09")


def test_month_of_is_in_india_standard_time() -> None:
    assert month_of(datetime(2024, 3, 31, 18, 29, tzinfo=UTC)) == "2024-03"
    assert month_of(datetime(2024, 3, 31, 18, 30, tzinfo=UTC)) == "2024-04"
    with pytest.raises(ValueError, match="naive"):
        month_of(datetime(2024, 3, 31))


def test_params_are_validated() -> None:
    with pytest.raises(ConfigError):
        RuleParams(confirm_months=0)
    with pytest.raises(ConfigError):
        RuleParams(max_gap_months=-1)
    with pytest.raises(ConfigError):
        RuleParams(confidence_window_months=0)
    with pytest.raises(ConfigError):
        RuleParams(address_request_cooldown_days=-1)


def test_profile_is_validated() -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        profile(rebaselined=(("2024/06", DELHI),))
    with pytest.raises(ValueError, match="month order"):
        profile(rebaselined=(("2024-06", DELHI), ("2024-03", PUNE)))
    with pytest.raises(ValueError, match="from the start"):
        WorkerProfile(UAN, HOME, None, True, (("2024-01", HOME),))


def test_observation_is_validated() -> None:
    with pytest.raises(ValidationError):
        replace(obs("2024-01", DELHI), allocation_month="2024-1")
    with pytest.raises(ValidationError):
        replace(obs("2024-01", DELHI), transacted_at=datetime(2024, 1, 1))


# --- rule 1: presence -------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [AuthMode.OTP, AuthMode.MANUAL])
def test_rule1_otp_and_manual_never_move(auth: AuthMode) -> None:
    timeline = derive(stay(DELHI, "2024-01", 8, auth=auth))
    assert timeline.changes == ()
    assert timeline.monthly == ()
    assert timeline.current_location == HOME


@pytest.mark.parametrize("auth", [AuthMode.FINGERPRINT, AuthMode.IRIS, AuthMode.FACE])
def test_rule1_biometric_presence_moves(auth: AuthMode) -> None:
    timeline = derive(stay(DELHI, "2024-01", 2, auth=auth))
    assert [c.current_location for c in timeline.changes] == [DELHI]


def test_rule1_non_biometric_counts_in_evidence_only() -> None:
    observations = [
        *stay(DELHI, "2024-01", 2),
        # Later in the month, but OTP and MANUAL: they do not make these months HOME.
        obs("2024-01", HOME, day=25, auth=AuthMode.OTP, fps="home-fps"),
        obs("2024-02", HOME, day=25, auth=AuthMode.MANUAL, fps="home-fps"),
    ]
    (change,) = derive(observations).changes
    assert change.current_location == DELHI
    assert change.evidence.transactions == 4
    assert "home-fps" in change.evidence.fps_ids


# --- rule 2: district granularity -------------------------------------------------------------


def test_rule2_new_shop_in_same_district_is_not_a_move() -> None:
    worker = profile(present=DELHI)
    timeline = derive(stay(DELHI_EAST, "2024-01", 6, fps="fps-new"), worker)
    assert timeline.changes == ()
    assert timeline.current_location == DELHI


def test_rule2_shops_in_home_district_never_move_anyone() -> None:
    timeline = derive(stay(HOME_SHOP, "2024-01", 6))
    assert timeline.changes == ()
    assert timeline.monthly == tuple((m, HOME.district) for m in months("2024-01", 6))


# --- rule 3: monthly location -----------------------------------------------------------------


def test_rule3_latest_presence_transaction_sets_the_month() -> None:
    observations = [
        obs("2024-01", PUNE, day=3),
        obs("2024-01", PUNE, day=5),
        obs("2024-01", DELHI, day=20),  # latest wins, even against more transactions
        obs("2024-02", DELHI, day=2),
    ]
    timeline = derive(observations)
    assert dict(timeline.monthly) == {"2024-01": DELHI.district, "2024-02": DELHI.district}
    assert [c.effective_month for c in timeline.changes] == ["2024-01"]


def test_rule3_allocation_month_not_calendar_date() -> None:
    # Collected on 1 February, against the January allocation.
    late = Observation(
        "x1", "2024-01", datetime(2024, 2, 1, 4, tzinfo=UTC), AuthMode.IRIS, "f", DELHI
    )
    timeline = derive([late, obs("2024-02", DELHI)])
    assert [m for m, _ in timeline.monthly] == ["2024-01", "2024-02"]
    assert timeline.changes[0].effective_month == "2024-01"


def test_rule3_timestamp_tie_goes_to_district_with_more_transactions() -> None:
    observations = [
        obs("2024-01", PUNE, day=2),
        obs("2024-01", PUNE, day=20),
        obs("2024-01", DELHI, day=20),  # same instant as the PUNE one
    ]
    assert dict(derive(observations).monthly) == {"2024-01": PUNE.district}


def test_rule3_full_tie_goes_to_smallest_district() -> None:
    observations = [obs("2024-01", PUNE, day=20), obs("2024-01", DELHI, day=20)]
    assert dict(derive(observations).monthly) == {"2024-01": DELHI.district}  # (7, 77) < (27, 519)
    assert dict(derive(reversed(observations)).monthly) == {"2024-01": DELHI.district}


def test_rule3_reported_location_is_latest_presence_shop_in_confirming_months() -> None:
    observations = [
        obs("2024-01", DELHI, day=5),
        obs("2024-02", DELHI_EAST, day=5),
        obs("2024-02", DELHI, day=1),
        obs("2024-03", DELHI, day=28),  # after the confirming months: not used
    ]
    (change,) = derive(observations).changes
    assert change.current_location == DELHI_EAST
    assert derive(observations).current_location == DELHI_EAST


# --- rule 4: baseline -------------------------------------------------------------------------


def test_rule4_baseline_is_present_address() -> None:
    worker = profile(present=DELHI)
    timeline = derive(stay(DELHI, "2024-01", 4), worker)
    assert timeline.changes == ()
    assert timeline.current_location == DELHI


def test_rule4_baseline_falls_back_to_permanent_address() -> None:
    timeline = derive(stay(HOME, "2024-01", 4))
    assert timeline.changes == ()
    assert timeline.current_location == HOME
    assert derive([]).current_location == HOME


# --- rule 5: confirmation ---------------------------------------------------------------------


def test_rule5_one_month_trip_emits_nothing() -> None:
    observations = [
        *stay(HOME, "2024-01", 3),
        obs("2024-04", PUNE),
        *stay(HOME, "2024-05", 3),
    ]
    timeline = derive(observations)
    assert timeline.changes == ()
    assert reconcile(profile(), timeline, [], DETECTED) == []


def test_rule5_alternating_months_never_confirm() -> None:
    observations = [obs(m, DELHI if i % 2 else PUNE) for i, m in enumerate(months("2024-01", 8))]
    assert derive(observations).changes == ()


def test_rule5_two_consecutive_observed_months_move_effective_first_month() -> None:
    timeline = derive([*stay(HOME, "2024-01", 2), *stay(DELHI, "2024-03", 3)])
    (change,) = timeline.changes
    assert change.effective_month == "2024-03"
    assert change.previous_location == HOME
    assert change.current_location == DELHI
    assert timeline.current_location == DELHI


def test_rule5_months_without_evidence_are_skipped() -> None:
    (change,) = derive([obs("2024-01", DELHI), obs("2024-04", DELHI)]).changes  # gap of 2
    assert change.effective_month == "2024-01"
    assert change.evidence.first_month == "2024-01"
    assert change.evidence.last_month == "2024-04"


def test_rule5_gap_equal_to_max_gap_keeps_the_streak() -> None:
    # 2024-01 .. 2024-05: 3 months without presence in between, max_gap_months = 3.
    (change,) = derive([obs("2024-01", DELHI), obs("2024-05", DELHI)]).changes
    assert change.effective_month == "2024-01"


def test_rule5_gap_longer_than_max_gap_breaks_the_streak() -> None:
    assert derive([obs("2024-01", DELHI), obs("2024-06", DELHI)]).changes == ()
    # A later month confirms a new streak that starts after the gap.
    (change,) = derive([obs("2024-01", DELHI), *stay(DELHI, "2024-06", 2)]).changes
    assert change.effective_month == "2024-06"


def test_rule5_gap_is_configurable() -> None:
    observations = [obs("2024-01", DELHI), obs("2024-03", DELHI)]
    assert len(derive(observations).changes) == 1
    assert derive(observations, params=RuleParams(max_gap_months=0)).changes == ()


def test_rule5_non_presence_months_do_not_break_a_streak() -> None:
    observations = [
        obs("2024-01", DELHI),
        obs("2024-02", HOME, auth=AuthMode.OTP),  # no presence: skipped
        obs("2024-03", DELHI),
    ]
    (change,) = derive(observations).changes
    assert change.effective_month == "2024-01"
    assert change.evidence.transactions == 2  # confirming months are 2024-01 and 2024-03


def test_rule5_params_change_replays_consistently() -> None:
    worker = profile()
    observations = [*stay(DELHI, "2024-01", 2), obs("2024-03", PUNE), *stay(DELHI, "2024-04", 3)]
    two = derive(observations, worker)
    three = derive(observations, worker, RuleParams(confirm_months=3))
    assert [c.effective_month for c in two.changes] == ["2024-01"]
    assert [c.effective_month for c in three.changes] == ["2024-04"]
    assert three.changes[0].evidence.months_observed == 3

    _, emitted = publish(worker, two, [])
    events, emitted = publish(worker, three, emitted)
    assert [e.change_type for e in events] == [ChangeType.RETRACTED, ChangeType.MOVED]
    assert {c.event_id for c in emitted} == {c.event_id for c in three.changes}
    assert publish(worker, three, emitted)[0] == []  # a second replay emits nothing

    # Replaying one observation at a time under the new params ends in the same place.
    incremental: list[LocationChanged] = []
    for end in range(1, len(observations) + 1):
        timeline = derive(observations[:end], worker, RuleParams(confirm_months=3))
        _, incremental = publish(worker, timeline, incremental)
    assert sorted(c.event_id for c in incremental) == sorted(c.event_id for c in emitted)


def test_rule5_a_stay_after_a_move_confirms_once() -> None:
    timeline = derive(stay(DELHI, "2024-01", 12))
    assert len(timeline.changes) == 1


# --- rule 6: change types and migration -------------------------------------------------------


def test_rule6_moved_then_returned_home() -> None:
    timeline = derive([*stay(DELHI, "2024-01", 3), *stay(HOME_SHOP, "2024-06", 2)])
    moved, back = timeline.changes
    assert moved.change_type is ChangeType.MOVED
    assert moved.migration is Migration.INTER_STATE
    assert back.change_type is ChangeType.RETURNED_HOME
    assert back.previous_location == DELHI
    assert back.current_location == HOME_SHOP
    assert back.effective_month == "2024-06"
    assert back.migration is Migration.INTRA_DISTRICT  # sub-district 701, not the home 700


def test_rule6_returned_home_from_registered_present_address() -> None:
    worker = profile(present=PUNE)
    (change,) = derive(stay(Location(9, 140), "2024-01", 2), worker).changes
    assert change.change_type is ChangeType.RETURNED_HOME
    assert change.previous_location == PUNE
    assert change.migration is Migration.NON_MIGRANT  # sub-district unknown
    assert change.present_address_matches is False


def test_rule6_inter_district_move() -> None:
    (change,) = derive(stay(NEARBY, "2024-01", 2)).changes
    assert change.change_type is ChangeType.MOVED
    assert change.migration is Migration.INTER_DISTRICT


def test_rule6_classify_migration() -> None:
    assert classify_migration(HOME, PUNE) is Migration.INTER_STATE
    assert classify_migration(HOME, NEARBY) is Migration.INTER_DISTRICT
    assert classify_migration(HOME, HOME_SHOP) is Migration.INTRA_DISTRICT
    assert classify_migration(HOME, Location(9, 140, 700)) is Migration.NON_MIGRANT
    assert classify_migration(HOME, Location(9, 140)) is Migration.NON_MIGRANT


def test_rule6_evidence_covers_the_confirming_months() -> None:
    observations = [
        obs("2024-01", DELHI, fps="d2"),
        obs("2024-01", DELHI, day=12, fps="d1"),
        obs("2024-02", DELHI, fps="d1", auth=AuthMode.OTP),
        obs("2024-02", DELHI, day=20, fps="d3", auth=AuthMode.FACE),
        obs("2024-03", DELHI, fps="d9"),  # after the confirming months
    ]
    (change,) = derive(observations).changes
    assert change.evidence.months_observed == 2
    assert change.evidence.transactions == 4
    assert change.evidence.first_month == "2024-01"
    assert change.evidence.last_month == "2024-02"
    assert change.evidence.fps_ids == ("d1", "d2", "d3")


def test_rule6_present_address_matches() -> None:
    worker = profile(present=DELHI)
    observations = [*stay(PUNE, "2024-01", 2), *stay(DELHI_EAST, "2024-03", 2)]
    to_pune, to_delhi = derive(observations, worker).changes
    assert to_pune.present_address_matches is False
    assert to_delhi.present_address_matches is True


# --- rule 7: late and out-of-order events -----------------------------------------------------


def test_rule7_late_event_flips_monthly_location_retracts_then_emits_holding_change() -> None:
    worker = profile()
    on_time = stay(DELHI, "2024-01", 3)
    first, emitted = publish(worker, derive(on_time, worker), [])
    (moved_jan,) = first
    assert moved_jan.effective_month == "2024-01"

    # A January collection in Pune, later in the month, arrives months late.
    late = obs("2024-01", PUNE, day=28)
    timeline = derive([*on_time, late], worker)
    events, emitted = publish(worker, timeline, emitted)
    retracted, moved_feb = events
    assert retracted.change_type is ChangeType.RETRACTED
    assert retracted.supersedes_event_id == moved_jan.event_id
    assert retracted.event_id == location_event_id(
        UAN, "2024-01", DELHI.district, ChangeType.RETRACTED
    )
    assert retracted.current_location == moved_jan.current_location
    assert retracted.previous_location == moved_jan.previous_location
    assert retracted.effective_month == "2024-01"
    assert moved_feb.change_type is ChangeType.MOVED
    assert moved_feb.effective_month == "2024-02"
    assert moved_feb.supersedes_event_id is None
    assert [c.event_id for c in emitted] == [moved_feb.event_id]
    assert publish(worker, timeline, emitted)[0] == []


def test_rule7_late_event_removing_a_change_retracts_only() -> None:
    worker = profile()
    _, emitted = publish(worker, derive(stay(DELHI, "2024-01", 2), worker), [])
    late = obs("2024-02", HOME, day=28)
    events, emitted = publish(worker, derive([*stay(DELHI, "2024-01", 2), late], worker), emitted)
    assert [e.change_type for e in events] == [ChangeType.RETRACTED]
    assert emitted == []


def test_rule7_refined_evidence_does_not_republish() -> None:
    worker = profile()
    on_time = stay(DELHI, "2024-01", 2)
    _, emitted = publish(worker, derive(on_time, worker), [])
    late = obs("2024-02", DELHI_EAST, day=28, auth=AuthMode.OTP)
    timeline = derive([*on_time, late], worker)
    assert timeline.changes[0].evidence.transactions == 3
    assert publish(worker, timeline, emitted)[0] == []


def test_rule7_retractions_newest_first_then_new_changes_oldest_first() -> None:
    worker = profile()
    history = [*stay(DELHI, "2024-01", 2), *stay(PUNE, "2024-03", 2)]
    _, emitted = publish(worker, derive(history, worker), [])
    assert [c.effective_month for c in emitted] == ["2024-01", "2024-03"]
    late = [obs("2024-01", NEARBY, day=28), obs("2024-03", DELHI, day=28)]
    events, _ = publish(worker, derive([*history, *late], worker), emitted)
    assert [(e.change_type, e.effective_month) for e in events] == [
        (ChangeType.RETRACTED, "2024-03"),
        (ChangeType.RETRACTED, "2024-01"),
        (ChangeType.MOVED, "2024-02"),
    ]


def test_rule7_change_that_holds_again_reuses_its_ids() -> None:
    """Pins down a consequence of contract.md's id formula: a change that stops holding and
    later holds again is re-published under the same event_id (and a second retraction would
    reuse the RETRACTED id). Stores and consumers must treat ids as upserts, not insert-once."""
    worker = profile()
    base = stay(DELHI, "2024-01", 2)
    (moved,), emitted = publish(worker, derive(base, worker), [])
    flipped = [*base, obs("2024-01", PUNE, day=20)]
    (retracted,), emitted = publish(worker, derive(flipped, worker), emitted)
    assert retracted.supersedes_event_id == moved.event_id
    back = [*flipped, obs("2024-01", DELHI, day=25)]
    (again,), emitted = publish(worker, derive(back, worker), emitted)
    assert again.event_id == moved.event_id


def test_rule7_a_registry_update_after_the_move_retracts_nothing() -> None:
    old = profile()
    observed = [*stay(DELHI, "2024-01", 2), *stay(DELHI, "2024-06", 1)]
    _, emitted = publish(old, derive(observed, old), [])
    # The worker re-registered in June with the Delhi address: the move stands, nothing new.
    rebaselined = profile(rebaselined=(("2024-06", DELHI),))
    timeline = derive(observed, rebaselined)
    assert [c.event_id for c in timeline.changes] == [e.event_id for e in emitted]
    assert reconcile(rebaselined, timeline, emitted, DETECTED) == []


def test_rule7_registry_update_first_or_collections_first_give_the_same_changes() -> None:
    observed = [*stay(HOME, "2024-01", 2), *stay(DELHI, "2024-03", 5)]
    registry_first = derive(observed, profile(rebaselined=(("2024-05", DELHI),)))
    collections_first = derive(observed, profile())
    assert [c.event_id for c in registry_first.changes] == [
        c.event_id for c in collections_first.changes
    ]
    assert registry_first.current_location.district == DELHI.district


def test_rule7_reconcile_rejects_foreign_or_retracted_records() -> None:
    worker = profile()
    (event,) = reconcile(worker, derive(stay(DELHI, "2024-01", 2)), [], DETECTED)
    with pytest.raises(ValueError, match="not of worker"):
        reconcile(worker, derive([]), [replace(event, uan="999")], DETECTED)
    with pytest.raises(ValueError, match="RETRACTED"):
        reconcile(worker, derive([]), [replace(event, change_type=ChangeType.RETRACTED)], DETECTED)


def test_rule7_published_record_carries_profile_fields() -> None:
    worker = profile(present=PUNE)
    (event,) = reconcile(worker, derive(stay(DELHI, "2024-01", 2), worker), [], DETECTED)
    assert event.uan == UAN
    assert event.home_state_lgd == HOME.state_lgd
    assert event.detected_at == DETECTED
    assert event.rule_version == "v1"
    assert event.previous_location == PUNE


# --- rule 8: idempotency ----------------------------------------------------------------------


def test_rule8_duplicate_transaction_changes_nothing() -> None:
    observations = [*stay(DELHI, "2024-01", 2), obs("2024-03", PUNE)]
    assert derive([*observations, *observations]) == derive(observations)


def test_rule8_conflicting_duplicates_resolve_by_content_not_arrival() -> None:
    first = obs("2024-02", DELHI, tid="dup")
    second = obs("2024-02", PUNE, day=20, tid="dup")
    base = [obs("2024-01", DELHI)]
    assert derive([*base, first, second]) == derive([*base, second, first])
    assert len(derive([*base, first, second]).changes) == 1  # the earlier content is kept


def test_rule8_replay_emits_nothing_new() -> None:
    worker = profile()
    observations = [*stay(DELHI, "2024-01", 3), *stay(PUNE, "2024-05", 2)]
    _, emitted = publish(worker, derive(observations, worker), [])
    assert len(emitted) == 2
    assert reconcile(worker, derive(reversed(observations), worker), emitted, DETECTED) == []


def test_rule8_event_ids_are_deterministic_uuid5() -> None:
    one = location_event_id(UAN, "2024-01", District(7, 77), ChangeType.MOVED)
    assert one == location_event_id(UAN, "2024-01", District(7, 77), ChangeType.MOVED)
    assert uuid.UUID(one).version == 5
    assert one == str(uuid.uuid5(LOCATION_EVENT_NAMESPACE, f"{UAN}|2024-01|7|77|MOVED"))
    others = {
        location_event_id(UAN, "2024-02", District(7, 77), ChangeType.MOVED),
        location_event_id(UAN, "2024-01", District(7, 78), ChangeType.MOVED),
        location_event_id(UAN, "2024-01", District(7, 77), ChangeType.RETURNED_HOME),
        location_event_id(UAN, "2024-01", District(7, 77), ChangeType.RETRACTED),
        location_event_id("100000000025", "2024-01", District(7, 77), ChangeType.MOVED),
    }
    assert one not in others
    assert len(others) == 5


# --- rule 9: address update requests ----------------------------------------------------------


def test_rule9_request_when_derived_differs_from_present_address() -> None:
    worker = profile(present=PUNE)
    timeline = derive(stay(DELHI, "2024-01", 2), worker)
    as_of = at("2024-02")
    request = address_update_request(worker, timeline.current_location, None, as_of, DEFAULT)
    assert request is not None
    assert request.uan == UAN
    assert request.derived_location == DELHI
    assert request.registered_present_address == PUNE
    assert request.reason == REASON_REGISTERED_ADDRESS_DIFFERS
    assert request.requested_at == as_of
    assert uuid.UUID(request.request_id).version == 5
    again = address_update_request(worker, timeline.current_location, None, as_of, DEFAULT)
    assert again == request  # a replay gives the same request, same id


def test_rule9_no_present_address_compares_with_permanent() -> None:
    worker = profile()
    assert (
        address_update_request(worker, derive([]).current_location, None, at("2024-02"), DEFAULT)
        is None
    )
    moved = derive(stay(DELHI, "2024-01", 2), worker)
    request = address_update_request(worker, moved.current_location, None, at("2024-02"), DEFAULT)
    assert request is not None
    assert request.reason == REASON_REGISTERED_ADDRESS_DIFFERS
    assert request.registered_present_address == HOME  # no present address: the permanent one


def test_rule9_same_district_or_unreachable_gets_no_request() -> None:
    timeline = derive(stay(DELHI_EAST, "2024-01", 2), profile(present=DELHI))
    assert (
        address_update_request(
            profile(present=DELHI), timeline.current_location, None, at("2024-02"), DEFAULT
        )
        is None
    )
    unreachable = profile(present=PUNE, sms=False)
    moved = derive(stay(DELHI, "2024-01", 2), unreachable)
    assert (
        address_update_request(unreachable, moved.current_location, None, at("2024-02"), DEFAULT)
        is None
    )


def test_rule9_cooldown_on_event_time() -> None:
    worker = profile(present=PUNE)
    timeline = derive(stay(DELHI, "2024-01", 2), worker)
    last = at("2024-02")
    for days, expected in [(0, False), (89, False), (90, True), (200, True), (-5, False)]:
        as_of = last + timedelta(days=days)
        request = address_update_request(worker, timeline.current_location, last, as_of, DEFAULT)
        assert (request is not None) is expected, days
    shorter = RuleParams(address_request_cooldown_days=30)
    assert address_update_request(
        worker, timeline.current_location, last, last + timedelta(days=30), shorter
    )


def test_rule9_compares_with_the_address_registered_when_the_change_took_effect() -> None:
    # Seen in Delhi from January; the registry learns the Delhi address only in June.
    caught_up = profile(rebaselined=(("2024-06", DELHI),))
    january = datetime(2024, 1, 1, tzinfo=UTC)
    request = address_update_request(caught_up, DELHI, None, january, DEFAULT)
    assert request is not None
    assert request.registered_present_address == HOME
    assert address_update_request(caught_up, DELHI, None, at("2024-07"), DEFAULT) is None


def test_rule9_request_ids_differ_by_decision_time() -> None:
    worker = profile(present=PUNE)
    timeline = derive(stay(DELHI, "2024-01", 2), worker)
    one = address_update_request(worker, timeline.current_location, None, at("2024-02"), DEFAULT)
    two = address_update_request(worker, timeline.current_location, None, at("2024-06"), DEFAULT)
    assert one is not None
    assert two is not None
    assert one.request_id != two.request_id


# --- rule 11: registry changes ----------------------------------------------------------------


def registration(
    present: Location | None = None,
    permanent: Location = HOME,
    updated_at: datetime = datetime(2024, 6, 15, tzinfo=UTC),
) -> WorkerRegistration:
    return WorkerRegistration(UAN, "ref-1", permanent, present, None, True, True, updated_at)


def test_rule11_first_registration_starts_the_history() -> None:
    assert next_baselines(None, registration(), ()) == ((None, HOME),)
    assert next_baselines(None, registration(DELHI), ((None, HOME),)) == ((None, DELHI),)


def test_rule11_unchanged_districts_keep_the_baseline() -> None:
    old = registration(present=DELHI)
    history = ((None, DELHI),)
    new = registration(present=DELHI_EAST, updated_at=datetime(2024, 9, 1, tzinfo=UTC))
    assert next_baselines(old, new, history) == history
    sms_only = replace(old, sms_reachable=False, updated_at=datetime(2024, 9, 1, tzinfo=UTC))
    assert next_baselines(old, sms_only, history) == history


def test_rule11_changed_address_rebaselines_from_the_update_month_ist() -> None:
    # 2024-03-31 19:00 UTC is 1 April 00:30 in India.
    updated = datetime(2024, 3, 31, 19, 0, tzinfo=UTC)
    old = registration()
    start = ((None, HOME),)
    assert next_baselines(old, registration(DELHI, updated_at=updated), start) == (
        (None, HOME),
        ("2024-04", DELHI),
    )
    moved_home = registration(permanent=PUNE, updated_at=updated)
    assert next_baselines(old, moved_home, start)[-1] == ("2024-04", PUNE)
    dropped = registration(None, updated_at=updated)
    assert next_baselines(registration(DELHI), dropped, ((None, DELHI),))[-1] == ("2024-04", HOME)


def test_rule11_rebaseline_never_goes_back() -> None:
    old = registration()
    history = ((None, HOME), ("2024-05", DELHI))
    earlier = registration(PUNE, updated_at=datetime(2024, 1, 5, tzinfo=UTC))
    assert next_baselines(registration(DELHI), earlier, history) == (
        (None, HOME),
        ("2024-05", PUNE),
    )
    assert next_baselines(old, replace(old, sms_reachable=False), history) == history


def test_rule11_rebaseline_takes_effect_from_its_month_and_restarts_the_streak() -> None:
    # Registered at home; in May the registry says Pune; the worker is seen in Delhi throughout.
    worker = profile(rebaselined=(("2024-05", PUNE),))
    observations = [*stay(DELHI, "2024-01", 2), obs("2024-05", DELHI)]
    (first,) = derive(observations, worker).changes
    assert (first.effective_month, first.current_location.district) == ("2024-01", DELHI.district)
    # From May the baseline is Pune: Delhi must be confirmed afresh, from May.
    timeline = derive(observations, worker)
    assert timeline.current_location.district == PUNE.district
    second = derive([*observations, obs("2024-06", DELHI)], worker).changes[-1]
    assert second.effective_month == "2024-05"
    assert second.previous_location.district == PUNE.district


def test_rule11_profile_from_registration() -> None:
    reg = registration(present=DELHI)
    worker = WorkerProfile.from_registration(reg, ((None, HOME), ("2024-06", DELHI)))
    assert worker == WorkerProfile(UAN, HOME, DELHI, True, ((None, HOME), ("2024-06", DELHI)))
    assert worker.baseline == DELHI
    assert WorkerProfile.from_registration(reg).baseline_history == ((None, DELHI),)


# --- rule 12: confidence ----------------------------------------------------------------------


def test_rule12_confidence_is_share_of_observed_months_in_window() -> None:
    observations = [
        obs("2024-01", HOME),
        obs("2024-02", PUNE),
        obs("2024-03", HOME),
        *stay(DELHI, "2024-04", 2),
    ]
    (change,) = derive(observations).changes
    assert change.confidence == 0.4  # window 2023-12..2024-05: 2 of 5 observed months in Delhi


def test_rule12_window_ends_at_confirming_month_and_skips_unobserved() -> None:
    observations = [
        obs("2023-10", NEARBY),  # outside the 6-month window 2023-11..2024-04
        obs("2023-12", PUNE),
        *stay(DELHI, "2024-03", 2),
        obs("2024-05", PUNE),  # after the confirming month
    ]
    (change,) = derive(observations).changes
    assert change.confidence == 0.6667  # 2 of 3, rounded to 4 decimals


def test_rule12_window_is_configurable() -> None:
    observations = [obs("2024-01", PUNE), obs("2024-02", HOME), *stay(DELHI, "2024-03", 2)]
    (wide,) = derive(observations).changes
    (narrow,) = derive(observations, params=RuleParams(confidence_window_months=2)).changes
    assert wide.confidence == 0.5
    assert narrow.confidence == 1.0


def test_rule12_same_inputs_same_confidence() -> None:
    observations = [obs("2024-01", PUNE), *stay(DELHI, "2024-02", 2)]
    values = {derive(observations[::step]).changes[0].confidence for step in (1, -1)}
    assert values == {0.6667}
