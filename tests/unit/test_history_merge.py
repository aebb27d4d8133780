"""The compiled merge of a member's collections (``MemberHistory.merge_later``, the C extension
``_history_merge``) against the general path it stands in for: ``add`` for each collection,
then ``may_move``. Either it declines (None, nothing changed) or its history is the general
path's byte for byte, with the same count and the same ``may_move``."""

from __future__ import annotations

import sys
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from eshram_locator.domain import history as history_module
from eshram_locator.domain.history import (
    LaterMonths,
    MemberHistory,
    compiled_merge_available,
    epoch_us,
    later_months,
    may_move,
)
from eshram_locator.domain.model import (
    AuthMode,
    District,
    Location,
    Portability,
    RationCollection,
)
from eshram_locator.domain.months import add_months
from eshram_locator.postgres.store import observation_key

START = "2024-01"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
# Few districts, shops and instants, so that ties on the time and repeated shops are common.
PLACES = (
    Location(9, 140, 700, 5, "221001"),
    Location(9, 140, 701),
    Location(9, 141, None, 17, None),
    Location(7, 77, 1),
    Location(27, 519, 4001, None, "400001"),
)
SOURCES = ("PDS-UP", "PDS-MH", "P")
FIELDS = [field.name for field in fields(RationCollection)]
PLACE_FIELDS = [field.name for field in fields(Location)]


@st.composite
def collections(
    draw: st.DrawFn, months: tuple[int, int], max_size: int = 8
) -> list[RationCollection]:
    """Collections of one member in months START + [months[0], months[1]]; transaction ids
    repeat across sources (distinct keys) and within one (the same transaction again)."""
    found = []
    for _ in range(draw(st.integers(0, max_size))):
        month = add_months(START, draw(st.integers(*months)))
        found.append(
            RationCollection(
                transaction_id=f"t{draw(st.integers(0, 12))}",
                source=draw(st.sampled_from(SOURCES)),
                ration_card_id="RC-1",
                member_ref="M-1",
                auth_mode=draw(st.sampled_from(list(AuthMode))),
                fps_id=draw(st.sampled_from(["FPS-2", "FPS-10", "FPS-1", "F"])),
                fps_location=draw(st.sampled_from(PLACES)),
                card_state_lgd=9,
                portability=Portability.NONE,
                allocation_month=month,
                transacted_at=T0 + timedelta(minutes=draw(st.integers(0, 3))),
                items=(),
            )
        )
    return found


def add_collection(history: MemberHistory, c: RationCollection) -> bool:
    """``MemberHistory.add`` of one collection, as the locator's general path calls it."""
    return history.add(
        observation_key(c.source, c.transaction_id),
        c.allocation_month,
        epoch_us(c.transacted_at),
        c.auth_mode.is_biometric,
        c.fps_id,
        c.fps_location,
    )


def add_all(history: MemberHistory, batch: list[RationCollection]) -> int:
    return sum(add_collection(history, c) for c in batch)


def general_path(
    stored: bytes,
    batch: list[RationCollection],
    current: tuple[int, int] | None,
    last_rebaseline: str | None,
) -> tuple[MemberHistory, int, bool]:
    """What the locator does for a member without the compiled merge."""
    history = MemberHistory.from_bytes(stored)
    before = {c.allocation_month: history.month_district(c.allocation_month) for c in batch}
    counted = add_all(history, batch)
    moves = current is not None and may_move(history, before, current, last_rebaseline)
    return history, counted, moves


def unique(batch: list[RationCollection]) -> list[RationCollection]:
    """Each transaction once, as the locator hands a member's collections over."""
    return list({(c.source, c.transaction_id): c for c in batch}.values())


def test_the_extension_is_built() -> None:
    assert compiled_merge_available(), "eshram_locator.domain._history_merge is not built"


CURRENT = st.one_of(st.none(), st.sampled_from([(9, 140), (9, 141), (7, 77), (1, 1)]))
REBASELINE = st.one_of(st.none(), st.sampled_from(["", "2024-02", "2024-05", "2025-01"]))
PROPERTY = settings(max_examples=1_000, deadline=None)


@PROPERTY
@given(
    earlier=collections((0, 5)),
    batch=collections((0, 9)),
    current=CURRENT,
    last_rebaseline=REBASELINE,
    parsed=st.lists(st.integers(0, 9), max_size=3),
)
def test_the_merge_is_the_general_path_or_declines(
    earlier: list[RationCollection],
    batch: list[RationCollection],
    current: tuple[int, int] | None,
    last_rebaseline: str | None,
    parsed: list[int],
) -> None:
    """``parsed``: months the rules read before the merge (read, not changed)."""
    seed = MemberHistory()
    add_all(seed, earlier)
    stored = seed.to_bytes()
    batch = unique(batch)
    expected, counted, moves = general_path(stored, batch, current, last_rebaseline)

    history = MemberHistory.from_bytes(stored)
    for month in parsed:
        history.month_district(add_months(START, month))
    merged = history.merge_later(batch, current, last_rebaseline)
    last_stored = max((c.allocation_month for c in earlier), default="")
    if merged is None:
        assert not batch or min(c.allocation_month for c in batch) <= last_stored
        assert history.to_bytes() == stored
        return
    assert merged == (counted, moves)
    assert history.to_bytes() == expected.to_bytes()
    assert history == expected
    read_back = MemberHistory.from_bytes(history.to_bytes())
    assert read_back.observed_months() == expected.observed_months()


@PROPERTY
@given(batch=collections((0, 3), max_size=12), current=CURRENT, last_rebaseline=REBASELINE)
def test_a_new_member_always_takes_the_compiled_merge(
    batch: list[RationCollection],
    current: tuple[int, int] | None,
    last_rebaseline: str | None,
) -> None:
    batch = unique(batch)
    expected, counted, moves = general_path(b"", batch, current, last_rebaseline)
    history = MemberHistory()
    assert history.merge_later(batch, current, last_rebaseline) == (
        (counted, moves) if batch else None
    )
    assert history.to_bytes() == expected.to_bytes()


def appended(stored: bytes, later: LaterMonths) -> bytes:
    """What ``LocatorStore.append_histories`` writes over ``stored`` (its statement, in
    Python): the count grown, the new digests after the stored ones, the new lines after the
    stored lines."""
    digests, lines, counted, _, _, _ = later
    stored = stored or MemberHistory().to_bytes()
    count = int.from_bytes(stored[1:5], "big")
    tail = stored[5 + 8 * count :]
    return b"".join(
        (
            stored[:1],
            (count + counted).to_bytes(4, "big"),
            stored[5 : 5 + 8 * count],
            digests,
            tail,
            b"\n" if tail else b"",
            lines,
        )
    )


def stored_digest_found(stored: bytes, later: LaterMonths) -> bool:
    """Whether the statement finds one of ``later``'s digests among the stored ones: at any
    offset, as PostgreSQL's ``position`` does (then it leaves the row to be read)."""
    if not stored:
        return False
    count = int.from_bytes(stored[1:5], "big")
    region = stored[5 : 5 + 8 * count]
    digests = later[0]
    return any(digests[i : i + 8] in region for i in range(0, len(digests), 8))


@PROPERTY
@given(
    earlier=collections((0, 5)),
    batch=st.one_of(collections((0, 9)), collections((6, 9), max_size=3)),
    current=CURRENT,
    last_rebaseline=REBASELINE,
)
def test_later_months_appended_unread_are_what_the_merge_stores(
    earlier: list[RationCollection],
    batch: list[RationCollection],
    current: tuple[int, int] | None,
    last_rebaseline: str | None,
) -> None:
    """Where the store appends ``later_months`` without reading the history (months after
    every stored one, no digest stored), the result is the merge's, byte for byte; and where
    it appends them for a worker (no re-baseline, ``district`` None or the current one), the
    merge would have found nothing to derive."""
    seed = MemberHistory()
    add_all(seed, earlier)
    stored = seed.to_bytes()
    batch = unique(batch)
    later = later_months(batch)
    expected, counted, moves = general_path(stored, batch, current, last_rebaseline)
    fresh = general_path(b"", batch, None, None)[0]
    new_months = {c.allocation_month for c in batch}
    districts = {fresh.month_district(month) for month in new_months} - {None}
    if later is None:
        assert not batch or len(districts) > 1  # no collection, or not one district
        return
    _, _, later_counted, first_month, last_month, district = later
    assert district == (districts.pop() if districts else None)
    assert first_month == min(new_months)
    assert last_month == max(new_months) == fresh.last_month()
    assert appended(b"", later) == fresh.to_bytes()
    if first_month <= (seed.last_month() or "") or stored_digest_found(stored, later):
        event("read: not after every stored month, or a digest stored")
        return  # the store reads this member
    event("appended unread")
    assert appended(stored, later) == expected.to_bytes()
    assert later_counted == counted
    assert MemberHistory.from_bytes(appended(stored, later)).last_month() == last_month
    if current is None or (last_rebaseline is None and district in (None, current)):
        assert not moves


def test_a_history_knows_its_last_month() -> None:
    history = MemberHistory()
    assert history.last_month() is None
    add_all(history, [one("2024-03"), one("2024-01", transaction_id="t2")])
    assert history.last_month() == "2024-03"
    read = MemberHistory.from_bytes(history.to_bytes())
    assert read.last_month() == "2024-03"
    add_all(read, [one("2024-02", transaction_id="t3")])
    assert read.last_month() == "2024-03"
    assert read.merge_later([one("2024-05", transaction_id="t4")], None, None) is None  # changed
    merged = MemberHistory.from_bytes(history.to_bytes())
    assert merged.merge_later([one("2024-05", transaction_id="t4")], None, None) == (1, False)
    assert merged.last_month() == "2024-05"


def test_later_months_of_several_districts_are_left_to_the_read() -> None:
    assert later_months([one("2024-04"), one("2024-05", transaction_id="t2")]) is not None
    away = one("2024-05", transaction_id="t2", fps_location=PLACES[3])
    assert later_months([one("2024-04"), away]) is None
    otp_away = replace(away, auth_mode=AuthMode.OTP)  # no presence: no district
    found = later_months([one("2024-04"), otp_away])
    assert found is not None
    assert found[5] == District(9, 140)
    assert later_months([one(fps_id='FPS "1"')]) is None  # the compiled merge declines
    assert later_months([]) is None


def one(month: str = "2024-03", **changes: object) -> RationCollection:
    fields: dict[str, object] = {
        "transaction_id": "t1",
        "source": "PDS-UP",
        "ration_card_id": "RC-1",
        "member_ref": "M-1",
        "auth_mode": AuthMode.FINGERPRINT,
        "fps_id": "FPS-1",
        "fps_location": PLACES[0],
        "card_state_lgd": 9,
        "portability": Portability.NONE,
        "allocation_month": month,
        "transacted_at": T0,
        "items": (),
    }
    fields.update(changes)
    return RationCollection(**fields)  # type: ignore[arg-type]


# What JSON writes escaped (the compiled merge declines an id holding one), and the characters
# next to them in ASCII, which it writes as they are. It checks ids eight bytes at a time.
ESCAPED = [chr(code) for code in range(0x20)] + ['"', "\\", "\x7f", "é"]
WRITTEN_AS_THEY_ARE = [" ", "!", "#", "[", "]", "~"]


@pytest.mark.parametrize("at", range(20))
def test_an_id_json_would_escape_is_declined_wherever_the_character_is(at: int) -> None:
    def with_char(char: str) -> str:
        return "F" * at + char + "F" * (19 - at)

    for char in ESCAPED:
        for field in ("fps_id", "transaction_id", "source"):
            assert later_months([one(**{field: with_char(char)})]) is None, (field, char)
    for char in WRITTEN_AS_THEY_ARE:
        for field in ("fps_id", "transaction_id", "source"):
            batch = [one(**{field: with_char(char)})]
            later = later_months(batch)
            assert later is not None, (field, char)
            assert appended(b"", later) == general_path(b"", batch, None, None)[0].to_bytes()


def test_what_the_merge_leaves_to_the_general_path() -> None:
    seed = MemberHistory()
    add_all(seed, [one("2024-03", transaction_id="t0")])
    stored = seed.to_bytes()
    declined = [
        [one("2024-03")],  # the last stored month
        [one("2024-02")],  # an earlier month
        [one("2024-04"), one("2024-01", transaction_id="t2")],  # one of them earlier
        [one(fps_id='FPS "1"')],  # JSON would escape these
        [one(fps_id="FPS\\1")],
        [one(source="PDS-\u0926")],
        [one(fps_location=Location(9, 140, None, None, "22\n1001"))],
        [one(transacted_at=datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=5))))],
        [one(transacted_at=datetime(2024, 1, 1))],  # naive
        [one(fps_location=Location(9, 2**70))],
        [one(fps_location=Location(True, 140))],  # type: ignore[arg-type]
        [one("2024-4")],
    ]
    for batch in declined:
        history = MemberHistory.from_bytes(stored)
        assert history.merge_later(batch, (9, 140), None) is None, batch
        assert history.to_bytes() == stored
    history = MemberHistory.from_bytes(stored)
    lookalike = SimpleNamespace(**{name: getattr(one(), name) for name in FIELDS})
    assert history.merge_later([lookalike], None, None) is None  # type: ignore[list-item]
    lookalike_place = SimpleNamespace(**{name: getattr(PLACES[0], name) for name in PLACE_FIELDS})
    assert history.merge_later([one(fps_location=lookalike_place)], None, None) is None
    after_add = MemberHistory.from_bytes(stored)
    add_all(after_add, [one("2024-04", transaction_id="t5")])
    assert after_add.merge_later([one("2024-05")], None, None) is None  # changed since read


@pytest.mark.parametrize("extensions", [False, True], ids=["portable", "sha-extensions"])
def test_both_sha256_codes_give_the_general_paths_digests(extensions: bool) -> None:
    """Keys of one, two and three SHA-256 blocks ("source/transaction_id": a block holds up to
    55 bytes of key), hashed by the portable code and by the processor's SHA extensions
    (where it has none, the portable code twice)."""
    merge = history_module._history_merge
    assert merge is not None
    chosen = merge.sha_extensions()
    try:
        in_use = merge.sha_extensions(extensions)
        assert in_use == (extensions and chosen)  # at import: the extensions where there are
        batch = [
            one(transaction_id=f"t{length}-" + "x" * length, fps_id=f"FPS-{length}")
            for length in range(0, 140, 3)
        ]
        expected, counted, moves = general_path(b"", batch, (9, 140), None)
        history = MemberHistory()
        assert history.merge_later(batch, (9, 140), None) == (counted, moves)
        assert history.to_bytes() == expected.to_bytes()
        assert history.digests() == expected.digests()
        assert counted == len(batch)
    finally:
        merge.sha_extensions(chosen)


def test_the_keys_of_stored_transactions_are_not_counted_again() -> None:
    seed = MemberHistory()
    add_all(seed, [one("2024-03")])
    history = MemberHistory.from_bytes(seed.to_bytes())
    # the same transaction, a later month: counted before, nothing changes
    assert history.merge_later([one("2024-04")], (9, 140), None) == (0, False)
    assert history.to_bytes() == seed.to_bytes()


def test_without_the_extension_the_history_declines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_module, "_history_merge", None)
    assert MemberHistory().merge_later([one()], None, None) is None


def test_a_new_presence_elsewhere_may_move_and_one_at_home_may_not() -> None:
    seed = MemberHistory()
    add_all(seed, [one("2024-03", transaction_id="t0")])
    stored = seed.to_bytes()
    at_home = MemberHistory.from_bytes(stored)
    assert at_home.merge_later([one("2024-04")], (9, 140), None) == (1, False)
    away = MemberHistory.from_bytes(stored)
    assert away.merge_later([one("2024-04", fps_location=PLACES[3])], (9, 140), None) == (1, True)
    rebaselined = MemberHistory.from_bytes(stored)
    assert rebaselined.merge_later([one("2024-04")], (9, 140), "2024-04") == (1, True)
    assert at_home.month_district("2024-04") == District(9, 140)


def test_merging_leaks_no_reference() -> None:
    batch = [one("2024-04"), one("2024-05", transaction_id="t2", auth_mode=AuthMode.OTP)]
    stored = MemberHistory().to_bytes()
    for _ in range(100):  # warm the caches
        MemberHistory.from_bytes(stored).merge_later(batch, (9, 140), None)
    before = sys.gettotalrefcount() if hasattr(sys, "gettotalrefcount") else None
    counts = [sys.getrefcount(c) for c in batch] + [sys.getrefcount(PLACES[0])]
    for _ in range(1_000):
        MemberHistory.from_bytes(stored).merge_later(batch, (9, 140), None)
        MemberHistory.from_bytes(stored).merge_later([one("2024-4")], (9, 140), None)
        later_months(batch)
        later_months([one("2024-4")])
    assert [sys.getrefcount(c) for c in batch] + [sys.getrefcount(PLACES[0])] == counts
    if before is not None:
        assert sys.gettotalrefcount() - before < 100


def test_many_collections_with_long_ids_merge_as_the_general_path_does() -> None:
    """Past the stack space the C code keeps for a member (8 collections, 1 KB of lines):
    its heap arrays and a buffer that grows."""
    batch = [
        one(
            f"2025-{1 + i % 12:02d}",
            transaction_id=f"T-{i}-" + "x" * 80,
            source="PDS-" + "y" * 40,
            fps_id=f"FPS-{i % 7}",
            fps_location=PLACES[i % len(PLACES)],
            auth_mode=list(AuthMode)[i % len(AuthMode)],
            transacted_at=T0 + timedelta(minutes=i % 3),
        )
        for i in range(60)
    ]
    expected, counted, moves = general_path(b"", batch, (9, 140), None)
    history = MemberHistory()
    assert history.merge_later(batch, (9, 140), None) == (counted, moves)
    assert len(history.to_bytes()) > 4_000
    assert history.to_bytes() == expected.to_bytes()
