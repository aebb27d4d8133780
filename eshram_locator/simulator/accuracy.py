"""How well the locator's output matches a simulation's ground truth. Pure.

Inputs:

* ``truth``: the simulation's ``TrueMove`` list (``Simulation.ground_truth()``).
* ``changes``: the locator's final changes as ``ObservedChange`` (uan, effective month, new
  district, change type): every ``MOVED`` / ``RETURNED_HOME`` it emitted and did not retract
  later. ``final_changes`` derives them from the ``LocationChanged`` events in emission order.
  ``RETRACTED`` entries passed to ``score`` are ignored.

Matching, per uan: a derived change can match a true move of the same uan with the same
``to_district`` whose reference month (``expected_effective_month``, or ``true_month`` when the
move was never observed) is within ``month_window`` (default 2) months of the change's
``effective_month``. Pairs are taken greedily, closest first (ties: the detectable move, then the
earlier reference month, then the earlier change); each change and each move is matched at most
once.

Definitions (an empty denominator gives 1.0: nothing wrong emitted, nothing missed):

* ``precision`` = matched derived changes / derived changes. A derived change that matches a
  true move the rules could not be expected to see (``detectable`` false) is still correct.
* ``recall`` = matched detectable true moves / detectable true moves. Non-detectable moves are
  not in the denominator (nor in the numerator).
* ``effective_month_accuracy`` = among all matched pairs, the share whose ``effective_month``
  equals the move's ``expected_effective_month``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from eshram_locator.domain.model import ChangeType, District, LocationChanged
from eshram_locator.domain.months import month_index
from eshram_locator.simulator.truth import TrueMove

DEFAULT_MONTH_WINDOW = 2


@dataclass(frozen=True, slots=True)
class ObservedChange:
    """A change the locator emitted and did not retract."""

    uan: str
    effective_month: str
    to_district: District
    change_type: ChangeType

    @classmethod
    def of(cls, event: LocationChanged) -> ObservedChange:
        return cls(
            uan=event.uan,
            effective_month=event.effective_month,
            to_district=event.current_location.district,
            change_type=event.change_type,
        )


@dataclass(frozen=True, slots=True)
class AccuracyReport:
    precision: float
    recall: float
    effective_month_accuracy: float
    true_moves: int
    detectable_moves: int
    derived_changes: int
    matched: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def final_changes(events: Iterable[LocationChanged]) -> list[ObservedChange]:
    """The changes still standing after the events, in emission order.

    A ``RETRACTED`` event removes the change named by its ``supersedes_event_id``; an event id
    seen again (a replay, or a recomputation giving the same change) stands once.
    """
    standing: dict[str, LocationChanged] = {}
    for event in events:
        if event.change_type is ChangeType.RETRACTED:
            if event.supersedes_event_id is not None:
                standing.pop(event.supersedes_event_id, None)
        else:
            standing[event.event_id] = event
    return [ObservedChange.of(event) for event in standing.values()]


def score(
    truth: Sequence[TrueMove],
    changes: Sequence[ObservedChange],
    month_window: int = DEFAULT_MONTH_WINDOW,
) -> AccuracyReport:
    """Precision, recall and effective-month accuracy (see the module docstring)."""
    derived = [change for change in changes if change.change_type is not ChangeType.RETRACTED]
    moves_by_uan: dict[str, list[int]] = defaultdict(list)
    for index, move in enumerate(truth):
        moves_by_uan[move.uan].append(index)

    # Candidate pairs: (distance, not detectable, reference month, change month, move, change).
    candidates: list[tuple[int, bool, int, int, int, int]] = []
    for change_index, change in enumerate(derived):
        change_month = month_index(change.effective_month)
        for move_index in moves_by_uan.get(change.uan, ()):
            move = truth[move_index]
            if move.to_district != change.to_district:
                continue
            reference = month_index(move.expected_effective_month or move.true_month)
            distance = abs(change_month - reference)
            if distance <= month_window:
                candidates.append(
                    (
                        distance,
                        not move.detectable,
                        reference,
                        change_month,
                        move_index,
                        change_index,
                    )
                )
    candidates.sort()

    matched_moves: set[int] = set()
    matched_changes: set[int] = set()
    exact = 0
    for _, _, _, _, move_index, change_index in candidates:
        if move_index in matched_moves or change_index in matched_changes:
            continue
        matched_moves.add(move_index)
        matched_changes.add(change_index)
        if derived[change_index].effective_month == truth[move_index].expected_effective_month:
            exact += 1

    detectable = [index for index, move in enumerate(truth) if move.detectable]
    found = sum(1 for index in detectable if index in matched_moves)
    matched = len(matched_changes)
    return AccuracyReport(
        precision=_share(matched, len(derived)),
        recall=_share(found, len(detectable)),
        effective_month_accuracy=_share(exact, matched),
        true_moves=len(truth),
        detectable_moves=len(detectable),
        derived_changes=len(derived),
        matched=matched,
    )


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 1.0
