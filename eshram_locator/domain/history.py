"""A member's collections, kept as one small summary per allocation month.

The rules never need the individual transactions of a member, only, for each month:

- ``transactions`` and the distinct ``fps_ids`` of every own transaction (rule 6's evidence);
- for each district with presence (rule 1) in that month: how many presence transactions it
  had, the time of its latest one, and the transaction id and shop location of that latest one
  (ties on the time: the greatest id). That gives rule 3's monthly location (latest presence,
  ties by count, then the smallest district) and the location a change reports;
- the keys of the transactions already counted (rule 8), as 64-bit digests.

So the locator stores one summary per member instead of one row per transaction, and a
recomputation reads one value per worker. ``MemberHistory`` is that summary, with its own
stored form (``to_bytes``) that adapters keep as it is. The same set of observations gives the
same summary in any order of ``add``: each field is a count, a set, or a maximum.
"""

from __future__ import annotations

import struct
from bisect import insort
from collections.abc import Container, Iterable
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any

import orjson

from eshram_locator.domain.model import AuthMode, District, Location, RationCollection

try:
    from eshram_locator.domain import _history_merge
except ImportError:  # built without a C compiler: MemberHistory.add does all the work
    _history_merge = None  # type: ignore[assignment]
else:
    _history_merge.configure(
        tuple(mode for mode in AuthMode if mode.is_biometric),
        tuple(mode for mode in AuthMode if not mode.is_biometric),
        RationCollection,
        Location,
    )

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# A month entry: [transactions, sorted distinct fps_ids, [presence entry, ...]]
_TRANSACTIONS, _FPS_IDS, _PRESENCE = 0, 1, 2
# A presence entry: one district of one month.
_STATE, _DISTRICT, _COUNT, _LATEST_US, _LATEST_KEY, _SUBDISTRICT, _VILLAGE, _PINCODE = range(8)

MonthEntry = list[Any]

# The stored form (``MemberHistory.to_bytes``): format tag and digest count, the digests
# (big-endian int64), then one line per month in month order, separated by a newline (JSON
# text holds none): "YYYY-MM", "1" if the month has presence else "0", the month entry as JSON.
_FORMAT = 1
_HEADER = struct.Struct(">BI")
_MONTH_BYTES = 7
_PRESENT, _ABSENT, _LINE_END = b"1", b"0", b"\n"


def compiled_merge_available() -> bool:
    """Whether ``MemberHistory.merge_later`` has its C extension (built by ``pip install``)."""
    return _history_merge is not None


def transaction_digest(key: str) -> int:
    """Rule 8's memory of a transaction key: the first 8 bytes of its SHA-256, signed.

    The same value as PostgreSQL's
    ``('x' || left(encode(sha256(convert_to(key, 'UTF8')), 'hex'), 16))::bit(64)::bigint``.
    """
    return int.from_bytes(sha256(key.encode()).digest()[:8], "big", signed=True)


def epoch_us(instant: datetime) -> int:
    """Microseconds since the Unix epoch (``instant`` must be timezone-aware)."""
    return (instant - _EPOCH) // _MICROSECOND


class MemberHistory:
    """The month summaries of one member and the digests of the transactions they count.

    Stored (``to_bytes``) so that a batch pays only for the months it touches: the digests as
    packed 64-bit integers, then one line per month (the month, whether it has presence, its
    summary as JSON). ``from_bytes`` splits the lines only when a month up to the last stored
    one is read, and parses a month's JSON when it is first read; ``to_bytes`` writes back the
    untouched months as they were read. The common batch, a month after all the stored ones,
    reads and writes the stored lines as one piece.
    """

    __slots__ = (
        "_changed",
        "_digests",
        "_last_present",
        "_last_stored",
        "_lines",
        "_months",
        "_new_digests",
        "_tail",
    )

    def __init__(self) -> None:
        self._digests = b""  # the packed digests read from storage (searched, never unpacked)
        self._new_digests: dict[bytes, None] = {}  # counted since, packed, in order
        self._tail = b""  # the stored month lines
        self._last_stored = ""  # the month of the last (latest) stored line, "" for none
        self._last_present = False  # whether that month has presence
        self._lines: dict[str, bytes] | None = {}  # month -> its stored line; None: not split
        self._months: dict[str, MonthEntry] = {}  # parsed months
        self._changed: set[str] = set()  # parsed months changed since read

    # --- storage form --------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, stored: bytes) -> MemberHistory:
        """From ``to_bytes()``'s value."""
        history = cls()
        if not stored:
            return history
        tag, count = _HEADER.unpack_from(stored)
        if tag != _FORMAT:
            raise ValueError(f"not a stored member history (format {tag})")
        at = _HEADER.size + 8 * count
        history._digests = stored[_HEADER.size : at]
        if len(stored) > at:
            history._tail = tail = stored[at:]
            last = tail.rfind(_LINE_END) + 1
            history._last_stored = tail[last : last + _MONTH_BYTES].decode()
            history._last_present = tail[last + _MONTH_BYTES] == _PRESENT[0]
            history._lines = None
        return history

    def _stored_lines(self) -> dict[str, bytes]:
        lines = self._lines
        if lines is None:
            lines = self._lines = {
                line[:_MONTH_BYTES].decode(): line for line in self._tail.split(_LINE_END)
            }
        return lines

    def _line(self, month: str) -> bytes:
        key = month.encode()
        if len(key) != _MONTH_BYTES:
            raise ValueError(f"not a YYYY-MM month: {month!r}")
        entry = self._months[month]
        return b"".join((key, _PRESENT if entry[_PRESENCE] else _ABSENT, orjson.dumps(entry)))

    def to_bytes(self) -> bytes:
        digests = self._digests
        if self._new_digests:
            digests += b"".join(self._new_digests)
        header = _HEADER.pack(_FORMAT, len(digests) // 8)
        if self._lines is None:  # no stored month was read: changes are months after them all
            changed = [self._line(month) for month in sorted(self._changed)]
            return b"".join((header, digests, _LINE_END.join([self._tail, *changed])))
        lines = self._lines
        if self._changed:
            lines = dict(lines)
            for month in self._changed:
                lines[month] = self._line(month)
        return b"".join(
            (header, digests, _LINE_END.join([lines[month] for month in sorted(lines)]))
        )

    def last_month(self) -> str | None:
        """The latest month the history holds (None for none): the month of its last stored
        line, which adapters keep beside the stored form (``LaterMonths``)."""
        latest = max(self._last_stored, max(self._changed, default=""))
        return latest or None

    def _entry(self, month: str) -> MonthEntry | None:
        entry = self._months.get(month)
        if entry is None:
            if month > self._last_stored:  # after every stored month
                return None
            line = self._stored_lines().get(month)
            if line is None:
                return None
            entry = self._months[month] = orjson.loads(line[_MONTH_BYTES + 1 :])
        return entry

    def _all_months(self) -> dict[str, MonthEntry]:
        for month in self._stored_lines().keys() - self._months.keys():
            self._entry(month)
        return self._months

    def __len__(self) -> int:
        """How many distinct transactions the history counts."""
        return len(self._digests) // 8 + len(self._new_digests)

    def digests(self) -> frozenset[int]:
        """The digests (``transaction_digest``) of the transactions the history counts."""
        packed = self._digests + b"".join(self._new_digests)
        return frozenset(struct.unpack(f">{len(packed) // 8}q", packed))

    def _counted(self, digest: bytes) -> bool:
        """Whether the packed digest is one of the history's (aligned matches only)."""
        if digest in self._new_digests:
            return True
        stored = self._digests
        at = stored.find(digest)
        while at >= 0:
            if at % 8 == 0:
                return True
            at = stored.find(digest, at + 1)
        return False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MemberHistory):
            return NotImplemented
        return self.digests() == other.digests() and self._all_months() == other._all_months()

    __hash__ = None  # type: ignore[assignment]  # mutable

    # --- adding transactions -------------------------------------------------------------

    def add(
        self,
        key: str,
        allocation_month: str,
        transacted_at_us: int,
        presence: bool,
        fps_id: str,
        location: Location,
    ) -> bool:
        """Count one transaction; False (and nothing changes) when its key was counted before."""
        digest = sha256(key.encode()).digest()[:8]  # transaction_digest, packed
        if self._counted(digest):
            return False
        self._new_digests[digest] = None
        entry = self._entry(allocation_month)
        if entry is None:
            entry = self._months[allocation_month] = [0, [], []]
        self._changed.add(allocation_month)
        entry[_TRANSACTIONS] += 1
        fps_ids: list[str] = entry[_FPS_IDS]
        if fps_id not in fps_ids:
            insort(fps_ids, fps_id)
        if not presence:
            return True
        state, district = location.state_lgd, location.district_lgd
        for place in entry[_PRESENCE]:
            if place[_STATE] == state and place[_DISTRICT] == district:
                place[_COUNT] += 1
                if (transacted_at_us, key) > (place[_LATEST_US], place[_LATEST_KEY]):
                    place[_LATEST_US] = transacted_at_us
                    place[_LATEST_KEY] = key
                    place[_SUBDISTRICT] = location.subdistrict_lgd
                    place[_VILLAGE] = location.village_town_lgd
                    place[_PINCODE] = location.pincode
                return True
        entry[_PRESENCE].append(
            [
                state,
                district,
                1,
                transacted_at_us,
                key,
                location.subdistrict_lgd,
                location.village_town_lgd,
                location.pincode,
            ]
        )
        entry[_PRESENCE].sort(key=_district_order)
        return True

    def merge_later(
        self,
        collections: list[RationCollection],
        current: tuple[int, int] | None,
        last_rebaseline: str | None,
    ) -> tuple[int, bool] | None:
        """Add one member's collections, each transaction once, in one compiled step (the C
        extension ``_history_merge``), when the history is unchanged since it was read and
        every collection is of a month after every stored month: the common batch.

        Returns (transactions counted, whether the worker's timeline may have changed): the
        count of ``add`` calls that returned True, and ``may_move(history, before, current,
        last_rebaseline)`` with ``before`` None for each month (none was stored); False when
        ``current`` is None (no registered worker). None: nothing was done (another case, or
        no compiled extension); ``add`` each collection instead. The keys are those of
        ``store.observation_key``: "source/transaction_id".
        """
        if _history_merge is None or self._changed or self._new_digests:
            return None
        merged = _history_merge.merge_later(
            self._digests, self._tail, collections, current, last_rebaseline
        )
        if merged is None:
            return None
        digests, tail, counted, moves, last_month, last_present, _ = merged
        if counted:
            self._digests, self._tail = digests, tail
            self._last_stored, self._last_present = last_month, last_present
            self._lines = None
        return counted, moves

    # --- what the rules read -------------------------------------------------------------

    def observed_months(self) -> list[tuple[str, District]]:
        """Rule 3: (month, monthly district) for each month with presence, in month order."""
        months = self._all_months()
        found = []
        for month in sorted(months):
            places = months[month][_PRESENCE]
            if places:
                found.append((month, _monthly_district(places)))
        return found

    def recent_observed(self, count: int) -> list[tuple[str, District]]:
        """The latest ``count`` entries of ``observed_months()``, latest first; parses only
        the months it reads."""
        found: list[tuple[str, District]] = []
        for month in sorted(self._stored_lines().keys() | self._months.keys(), reverse=True):
            district = self.month_district(month)
            if district is not None:
                found.append((month, district))
                if len(found) == count:
                    break
        return found

    def month_district(self, month: str) -> District | None:
        """Rule 3 for one month: its monthly district, None when it has no presence."""
        entry = self._entry(month)
        if entry is None or not entry[_PRESENCE]:
            return None
        return _monthly_district(entry[_PRESENCE])

    def latest_location(self, district: District, months: Iterable[str]) -> Location:
        """Rule 3: the shop location of the latest presence in ``district`` over ``months``
        (ties on the time: the greatest transaction key)."""
        best: list[Any] | None = None
        for month in months:
            for place in self._month(month)[_PRESENCE]:
                if place[_STATE] != district.state_lgd or place[_DISTRICT] != district.district_lgd:
                    continue
                if best is None or (place[_LATEST_US], place[_LATEST_KEY]) > (
                    best[_LATEST_US],
                    best[_LATEST_KEY],
                ):
                    best = place
        if best is None:
            raise ValueError(f"no presence in {district} in {list(months)}")
        return Location(
            best[_STATE], best[_DISTRICT], best[_SUBDISTRICT], best[_VILLAGE], best[_PINCODE]
        )

    def transactions_in(self, months: Iterable[str]) -> tuple[int, tuple[str, ...]]:
        """Rule 6's evidence: (own transactions, sorted distinct shops) over ``months``."""
        count = 0
        shops: set[str] = set()
        for month in months:
            entry = self._month(month)
            count += entry[_TRANSACTIONS]
            shops.update(entry[_FPS_IDS])
        return count, tuple(sorted(shops))

    def _month(self, month: str) -> MonthEntry:
        entry = self._entry(month)
        if entry is None:
            raise KeyError(month)
        return entry

    def latest_presence(self, excluding: Container[str]) -> str:
        """The latest month with presence that is not in ``excluding`` ("" for none)."""
        months = self._months
        found = max(
            (
                month
                for month, entry in months.items()
                if entry[_PRESENCE] and month not in excluding
            ),
            default="",
        )
        if self._lines is None and self._last_present and self._last_stored not in excluding:
            # no stored month was parsed, and the latest stored one has presence
            return max(found, self._last_stored)
        stored = max(
            (
                month
                for month, line in self._stored_lines().items()
                if line[_MONTH_BYTES] == _PRESENT[0]
                and month not in months
                and month not in excluding
            ),
            default="",
        )
        return max(found, stored)


#: What one member's collections add to a stored history whose months all come before theirs,
#: known without reading it (``later_months``): ``(digests, lines, counted, first_month,
#: last_month, district)``, a plain tuple (one per member of a batch, made in C):
#: ``digests`` the packed digests of the ``counted`` transactions, in order; ``lines`` the
#: stored lines of their months, in month order; ``first_month`` the earliest month of the
#: collections (they can be appended only to a history whose months all come before it);
#: ``last_month`` the latest; ``district`` the monthly district (rule 3) where every new month
#: with presence places the member, None for no presence.
#:
#: Appended to such a stored history, with no digest of ``digests`` already in it, they give
#: ``merge_later``'s stored form: the header with ``counted`` more digests, the stored digests,
#: ``digests``, the stored lines and ``lines``, joined by a newline when there were stored
#: lines. And ``merge_later``'s timeline answer is then False (nothing to derive) when the
#: member has no registered worker, or ``district`` is None, or the worker has no
#: re-baseline (rule 11) and is where ``district`` says; otherwise it may be True, and
#: ``may_confirm`` on the history after the append tells.
LaterMonths = tuple[bytes, bytes, int, str, str, "tuple[int, int] | None"]


def later_months(collections: list[RationCollection]) -> LaterMonths | None:
    """``LaterMonths`` of one member's collections (keys as ``merge_later``'s). None when
    the compiled merge declines them or is not built, or when their months with presence do
    not all give one monthly district."""
    if _history_merge is None:
        return None
    return _history_merge.later_months(collections)


def may_move(
    history: MemberHistory,
    before: dict[str, District | None],
    current: tuple[int, int],
    last_rebaseline: str | None,
) -> bool:
    """Could transactions just added to ``history`` change the worker's timeline?

    ``before`` = the monthly district (``month_district``) of each month they touched, taken
    before adding; ``current`` = the current district the timeline gave before;
    ``last_rebaseline`` = the month of the worker's latest re-baseline (rule 11), None if none.

    False (the timeline's changes and current district stay as they were, so nothing needs
    deriving) when every touched month kept its monthly district (rules 1-3: other members' and
    non-biometric transactions, or presence that is not the month's latest, only refine
    evidence), or is a month after every month observed before that places the worker where
    they already are, with no re-baseline since (rule 5 then has nothing to confirm: the
    location in effect in that month is ``current``).
    """
    last_observed: str | None = None
    for month, district in sorted(before.items()):
        now_there = history.month_district(month)
        if now_there == district:
            continue
        if now_there == current:
            if last_observed is None:
                last_observed = _last_observed_before(history, before)
            if (last_observed == "" or month > last_observed) and (
                last_rebaseline is None or last_rebaseline <= last_observed
            ):
                continue
        return True
    return False


def _last_observed_before(history: MemberHistory, before: dict[str, District | None]) -> str:
    """The latest month with presence before the adds ("" for none): a month the adds touched
    had presence before exactly when its ``before`` district is not None."""
    return history.latest_presence({month for month, was in before.items() if was is None})


_DISTRICTS: dict[tuple[int, int], District] = {}


def _district(state: int, district: int) -> District:
    """Shared District values: the rules compare them for every month of every worker."""
    key = (state, district)
    found = _DISTRICTS.get(key)
    if found is None:
        if len(_DISTRICTS) > 100_000:
            _DISTRICTS.clear()
        found = _DISTRICTS[key] = District(state, district)
    return found


def _monthly_district(places: list[list[Any]]) -> District:
    """Latest presence; ties on its time by the most presence, then the smallest district."""
    if len(places) == 1:
        place = places[0]
        return _district(place[_STATE], place[_DISTRICT])
    latest = max(place[_LATEST_US] for place in places)
    tied = [place for place in places if place[_LATEST_US] == latest]
    best = min(tied, key=lambda p: (-p[_COUNT], p[_STATE], p[_DISTRICT]))
    return _district(best[_STATE], best[_DISTRICT])


def _district_order(place: list[Any]) -> tuple[int, int]:
    return place[_STATE], place[_DISTRICT]
