"""Migration flows: monthly aggregates of where workers from each district are. Pure.

Definitions (key: month M, origin district A, destination district B; A is the district of the
worker's permanent address, from the registry):

- ``moves_in(M, A, B)`` = number of *active* (not retracted) MOVED and RETURNED_HOME changes
  effective in M that bring a worker whose origin is A to B. A RETRACTED change takes its
  change out again (the figure decreases).
- ``workers(M, A, B)`` = stock: number of workers with origin A whose location as of the end
  of M is B, counting workers from their first active change on (workers who never changed
  location are the registry's to count, not the change stream's). The location as of M is the
  current location of the worker's latest active change effective in or before M.

``workers`` is a step function of M; a record is published for every month in which some
worker of origin A entered or left B (the points where the step function may change), and
again whenever a figure of such a month changes. For any later month, the stock is that of the
latest published month before it.

How it is computed, idempotently: a worker's *contribution* is a pure function of their view
(origin + active changes): per (M, A, B) a net entry (+1 entering B in M, -1 leaving it) and
the moves. A partition's partial sums are the sums of its workers' contributions (rebuilt from
the table after a restart, never counted incrementally across a crash). The partial sums of a
pair (A, B) are sent, as absolute values per month and source partition, to the pair's ledger;
the ledger keeps the latest partials of every partition and derives the figures: replays send
the same absolute values again and change nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from eshram_locator.domain.model import District, LocationChanged, MigrationFlow
from streams.worker_view import WorkerView

FlowCell = tuple[str, District, District]
"""(month, origin, destination)."""

Pair = tuple[District, District]
"""(origin, destination)."""


@dataclass(frozen=True, slots=True)
class Counts:
    net_in: int = 0
    moves_in: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.net_in + other.net_in, self.moves_in + other.moves_in)

    def __neg__(self) -> Counts:
        return Counts(-self.net_in, -self.moves_in)

    @property
    def is_zero(self) -> bool:
        return self.net_in == 0 and self.moves_in == 0


def contributions(view: WorkerView | None) -> dict[FlowCell, Counts]:
    """One worker's contribution to the flow cells (empty without a registration)."""
    if view is None or view.origin is None:
        return {}
    origin = view.origin
    out: dict[FlowCell, Counts] = {}
    previous: District | None = None
    for change in view.active_changes():
        month, destination = change.effective_month, change.current.district
        _add(out, (month, origin, destination), Counts(1, 1))
        if previous is not None:
            _add(out, (month, origin, previous), Counts(-1, 0))
        previous = destination
    return {cell: counts for cell, counts in out.items() if not counts.is_zero}


def _add(into: dict[FlowCell, Counts], cell: FlowCell, counts: Counts) -> None:
    into[cell] = into.get(cell, Counts()) + counts


def pair_key(pair: Pair) -> str:
    return f"{pair[0]}:{pair[1]}"


def flow_key(month: str, pair: Pair) -> str:
    """The ``eshram.migration-flows.v1`` key: ``<month>:<from>:<to>``, districts as SS-DDDD."""
    return f"{month}:{pair[0]}:{pair[1]}"


def parse_pair(key: str) -> Pair:
    origin, destination = key.split(":")
    return _district(origin), _district(destination)


def _district(text: str) -> District:
    state, district = text.split("-")
    return District(int(state), int(district))


# --- partial sums of the partitions this worker owns -------------------------------------------


@dataclass(slots=True)
class PartitionFlows:
    """Partial sums of the workers' contributions, per source partition."""

    cells: dict[int, dict[FlowCell, Counts]] = field(default_factory=dict)

    def rebuild(self, views: Iterable[WorkerView]) -> None:
        self.cells = {}
        for view in views:
            self.apply(view.partition, {}, contributions(view))

    def apply(
        self, partition: int, old: Mapping[FlowCell, Counts], new: Mapping[FlowCell, Counts]
    ) -> None:
        sums = self.cells.setdefault(partition, {})
        for cell, counts in old.items():
            _add(sums, cell, -counts)
        for cell, counts in new.items():
            _add(sums, cell, counts)
        for cell in {*old, *new}:
            if sums.get(cell, Counts()).is_zero:
                sums.pop(cell, None)

    def partials(self, partition: int, pairs: Iterable[Pair]) -> dict[Pair, dict[str, Counts]]:
        """Absolute partial sums of these pairs in this partition, by month (empty: none)."""
        wanted = set(pairs)
        out: dict[Pair, dict[str, Counts]] = {pair: {} for pair in wanted}
        for (month, origin, destination), counts in self.cells.get(partition, {}).items():
            if (origin, destination) in wanted:
                out[(origin, destination)][month] = counts
        return out


def touched_pairs(*contributions_: Mapping[FlowCell, Counts]) -> set[Pair]:
    return {(origin, dest) for cells in contributions_ for _, origin, dest in cells}


def pairs_to_send(
    before: Mapping[FlowCell, Counts],
    after: Mapping[FlowCell, Counts],
    origin: District | None,
    change: LocationChanged | None,
) -> set[Pair]:
    """The pairs whose partials a message re-sends: those the worker's contribution touches
    before or after it, and those the change itself names (from ``origin`` to the district it
    reached and to the one it left).

    The change's own pairs matter on a replay after a crash. The stored view already holds the
    change's effect then (``before == after``), so a retraction that took the worker out of a
    pair no longer shows that pair; a RETRACTED event copies the retracted change's locations,
    so its pairs are those it emptied, and re-sending them (absolute, maybe empty) repairs a
    ledger that never received the retraction."""
    pairs = touched_pairs(before, after)
    if origin is not None and change is not None:
        pairs.add((origin, change.current_location.district))
        if change.previous_location is not None:
            pairs.add((origin, change.previous_location.district))
    return pairs


# --- the ledger of one pair (value of the ``flow_pairs`` table) --------------------------------


@dataclass(frozen=True, slots=True)
class PairLedger:
    """Latest partial sums of one (origin, destination) pair by month and source partition,
    and the figures last published."""

    partials: dict[str, dict[int, Counts]] = field(default_factory=dict)
    published: dict[str, tuple[int, int]] = field(default_factory=dict)

    def with_partials(self, partition: int, months: Mapping[str, Counts]) -> PairLedger:
        """Replace this partition's partials (absolute): months absent from ``months`` are 0."""
        partials = {month: dict(by_partition) for month, by_partition in self.partials.items()}
        for by_partition in partials.values():
            by_partition.pop(partition, None)
        for month, counts in months.items():
            partials.setdefault(month, {})[partition] = counts
        return PairLedger(partials, dict(self.published))

    def figures(self) -> dict[str, tuple[int, int]]:
        """(workers, moves_in) for every month ever seen, in month order."""
        out: dict[str, tuple[int, int]] = {}
        stock = 0
        for month in sorted({*self.partials, *self.published}):
            total = sum(self.partials.get(month, {}).values(), Counts())
            stock += total.net_in
            out[month] = (max(stock, 0), max(total.moves_in, 0))
        return out

    def publish(self, pair: Pair) -> tuple[PairLedger, list[MigrationFlow]]:
        """The flows whose figures differ from those last published, and the new ledger."""
        figures = self.figures()
        changed = [
            MigrationFlow(
                month=month,
                from_state_lgd=pair[0].state_lgd,
                from_district_lgd=pair[0].district_lgd,
                to_state_lgd=pair[1].state_lgd,
                to_district_lgd=pair[1].district_lgd,
                workers=workers,
                moves_in=moves,
            )
            for month, (workers, moves) in figures.items()
            if self.published.get(month) != (workers, moves)
        ]
        return PairLedger(self.partials, figures), changed

    def to_json(self) -> dict[str, Any]:
        return {
            "partials": {
                month: {str(p): [c.net_in, c.moves_in] for p, c in by_partition.items()}
                for month, by_partition in self.partials.items()
            },
            "published": {month: list(value) for month, value in self.published.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> PairLedger:
        if not data:
            return cls()
        return cls(
            {
                month: {int(p): Counts(int(c[0]), int(c[1])) for p, c in by_partition.items()}
                for month, by_partition in data["partials"].items()
            },
            {month: (int(v[0]), int(v[1])) for month, v in data["published"].items()},
        )


def partials_to_json(partition: int, months: Mapping[str, Counts]) -> dict[str, Any]:
    """The message a partition sends to a pair's ledger (internal topic, JSON)."""
    return {"p": partition, "months": {m: [c.net_in, c.moves_in] for m, c in months.items()}}


def partials_from_json(data: Mapping[str, Any]) -> tuple[int, dict[str, Counts]]:
    months = {m: Counts(int(v[0]), int(v[1])) for m, v in data["months"].items()}
    return int(data["p"]), months
