"""Ground truth of a simulation: every real change of residence district, and whether the rules
could see it.

Pure functions over one worker's month-by-month plan, so that tests can hand-craft plans.

Definitions (month indexes count from the first simulated month):

* ``residence[i]`` is the district the worker really lives in during month ``i``. Every
  ``i >= 1`` with ``residence[i] != residence[i - 1]`` is a ``TrueMove`` (a move back to the
  permanent-address district has ``kind == "return"``). A one-month trip is not a change of
  residence, so it is never a ``TrueMove``.
* ``observed[i]`` is the worker's *monthly location* (rule 3): the district of their latest
  presence transaction of allocation month ``i`` (own ``member_ref``, biometric auth), ``None``
  when they have none. Only these months are "observed"; household, OTP and MANUAL collections
  never place anyone (rule 1).
* ``confirmed_changes`` runs rule 5 over ``observed`` from the registry baseline (rule 4): a
  district becomes current when it is the monthly location in ``confirm_months`` consecutive
  observed months; months without presence are skipped, and more than ``max_gap_months``
  of them in a row between two observed months break the streak. The effective month is the
  first month of the confirming streak.
* A true move to ``D`` whose stay lasts months ``[s, e)`` (until the next move) is
  **detectable** when rule 5 confirms ``D`` with an effective month inside ``[s, e)``; its
  ``expected_effective_month`` is that month. In the usual case that is the first
  presence-observed month of the stay, with presence there again in the next observed month
  (no gap over ``max_gap_months``). Two refinements make it exactly what the rules can give:
  a trip elsewhere right after arriving pushes the confirmation (and the effective month) to the
  next streak at ``D``; and a move back to a district the rules never left (e.g. the return
  from a seasonal stay that was never confirmed) is not detectable, since no change is due.
  A move that is not detectable keeps as ``expected_effective_month`` the first month with
  presence at ``D`` in its stay, or ``None`` when there is none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eshram_locator.domain.model import District

KIND_INTER_DISTRICT = "inter_district"
KIND_INTER_STATE = "inter_state"
KIND_SEASONAL = "seasonal"
KIND_RETURN = "return"
MOVE_KINDS = (KIND_INTER_DISTRICT, KIND_INTER_STATE, KIND_SEASONAL, KIND_RETURN)


@dataclass(frozen=True, slots=True)
class TrueMove:
    """A real change of residence district in the simulation."""

    uan: str
    true_month: str  # YYYY-MM: first month lived at to_district
    from_district: District
    to_district: District
    expected_effective_month: str | None  # what rule 5 gives (see module docstring)
    detectable: bool
    kind: str  # one of MOVE_KINDS


@dataclass(frozen=True, slots=True)
class ConfirmedChange:
    """A change rule 5 makes: ``district`` current from month ``effective`` (index)."""

    effective: int  # first month of the confirming streak
    confirmed_in: int  # month that completed the streak
    district: District


def streak_broken(previous: int, month: int, max_gap_months: int) -> bool:
    """More than ``max_gap_months`` months without presence between two observed months."""
    return month - previous - 1 > max_gap_months


def confirmed_changes(
    baseline: District,
    observed: Sequence[District | None],
    confirm_months: int,
    max_gap_months: int,
) -> list[ConfirmedChange]:
    """Rule 5 over a worker's monthly locations, starting at ``baseline`` (rule 4)."""
    if confirm_months < 1:
        raise ValueError("confirm_months must be at least 1")
    changes: list[ConfirmedChange] = []
    current = baseline
    candidate: District | None = None
    streak = 0
    start = 0
    last: int | None = None
    for month, location in enumerate(observed):
        if location is None:
            continue
        if last is not None and streak_broken(last, month, max_gap_months):
            candidate, streak = None, 0
        last = month
        if location == current:
            candidate, streak = None, 0
            continue
        if location == candidate:
            streak += 1
        else:
            candidate, streak, start = location, 1, month
        if streak >= confirm_months:
            changes.append(ConfirmedChange(start, month, location))
            current, candidate, streak = location, None, 0
    return changes


def true_moves(
    uan: str,
    months: Sequence[str],
    residence: Sequence[District],
    observed: Sequence[District | None],
    baseline: District,
    home: District,
    confirm_months: int,
    max_gap_months: int,
    kinds: Mapping[int, str] | None = None,
) -> list[TrueMove]:
    """The true moves of one worker, with detectability (see the module docstring).

    ``kinds`` overrides the kind of the move starting at a month index (the simulator marks
    seasonal departures); otherwise a move to ``home`` is ``"return"``, a move to another state
    ``"inter_state"`` and any other ``"inter_district"``.
    """
    if not len(months) == len(residence) == len(observed):
        raise ValueError("months, residence and observed must have the same length")
    changes = confirmed_changes(baseline, observed, confirm_months, max_gap_months)
    starts = [i for i in range(1, len(residence)) if residence[i] != residence[i - 1]]
    moves: list[TrueMove] = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(residence)
        to = residence[start]
        source = residence[start - 1]
        confirmed = next(
            (c for c in changes if c.district == to and start <= c.effective < end), None
        )
        if confirmed is not None:
            expected: int | None = confirmed.effective
        else:
            expected = next((i for i in range(start, end) if observed[i] == to), None)
        if to == home:
            kind = KIND_RETURN
        elif kinds is not None and start in kinds:
            kind = kinds[start]
        elif to.state_lgd != source.state_lgd:
            kind = KIND_INTER_STATE
        else:
            kind = KIND_INTER_DISTRICT
        moves.append(
            TrueMove(
                uan=uan,
                true_month=months[start],
                from_district=source,
                to_district=to,
                expected_effective_month=None if expected is None else months[expected],
                detectable=confirmed is not None,
                kind=kind,
            )
        )
    return moves


# --- JSON lines --------------------------------------------------------------------------------


def _district_json(district: District) -> dict[str, int]:
    return {"state_lgd": district.state_lgd, "district_lgd": district.district_lgd}


def _district_from_json(value: Any) -> District:
    if not isinstance(value, dict):
        raise ValueError(f"not a district: {value!r}")
    return District(int(value["state_lgd"]), int(value["district_lgd"]))


def move_to_json(move: TrueMove) -> str:
    """One JSON line (keys sorted, so the same move always gives the same bytes)."""
    return json.dumps(
        {
            "uan": move.uan,
            "true_month": move.true_month,
            "from_district": _district_json(move.from_district),
            "to_district": _district_json(move.to_district),
            "expected_effective_month": move.expected_effective_month,
            "detectable": move.detectable,
            "kind": move.kind,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def move_from_json(line: str) -> TrueMove:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError(f"not a TrueMove object: {line!r}")
    expected = data["expected_effective_month"]
    return TrueMove(
        uan=str(data["uan"]),
        true_month=str(data["true_month"]),
        from_district=_district_from_json(data["from_district"]),
        to_district=_district_from_json(data["to_district"]),
        expected_effective_month=None if expected is None else str(expected),
        detectable=bool(data["detectable"]),
        kind=str(data["kind"]),
    )


def write_ground_truth(path: str | Path, moves: Iterable[TrueMove]) -> int:
    """Write the moves as JSON lines (UTF-8, ``\\n``); returns how many were written."""
    count = 0
    with Path(path).open("w", encoding="utf-8", newline="\n") as out:
        for move in moves:
            out.write(move_to_json(move))
            out.write("\n")
            count += 1
    return count


def read_ground_truth(path: str | Path) -> list[TrueMove]:
    """Read what ``write_ground_truth`` wrote (blank lines are skipped)."""
    with Path(path).open(encoding="utf-8") as lines:
        return [move_from_json(line) for line in lines if line.strip()]
