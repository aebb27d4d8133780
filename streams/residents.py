"""Who lives where now, among the workers of the partitions this process owns. Pure.

An in-memory index derived from the ``workers`` table (district -> uans whose current location
is in it), rebuilt from the table after every rebalance and kept up to date with each update,
so the query API can list a district without scanning the table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from eshram_locator.domain.model import District
from streams.worker_view import WorkerView


@dataclass(slots=True)
class Residents:
    by_district: dict[District, set[str]] = field(default_factory=dict)

    def rebuild(self, views: Iterable[WorkerView]) -> None:
        self.by_district = {}
        for view in views:
            self.update(None, view)

    def update(self, old: WorkerView | None, new: WorkerView | None) -> None:
        before = _district(old)
        after = _district(new)
        subject = new if new is not None else old
        if subject is None or before == after:
            return
        uan = subject.uan
        if before is not None:
            members = self.by_district.get(before)
            if members is not None:
                members.discard(uan)
                if not members:
                    del self.by_district[before]
        if after is not None:
            self.by_district.setdefault(after, set()).add(uan)

    def page(self, district: District, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` uans in ``district`` greater than ``after``, in order."""
        members = self.by_district.get(district, set())
        ordered = sorted(uan for uan in members if after is None or uan > after)
        return ordered[:limit]


def _district(view: WorkerView | None) -> District | None:
    if view is None:
        return None
    location = view.current_location()
    return None if location is None else location.district
