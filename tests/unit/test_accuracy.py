"""The accuracy scorer: matching derived changes to true moves."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eshram_locator.domain.model import (
    ChangeType,
    District,
    Evidence,
    Location,
    LocationChanged,
    Migration,
)
from eshram_locator.simulator.accuracy import (
    AccuracyReport,
    ObservedChange,
    final_changes,
    score,
)
from eshram_locator.simulator.truth import TrueMove

HOME = District(9, 901)
CITY = District(27, 2701)
OTHER = District(7, 701)
A = "100000000001"
B = "100000000002"


def _move(
    uan: str = A,
    to: District = CITY,
    expected: str | None = "2025-06",
    detectable: bool = True,
    true_month: str = "2025-06",
    source: District = HOME,
) -> TrueMove:
    kind = "return" if to == HOME else "inter_state"
    return TrueMove(uan, true_month, source, to, expected, detectable, kind)


def _change(
    uan: str = A, month: str = "2025-06", to: District = CITY, kind: ChangeType = ChangeType.MOVED
) -> ObservedChange:
    return ObservedChange(uan, month, to, kind)


def _rates(report: AccuracyReport) -> tuple[float, float, float]:
    return report.precision, report.recall, report.effective_month_accuracy


def test_perfect_match() -> None:
    report = score([_move()], [_change()])
    assert _rates(report) == (1.0, 1.0, 1.0)
    assert report.as_dict() == {
        "precision": 1.0,
        "recall": 1.0,
        "effective_month_accuracy": 1.0,
        "true_moves": 1,
        "detectable_moves": 1,
        "derived_changes": 1,
        "matched": 1,
    }


@pytest.mark.parametrize("month", ["2025-04", "2025-05", "2025-07", "2025-08"])
def test_within_two_months_matches_with_the_wrong_month(month: str) -> None:
    report = score([_move()], [_change(month=month)])
    assert _rates(report) == (1.0, 1.0, 0.0)
    assert report.matched == 1


@pytest.mark.parametrize("month", ["2025-03", "2025-09", "2026-06"])
def test_beyond_two_months_is_no_match(month: str) -> None:
    report = score([_move()], [_change(month=month)])
    assert _rates(report) == (0.0, 0.0, 1.0)
    assert report.matched == 0


def test_window_is_configurable() -> None:
    assert score([_move()], [_change(month="2025-09")], month_window=3).matched == 1
    assert score([_move()], [_change(month="2025-07")], month_window=0).matched == 0


def test_wrong_district_or_worker_is_no_match() -> None:
    report = score([_move()], [_change(to=OTHER), _change(uan=B)])
    assert (report.precision, report.recall) == (0.0, 0.0)
    assert report.derived_changes == 2


def test_missed_move_lowers_recall_only() -> None:
    report = score([_move(), _move(uan=B)], [_change()])
    assert _rates(report) == (1.0, 0.5, 1.0)


def test_spurious_change_lowers_precision_only() -> None:
    report = score([_move()], [_change(), _change(uan=B, to=OTHER)])
    assert _rates(report) == (0.5, 1.0, 1.0)


def test_undetectable_move_counts_for_precision_not_recall() -> None:
    undetectable = _move(detectable=False)
    report = score([undetectable], [_change()])
    assert report.detectable_moves == 0
    assert report.matched == 1
    assert _rates(report) == (1.0, 1.0, 1.0)
    # ... and missing it costs nothing
    assert score([undetectable], []).recall == 1.0


def test_move_never_observed_is_matched_around_its_true_month() -> None:
    unseen = _move(expected=None, detectable=False, true_month="2025-10")
    report = score([unseen], [_change(month="2025-11")])
    assert report.matched == 1
    assert report.effective_month_accuracy == 0.0  # no expected month to agree with


def test_one_change_matches_one_move() -> None:
    report = score([_move()], [_change(month="2025-07"), _change(month="2025-06")])
    assert report.matched == 1
    assert _rates(report) == (0.5, 1.0, 1.0)  # the closer change was the one matched


def test_greedy_closest_first() -> None:
    """Two stays in the same district: each change goes to the move it is closest to."""
    there = _move(expected="2025-05", true_month="2025-05")
    again = _move(expected="2025-08", true_month="2025-08", source=OTHER)
    changes = [_change(month="2025-07"), _change(month="2025-05")]
    report = score([there, again], changes)
    assert report.matched == 2
    assert _rates(report) == (1.0, 1.0, 0.5)


def test_detectable_move_preferred_on_ties() -> None:
    seen = _move(expected="2025-06")
    unseen = _move(expected="2025-08", detectable=False, source=OTHER)
    report = score([unseen, seen], [_change(month="2025-07")])
    assert report.recall == 1.0


def test_seasonal_stay_and_return() -> None:
    truth = [
        _move(expected="2025-06", true_month="2025-06"),
        _move(to=HOME, source=CITY, expected="2025-10", true_month="2025-10"),
    ]
    changes = [
        _change(month="2025-06"),
        _change(month="2025-10", to=HOME, kind=ChangeType.RETURNED_HOME),
    ]
    assert _rates(score(truth, changes)) == (1.0, 1.0, 1.0)


def test_retracted_entries_are_ignored() -> None:
    report = score([_move()], [_change(), _change(month="2025-05", kind=ChangeType.RETRACTED)])
    assert report.derived_changes == 1
    assert _rates(report) == (1.0, 1.0, 1.0)


def test_empty_inputs() -> None:
    report = score([], [])
    assert _rates(report) == (1.0, 1.0, 1.0)
    assert (report.true_moves, report.derived_changes, report.matched) == (0, 0, 0)
    assert _rates(score([], [_change()])) == (0.0, 1.0, 1.0)
    assert _rates(score([_move()], [])) == (1.0, 0.0, 1.0)


def _event(
    event_id: str, month: str, kind: ChangeType, supersedes: str | None = None
) -> LocationChanged:
    location = Location(CITY.state_lgd, CITY.district_lgd)
    return LocationChanged(
        event_id=event_id,
        change_type=kind,
        uan=A,
        previous_location=Location(HOME.state_lgd, HOME.district_lgd),
        current_location=location,
        effective_month=month,
        detected_at=datetime(2025, 8, 1, tzinfo=UTC),
        migration=Migration.INTER_STATE,
        home_state_lgd=HOME.state_lgd,
        evidence=Evidence(2, 2, month, month, ("FPS-27-2701-001",)),
        confidence=1.0,
        present_address_matches=False,
        supersedes_event_id=supersedes,
    )


def test_final_changes_apply_retractions() -> None:
    events = [
        _event("e1", "2025-05", ChangeType.MOVED),
        _event("r1", "2025-05", ChangeType.RETRACTED, supersedes="e1"),
        _event("e2", "2025-06", ChangeType.MOVED),
        _event("e2", "2025-06", ChangeType.MOVED),  # replayed: stands once
    ]
    assert final_changes(events) == [_change(month="2025-06")]
    assert _rates(score([_move()], final_changes(events))) == (1.0, 1.0, 1.0)


def test_final_changes_keep_a_change_published_again_after_retraction() -> None:
    events = [
        _event("e1", "2025-06", ChangeType.MOVED),
        _event("r1", "2025-06", ChangeType.RETRACTED, supersedes="e1"),
        _event("e1", "2025-06", ChangeType.MOVED),
    ]
    assert final_changes(events) == [_change(month="2025-06")]
