"""The member history (one summary per month) as properties: what the locator stores instead of
each transaction must give the rules the same answer, however the input was batched."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eshram_locator.domain.history import MemberHistory, may_move, transaction_digest
from eshram_locator.domain.model import District, Location
from eshram_locator.domain.months import add_months, month_index
from eshram_locator.domain.rules import (
    Observation,
    RuleParams,
    WorkerProfile,
    add_observation,
    derive_from_history,
    derive_timeline,
    history_of,
    may_confirm,
)
from tests.unit.test_rules_properties import START, observation_sets, params_strategy, profiles

SETTINGS = settings(max_examples=200, deadline=None)


@SETTINGS
@given(observations=observation_sets(), data=st.data())
def test_adding_in_any_order_and_any_batches_gives_the_same_history(
    observations: list[Observation], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(observations))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(shuffled)), max_size=4)))
    history = MemberHistory()
    start = 0
    for end in [*cuts, len(shuffled)]:
        # each batch is stored and read back, as the locator does between batches
        history = MemberHistory.from_bytes(history.to_bytes())
        for observation in shuffled[start:end]:
            add_observation(history, observation)
        start = end
    assert history == history_of(observations)


@SETTINGS
@given(observations=observation_sets(), data=st.data())
def test_a_replayed_transaction_changes_nothing(
    observations: list[Observation], data: st.DataObject
) -> None:
    history = history_of(observations)
    before = history.to_bytes()
    for observation in data.draw(st.lists(st.sampled_from(observations))) if observations else []:
        assert not add_observation(history, observation)
    assert history.to_bytes() == before


@SETTINGS
@given(observations=observation_sets(), profile=profiles())
def test_the_timeline_from_a_stored_history_is_the_timeline_from_the_observations(
    observations: list[Observation], profile: WorkerProfile
) -> None:
    params = RuleParams()
    stored = MemberHistory.from_bytes(history_of(observations).to_bytes())
    assert derive_from_history(profile, stored, params) == derive_timeline(
        profile, observations, params
    )


def test_a_month_summary_keeps_counts_shops_and_the_latest_presence_per_district() -> None:
    history = MemberHistory()
    mumbai = Location(27, 519, 4001, None, "400001")
    mumbai_other_shop = Location(27, 519, 4002, None, "400002")
    pune = Location(27, 521)
    assert history.add("PDS/1", "2025-04", 100, True, "FPS-B", mumbai)
    assert history.add("PDS/2", "2025-04", 300, True, "FPS-A", pune)
    assert history.add("PDS/3", "2025-04", 300, True, "FPS-C", mumbai_other_shop)
    assert history.add("PDS/4", "2025-04", 900, False, "FPS-D", pune)  # OTP: no presence
    assert not history.add("PDS/1", "2025-04", 100, True, "FPS-B", mumbai)
    assert len(history) == 4
    # latest presence at 300 in both districts; Mumbai has more presence transactions
    assert list(history.observed_months()) == [("2025-04", District(27, 519))]
    assert history.latest_location(District(27, 519), ["2025-04"]) == mumbai_other_shop
    assert history.transactions_in(["2025-04"]) == (4, ("FPS-A", "FPS-B", "FPS-C", "FPS-D"))


def test_the_digest_is_the_one_postgresql_computes_in_migration_0002() -> None:
    # SELECT ('x' || left(encode(sha256(convert_to('UP-PDS/UP-1', 'UTF8')), 'hex'), 16))
    #        ::bit(64)::bigint;  -- -3006266737520212964
    assert transaction_digest("UP-PDS/UP-1") == int.from_bytes(
        bytes.fromhex("d64798548209041c"), "big", signed=True
    )


@settings(max_examples=1_000, deadline=None)
@given(
    earlier=observation_sets(max_size=10),
    batch=observation_sets(max_size=4),
    profile=profiles(),
    stored=st.booleans(),
)
def test_when_may_move_says_no_the_timeline_keeps_its_changes_and_district(
    earlier: list[Observation], batch: list[Observation], profile: WorkerProfile, stored: bool
) -> None:
    """The locator skips deriving on may_move's word: it must never skip a real change.
    ``stored``: the history as the locator has it, read back from its stored form."""
    batch = [replace(o, transaction_id=f"b{o.transaction_id}") for o in batch]
    params = RuleParams()
    history = history_of(earlier)
    if stored:
        history = MemberHistory.from_bytes(history.to_bytes())
    timeline = derive_from_history(profile, history, params)
    before = {o.allocation_month: history.month_district(o.allocation_month) for o in batch}
    for observation in batch:
        add_observation(history, observation)
    rebaselines = profile.baseline_history[1:]
    last_rebaseline = rebaselines[-1][0] if rebaselines else None
    if may_move(history, before, timeline.current_location.district, last_rebaseline):
        return
    after = derive_from_history(profile, history, params)
    assert [c.event_id for c in after.changes] == [c.event_id for c in timeline.changes]
    assert after.current_location.district == timeline.current_location.district


@settings(max_examples=3_000, deadline=None)
@given(
    earlier=observation_sets(max_size=10),
    batch=observation_sets(max_size=4),
    profile=profiles(),
    params=params_strategy,
    stored=st.booleans(),
)
def test_when_may_confirm_says_no_the_timeline_keeps_its_changes_and_district(
    earlier: list[Observation],
    batch: list[Observation],
    profile: WorkerProfile,
    params: RuleParams,
    stored: bool,
) -> None:
    """The locator skips deriving on may_confirm's word for collections of months after every
    month of the history (the compiled merge's case): it must never skip a real change."""
    last = max((o.allocation_month for o in earlier), default=add_months(START, -1))
    batch = [  # the same months and gaps, moved after every earlier month
        replace(
            o,
            transaction_id=f"b{o.transaction_id}",
            allocation_month=add_months(
                last, 1 + month_index(o.allocation_month) - month_index(START)
            ),
        )
        for o in batch
    ]
    history = history_of(earlier)
    if stored:
        history = MemberHistory.from_bytes(history.to_bytes())
    timeline = derive_from_history(profile, history, params)
    for observation in batch:
        add_observation(history, observation)
    rebaselines = profile.baseline_history[1:]
    last_rebaseline = rebaselines[-1][0] if rebaselines else None
    added = {o.allocation_month for o in batch}
    current = timeline.current_location.district
    if may_confirm(history, added, current, last_rebaseline, params):
        return
    after = derive_from_history(profile, history, params)
    assert [c.event_id for c in after.changes] == [c.event_id for c in timeline.changes]
    assert after.current_location.district == current


def _re_registered_in_april(home: Location, present: Location) -> WorkerProfile:
    """A worker registered at ``home``, re-registered with ``present`` from 2024-04."""
    return WorkerProfile(
        uan="100000000017",
        permanent_address=home,
        present_address=present,
        sms_reachable=False,
        baselines=((None, home), ("2024-04", present)),
    )


def test_a_re_baseline_restarts_the_streak_may_confirm_counts() -> None:
    """Seen in Z in 2024-03 and 2024-04, re-registered in Y from 2024-04: the streak in Z
    restarts at 2024-04, so 2024-05 in Z is its second month and confirms a move (counting
    2024-03 too, it would be the third, and no change)."""
    home, present, away = Location(9, 140), Location(7, 77), Location(27, 519)
    profile = _re_registered_in_april(home, present)
    params = RuleParams(confirm_months=2)
    history = MemberHistory()
    history.add("PDS/1", "2024-03", 10, True, "FPS-1", away)
    history.add("PDS/2", "2024-04", 20, True, "FPS-1", away)
    timeline = derive_from_history(profile, history, params)
    assert timeline.changes == ()
    assert timeline.current_location == present
    history.add("PDS/3", "2024-05", 30, True, "FPS-1", away)
    assert may_confirm(history, {"2024-05"}, present.district, "2024-04", params)
    assert len(derive_from_history(profile, history, params).changes) == 1


def test_a_month_before_a_re_baseline_may_move_the_worker_even_where_they_are_now() -> None:
    """Seen in Y in 2024-02, re-registered in Y from 2024-04 (so current is Y): a 2024-03
    collection in Y confirms a move made before the re-baseline, a new change."""
    home, away = Location(9, 140), Location(27, 519)
    profile = _re_registered_in_april(home, away)
    history = MemberHistory()
    history.add("PDS/1", "2024-02", 10, True, "FPS-1", away)
    timeline = derive_from_history(profile, history, RuleParams())
    assert timeline.changes == ()
    assert timeline.current_location == away
    before = {"2024-03": history.month_district("2024-03")}
    history.add("PDS/2", "2024-03", 20, True, "FPS-1", away)
    assert may_move(history, before, away.district, "2024-04")
    assert len(derive_from_history(profile, history, RuleParams()).changes) == 1


@SETTINGS
@given(observations=observation_sets(), data=st.data())
def test_the_stored_form_reads_back_byte_for_byte_and_parses_only_touched_months(
    observations: list[Observation], data: st.DataObject
) -> None:
    stored = history_of(observations).to_bytes()
    history = MemberHistory.from_bytes(stored)
    assert history.to_bytes() == stored
    months = sorted({o.allocation_month for o in observations})
    if months:  # reading a month leaves its stored summary as it was
        history.month_district(data.draw(st.sampled_from(months)))
        assert history.to_bytes() == stored
    assert MemberHistory.from_bytes(stored) == history_of(observations)


def test_a_stored_form_of_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match="not a stored member history"):
        MemberHistory.from_bytes(b'{"s": [], "m": {}}')


def test_a_digest_counts_only_where_a_stored_digest_starts() -> None:
    """Stored digests are searched in their packed bytes: the 8 bytes of a new transaction's
    digest that span two stored digests are not a match."""
    home = Location(9, 901)
    packed = transaction_digest("IM-PDS/T-9").to_bytes(8, "big", signed=True)
    spanning = b"\x00" * 4 + packed + b"\x00" * 4  # two stored digests around it
    history = MemberHistory.from_bytes(bytes([1]) + (2).to_bytes(4, "big") + spanning)
    assert len(history) == 2
    assert history.add("IM-PDS/T-9", "2025-04", 0, True, "F", home)
    assert not history.add("IM-PDS/T-9", "2025-04", 0, True, "F", home)
    assert len(history) == 3
    stored = MemberHistory.from_bytes(history.to_bytes())
    assert stored.digests() == history.digests() >= {transaction_digest("IM-PDS/T-9")}
    assert not stored.add("IM-PDS/T-9", "2025-05", 1, True, "F", home)
