"""Rules 5, 7 and 8 as properties: the answer is a function of the set of observations."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from eshram_locator.domain.model import AuthMode, ChangeType, Location, LocationChanged
from eshram_locator.domain.months import add_months
from eshram_locator.domain.rules import (
    Observation,
    RuleParams,
    WorkerProfile,
    derive_timeline,
    location_event_id,
    reconcile,
)

UAN = "100000000017"
HOME = Location(9, 140, 700)
PLACES = (
    HOME,
    Location(9, 140, 701),  # home district, another sub-district
    Location(9, 141),
    Location(7, 77, 1),
    Location(7, 77, 2),
    Location(27, 519),
)
START = "2024-01"
DETECTED = datetime(2025, 6, 1, tzinfo=UTC)
SETTINGS = settings(max_examples=150, deadline=None)

# Biometric twice as likely as not, fingerprint the commonest.
auth_modes = st.sampled_from(
    [
        AuthMode.FINGERPRINT,
        AuthMode.FINGERPRINT,
        AuthMode.IRIS,
        AuthMode.FACE,
        AuthMode.OTP,
        AuthMode.MANUAL,
    ]
)


@st.composite
def observation_sets(draw: st.DrawFn, max_size: int = 14) -> list[Observation]:
    """Few months, places and instants, so that streaks, gaps and timestamp ties are common."""
    count = draw(st.integers(min_value=0, max_value=max_size))
    observations = []
    for index in range(count):
        month = add_months(START, draw(st.integers(min_value=0, max_value=11)))
        year, mon = (int(part) for part in month.split("-"))
        observations.append(
            Observation(
                transaction_id=f"t{index}",
                allocation_month=month,
                transacted_at=datetime(year, mon, draw(st.sampled_from([1, 15, 28])), tzinfo=UTC),
                auth_mode=draw(auth_modes),
                fps_id=f"fps-{draw(st.integers(min_value=0, max_value=3))}",
                fps_location=draw(st.sampled_from(PLACES)),
            )
        )
    return observations


@st.composite
def profiles(draw: st.DrawFn) -> WorkerProfile:
    """A worker, sometimes re-registered in 2024-04 with the present address they have now."""
    present = draw(st.sampled_from([None, HOME, PLACES[3], PLACES[5]]))
    rebaselined = draw(st.booleans()) and present is not None
    return WorkerProfile(
        uan=UAN,
        permanent_address=HOME,
        present_address=present,
        sms_reachable=draw(st.booleans()),
        baselines=((None, HOME), ("2024-04", present)) if rebaselined and present else (),
    )


params_strategy = st.builds(
    RuleParams,
    confirm_months=st.integers(min_value=1, max_value=3),
    max_gap_months=st.integers(min_value=0, max_value=3),
    confidence_window_months=st.integers(min_value=1, max_value=6),
)


def apply(active: dict[str, LocationChanged], events: list[LocationChanged]) -> None:
    for event in events:
        if event.change_type is ChangeType.RETRACTED:
            assert event.supersedes_event_id in active
            del active[event.supersedes_event_id]
        else:
            assert event.event_id not in active
            active[event.event_id] = event


@SETTINGS
@given(observation_sets(), profiles(), params_strategy, st.data())
def test_any_order_gives_the_same_timeline(
    observations: list[Observation],
    worker: WorkerProfile,
    params: RuleParams,
    data: st.DataObject,
) -> None:
    shuffled = data.draw(st.permutations(observations))
    assert derive_timeline(worker, shuffled, params) == derive_timeline(
        worker, observations, params
    )


@SETTINGS
@given(observation_sets(), profiles(), params_strategy, st.data())
def test_incremental_arrival_ends_with_the_all_at_once_changes(
    observations: list[Observation],
    worker: WorkerProfile,
    params: RuleParams,
    data: st.DataObject,
) -> None:
    arrival = data.draw(st.permutations(observations))
    active: dict[str, LocationChanged] = {}
    for end in range(1, len(arrival) + 1):
        timeline = derive_timeline(worker, arrival[:end], params)
        apply(active, reconcile(worker, timeline, list(active.values()), DETECTED))
        assert set(active) == {change.event_id for change in timeline.changes}
    final = derive_timeline(worker, observations, params)
    assert set(active) == {change.event_id for change in final.changes}
    assert reconcile(worker, final, list(active.values()), DETECTED) == []


@SETTINGS
@given(observation_sets(), profiles(), params_strategy, st.data())
def test_duplicating_an_observation_changes_nothing(
    observations: list[Observation],
    worker: WorkerProfile,
    params: RuleParams,
    data: st.DataObject,
) -> None:
    if not observations:
        return
    copies = data.draw(st.lists(st.sampled_from(observations), min_size=1, max_size=4))
    assert derive_timeline(worker, observations + copies, params) == derive_timeline(
        worker, observations, params
    )


@SETTINGS
@given(
    st.lists(st.integers(min_value=0, max_value=11), min_size=0, max_size=10, unique=True),
    st.integers(min_value=0, max_value=11),
    st.lists(st.sampled_from(PLACES[2:]), min_size=1, max_size=3),
    profiles().filter(lambda worker: not worker.baselines),  # one baseline all along
    params_strategy.filter(lambda params: params.confirm_months >= 2),
    st.lists(
        st.tuples(
            st.integers(0, 11),
            st.sampled_from(PLACES),
            st.sampled_from([AuthMode.OTP, AuthMode.MANUAL]),
        ),
        max_size=6,
    ),
)
def test_a_one_month_trip_never_emits_a_change(
    home_months: list[int],
    trip_month: int,
    trip_places: list[Location],
    worker: WorkerProfile,
    params: RuleParams,
    noise: list[tuple[int, Location, AuthMode]],
) -> None:
    """At the baseline every observed month but one, whatever happens in that one month."""
    baseline = worker.baseline
    observations = [
        Observation(
            f"h{m}",
            add_months(START, m),
            datetime(2024, 1, 1, tzinfo=UTC),
            AuthMode.FINGERPRINT,
            "home",
            baseline,
        )
        for m in home_months
        if m != trip_month
    ]
    month = add_months(START, trip_month)
    observations += [
        Observation(
            f"trip{i}", month, datetime(2024, 1, 2, tzinfo=UTC), AuthMode.IRIS, "away", place
        )
        for i, place in enumerate(trip_places)
    ]
    observations += [
        Observation(
            f"n{i}", add_months(START, m), datetime(2024, 1, 3, tzinfo=UTC), auth, "x", place
        )
        for i, (m, place, auth) in enumerate(noise)
    ]
    timeline = derive_timeline(worker, observations, params)
    assert timeline.changes == ()
    assert timeline.current_location == baseline
    assert reconcile(worker, timeline, [], DETECTED) == []


@SETTINGS
@given(
    observation_sets(),
    profiles().filter(lambda worker: not worker.baselines),  # one baseline all along
    params_strategy,
)
def test_every_change_is_confirmed_and_ids_are_deterministic(
    observations: list[Observation], worker: WorkerProfile, params: RuleParams
) -> None:
    timeline = derive_timeline(worker, observations, params)
    monthly = dict(timeline.monthly)
    ids = [change.event_id for change in timeline.changes]
    assert len(set(ids)) == len(ids)
    previous = worker.baseline
    for change in timeline.changes:
        district = change.current_location.district
        assert district != previous.district
        assert change.previous_location == previous
        assert change.evidence.months_observed == params.confirm_months
        confirming = [
            m for m in monthly if change.effective_month <= m <= change.evidence.last_month
        ]
        assert len(confirming) == params.confirm_months
        assert all(monthly[m] == district for m in confirming)
        assert 0 < change.confidence <= 1
        assert change.event_id == location_event_id(
            UAN, change.effective_month, district, change.change_type
        )
        assert uuid.UUID(change.event_id).version == 5
        previous = change.current_location
    assert timeline.current_location == previous
    assert derive_timeline(worker, list(observations), params) == timeline


@SETTINGS
@given(observation_sets(), profiles())
def test_non_biometric_observations_never_move_anyone(
    observations: list[Observation], worker: WorkerProfile
) -> None:
    non_biometric = [o for o in observations if not o.auth_mode.is_biometric]
    timeline = derive_timeline(worker, non_biometric, RuleParams(confirm_months=1))
    assert timeline.changes == ()
    assert timeline.monthly == ()
