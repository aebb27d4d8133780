"""The locator's PostgreSQL adapter: set-based reads and writes for one batch, in one transaction.

Every method takes many keys and issues one statement (or one COPY), never one round trip per
event. ``LocatorStore`` holds an open connection; ``unit_of_work()`` gives the transaction in
which a batch's state, its outgoing events (the outbox) and the consumer offsets commit together.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import accumulate
from typing import Any

import orjson
import psycopg
from psycopg.rows import TupleRow, class_row
from psycopg.types.json import set_json_loads

from eshram_locator.domain.history import LaterMonths, MemberHistory
from eshram_locator.errors import StaleMemberRowError

try:
    from eshram_locator.postgres import _append_parameters as _compiled_append_parameters
except ImportError:  # built without a C compiler: _append_parameters packs them in Python
    _compiled_append_parameters = None  # type: ignore[assignment]


@dataclass(slots=True)  # not frozen: one per member read, and a frozen __init__ is 4x slower
class StoredWorker:
    uan: str
    member_ref: str
    #: The WorkerRegistration (Avro). Read only when ``profile`` is None (rows written before
    #: migration 0002); written with every registration.
    registration: bytes | None
    #: What the rules need of the registration, as JSON text (see ``locating.profile_json``).
    profile: bytes | None
    baselines: list[list[Any]]  # rule 11 history, as JSON: [[month or null, location], ...]
    current_state_lgd: int
    current_district_lgd: int
    last_address_request_at: datetime | None
    active_event_ids: list[str]

    @property
    def head(self) -> WorkerHead:
        """What its member's row keeps of it (``baselines -> -1 ->> 0`` is the last
        re-baseline's month in SQL)."""
        return WorkerHead(
            self.uan,
            self.current_state_lgd,
            self.current_district_lgd,
            self.baselines[-1][0] if self.baselines else None,
        )


@dataclass(slots=True)
class WorkerHead:
    """What adding collections reads of a worker row, kept on their member's row (migration
    0004: the store's writes of ``workers`` write it there too); ``workers()`` reads the whole
    row."""

    uan: str
    current_state_lgd: int
    current_district_lgd: int
    last_rebaseline: str | None  # the month of the latest re-baseline (rule 11), None if none

    @property
    def current_district(self) -> tuple[int, int]:
        return self.current_state_lgd, self.current_district_lgd


@dataclass(slots=True)
class MemberRow:
    """A member, locked for the batch: their history and, when registered, their worker's
    head (see ``WorkerHead``)."""

    member_ref: str
    #: The row version read (its ctid): ``save_histories`` updates it without an index lookup.
    #: Read the row again after changing it in the same transaction.
    version: str
    uan: str | None
    deregistered_at: datetime | None
    history: MemberHistory
    worker: WorkerHead | None
    created: bool = False  # inserted by this transaction's ``lock_members``


@dataclass(frozen=True, slots=True)
class StoredChange:
    event_id: str
    uan: str
    change_type: str
    effective_month: str
    active: bool
    detected_at: datetime
    body: bytes


@dataclass(frozen=True, slots=True)
class OutboxRow:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class PendingOutbox:
    id: int
    row: OutboxRow


_WORKER_COLUMNS = (
    "w.uan, w.member_ref, {registration}, w.profile, w.baselines, w.current_state_lgd,"
    " w.current_district_lgd, w.last_address_request_at, w.active_event_ids"
)
#: The hot path reads the Avro registration only for rows without a profile (before 0002).
_HOT_WORKER_COLUMNS = _WORKER_COLUMNS.format(
    registration="CASE WHEN w.profile IS NULL THEN w.registration END"
)
_FULL_WORKER_COLUMNS = _WORKER_COLUMNS.format(registration="w.registration")


# The worker head on the member row (migration 0004), written with the worker row it mirrors:
# a statement writing ``workers`` returns the head (``WITH saved AS (... RETURNING ...)``) and
# copies it to the member that names the worker, where it differs (no new row version for
# nothing). ``save_workers`` does so by row version instead when the batch holds the members'
# rows (``_write_heads``).
_HEAD_RETURNING = (
    "w.uan, w.member_ref, w.current_state_lgd, w.current_district_lgd,"
    " w.baselines -> -1 ->> 0 AS rebaseline"
)
_MIRROR_HEADS = (
    "UPDATE members AS m SET worker_state_lgd = s.current_state_lgd,"
    " worker_district_lgd = s.current_district_lgd, worker_rebaseline = s.rebaseline"
    " FROM saved AS s WHERE m.member_ref = s.member_ref AND m.uan = s.uan"
    " AND (m.worker_state_lgd, m.worker_district_lgd, m.worker_rebaseline)"
    " IS DISTINCT FROM (s.current_state_lgd, s.current_district_lgd, s.rebaseline)"
)
_NO_HEAD = "worker_state_lgd = NULL, worker_district_lgd = NULL, worker_rebaseline = NULL"
#: A member row as ``MemberRow`` holds it, the history as whether it is gone (NULL).
_MEMBER_STATE = (
    "m.member_ref, m.ctid::text, m.uan, m.deregistered_at, {history},"
    " m.worker_state_lgd, m.worker_district_lgd, m.worker_rebaseline"
)
_RETURNING_STATE = " RETURNING " + _MEMBER_STATE.format(history="m.history IS NULL")


def _head(uan: str | None, head: Sequence[Any]) -> WorkerHead | None:
    # no head: unregistered, or named by a registration not yet written (0004)
    return None if uan is None or head[0] is None else WorkerHead(uan, *head)


def _member_row(ref: str, state: Sequence[Any]) -> MemberRow:
    """A member row from the fields of ``_MEMBER_STATE`` after the ref (with the history)."""
    version, uan, deregistered_at, history, *head = state
    return MemberRow(
        ref, version, uan, deregistered_at, MemberHistory.from_bytes(history), _head(uan, head)
    )


def _refresh(rows: Mapping[str, MemberRow], written: Iterable[Sequence[Any]]) -> None:
    """Bring the rows read in this transaction up to date with a statement that wrote some
    of them (its ``_RETURNING_STATE``): their new version, uan, worker's head, and an empty
    history where it was deleted."""
    for ref, version, uan, deregistered_at, history_gone, *head in written:
        row = rows.get(ref)
        if row is None:
            continue
        row.version, row.uan, row.deregistered_at = version, uan, deregistered_at
        row.worker = _head(uan, head)
        if history_gone:
            row.history = MemberHistory()


_UNIT_SEPARATOR = "\x1f"
_RECORD_SEPARATOR = "\x1e"


def _pack(keys: Sequence[str]) -> tuple[str, str]:
    """Many keys as one text parameter for ``string_to_array(%s, %s)``: psycopg dumps a list
    parameter element by element in Python, a joined string in one step. Intake rejects ids
    with control characters (``records``), so no key holds the separator."""
    joined = _UNIT_SEPARATOR.join(keys)
    if joined.count(_UNIT_SEPARATOR) != max(len(keys) - 1, 0):
        raise ValueError("a key holds a control character")
    return joined, _UNIT_SEPARATOR


def _pack_bytes(values: Sequence[bytes]) -> tuple[bytes, str, str]:
    """Many byte strings as one ``bytea`` parameter, each read back with
    ``substring(%b FROM start FOR length)`` (1-based starts and the lengths, each list for
    ``_int_array``): psycopg dumps a ``bytea[]`` element by element in
    Python, one ``bytea`` at once."""
    lengths = [len(value) for value in values]
    starts = accumulate(lengths[:-1], initial=1)
    return b"".join(values), ",".join(map(str, starts)), ",".join(map(str, lengths))


def _pack_texts(values: Iterable[str]) -> tuple[str, str]:
    """Texts that may be empty as one parameter for ``string_to_array(%s, %s)``, each element
    read back with ``substr(element, 2)``: every text gets a one-character prefix, because
    ``string_to_array`` turns a lone empty text into an empty array, not an array of one. No
    text holds a control character (timestamps, event ids, JSON text)."""
    return _RECORD_SEPARATOR.join(f".{value}" for value in values), _RECORD_SEPARATOR


def _dumps_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _timestamp_text(instant: datetime | None) -> str:
    return "" if instant is None else instant.isoformat()


# The batch statements take their rows as array parameters. A custom plan sees the 10,000
# member refs of a batch and picks a sequential scan, a hash join and a sort of the wide rows
# (about twice the time of the index scans the generic plan uses, measured); the unnest of a
# batch's histories (~6 MB) and that sort spill to temporary files with the default 4 MB
# work_mem.
#
# Every statement finds its rows by key (an index, or the row version), and each is prepared
# and planned once, at its first run: on a new database, when the tables are empty. A plan made
# then reads `members` sequentially and compares every row with every key of the batch's
# array, one by one, which grows with the table times the batch (27 s for one batch at 50,000
# members, seen in the bench), and it stays until autovacuum analyzes the table. So no
# sequential scan where an index can answer, and no bitmap scan either (it would then read
# the rows in page order and sort them again): the plans a loaded database gets.
SESSION_OPTIONS = (
    "-c plan_cache_mode=force_generic_plan -c work_mem=64MB"
    " -c enable_seqscan=off -c enable_bitmapscan=off"
)


# LocatorStore.append_histories's statement. The stored form (MemberHistory.to_bytes) is the
# format byte, the digest count (int4, big-endian: ``_COUNT``), the digests (8 bytes each),
# then the month lines: the new digests go in after the stored ones, the count grows by theirs,
# and the new lines follow the stored ones (a newline between, when there are stored lines). A
# digest found at any offset of the stored ones leaves the row to be read (``position`` does
# not know their 8-byte boundaries: a false find costs a read, never a wrong history).
# history_transactions() (migration 0003) reads the same four bytes through hex text and a bit
# string; the statement reads them up to four times a row, so it takes them byte by byte.
_COUNT = (  # (<< and | bind alike in SQL: each shift in parentheses)
    "((get_byte(m.history, 1) << 24) | (get_byte(m.history, 2) << 16)"
    " | (get_byte(m.history, 3) << 8) | get_byte(m.history, 4))"
)
_STORED_DIGESTS = f"substring(m.history FROM 6 FOR 8 * {_COUNT})"
_NEW_DIGEST = "substring(%(digests)b FROM u.digest_start{offset} FOR 8)"
# A row appended to whose worker's timeline may have changed (merge_later's answer True: a new
# month with presence away from the worker's current district, or a re-baseline, rule 11): the
# statement returns it whole (``_MEMBER_STATE``), for the rules to look at; the others, only
# their member ref.
_REVIEW = (
    "(m.uan IS NOT NULL AND m.worker_state_lgd IS NOT NULL AND u.state <> 0"
    " AND (m.worker_rebaseline IS NOT NULL"
    " OR (m.worker_state_lgd, m.worker_district_lgd) <> (u.state, u.district)))"
)


def _int_array(parameter: str = "") -> str:
    """A parameter of decimals joined by commas (``%s``, or the named one) as ``int[]``: read
    as an array literal (``int4in`` on each element), not split into texts and cast
    (``string_to_array(..)::int[]`` makes a text and a cast per element: 3 to 4 % of the
    append's server time, session 22)."""
    placeholder = f"%({parameter})s" if parameter else "%s"
    return f"('{{' || {placeholder} || '}}')::int[]"


# A parameter of texts joined by a separator (the next parameter) as ``text[]``.
_TEXTS = "string_to_array(%s, %s)"
# A parameter of row versions (``MemberRow.version``) joined by a separator as ``tid[]``.
_VERSIONS = f"{_TEXTS}::tid[]"


def _in_step(alias: str, **arrays: str) -> str:
    """``FROM`` rows of a batch statement, one per element of its array parameters: the
    arrays (``arrays``: column name = array expression, in the order of the statement's
    parameters) unnested in step in the select list of a subquery (a ProjectSet, whose rows
    go straight to the join or insert), not ``FROM unnest(..)`` (a function scan, which first
    copies every row into a tuple store: 8 % of the append's server time in-process, session
    22)."""
    columns = ", ".join(f"unnest({array}) AS {name}" for name, array in arrays.items())
    return f"(SELECT {columns}) AS {alias}"


# The append's rows: each column of ``u`` from its parameter (``_append_parameters``).
_APPEND_COLUMNS = {
    "ref": "string_to_array(%(refs)s, %(separator)s)",
    "digest_start": _int_array("digest_starts"),
    "counted": _int_array("counts"),
    "line_start": _int_array("line_starts"),
    "line_length": _int_array("line_lengths"),
    "first": "string_to_array(%(firsts)s, %(separator)s)",
    "last": "string_to_array(%(lasts)s, %(separator)s)",
    "state": _int_array("states"),
    "district": _int_array("districts"),
}


def _unnest_appends(*columns: str) -> str:
    """The append's rows as ``u``, the columns a statement reads (``_in_step``)."""
    return _in_step("u", **{column: _APPEND_COLUMNS[column] for column in columns})


# A history of the new collections alone (MemberHistory.to_bytes's format tag 1).
_NEW_HISTORY = (
    "'\\x01'::bytea || int4send(u.counted)"
    " || substring(%(digests)b FROM u.digest_start FOR 8 * u.counted)"
    " || substring(%(lines)b FROM u.line_start FOR u.line_length)"
)
_APPEND_HISTORIES = (
    f"UPDATE members AS m SET history = CASE WHEN m.history IS NULL THEN {_NEW_HISTORY}"
    f" ELSE overlay(overlay(m.history PLACING substring(%(digests)b FROM u.digest_start"
    f" FOR 8 * u.counted) FROM 6 + 8 * {_COUNT} FOR 0)"
    f" PLACING int4send({_COUNT} + u.counted) FROM 2 FOR 4)"
    f" || CASE WHEN length(m.history) > 5 + 8 * {_COUNT} THEN '\\x0a'::bytea ELSE ''::bytea END"
    " || substring(%(lines)b FROM u.line_start FOR u.line_length) END,"
    " history_last_month = u.last"
    f" FROM {_unnest_appends(*_APPEND_COLUMNS)}"
    " WHERE m.member_ref = u.ref"
    " AND coalesce(m.history_last_month, CASE WHEN m.history IS NULL THEN '' END) < u.first"
    " AND (m.uan IS NOT NULL OR m.deregistered_at IS NULL)"
    " AND CASE WHEN m.history IS NULL THEN true"
    f" WHEN u.counted = 1 THEN position({_NEW_DIGEST.format(offset='')} IN {_STORED_DIGESTS}) = 0"
    " ELSE NOT EXISTS (SELECT FROM generate_series(0, u.counted - 1) AS i"
    f" WHERE position({_NEW_DIGEST.format(offset=' + 8 * i')} IN {_STORED_DIGESTS}) > 0) END"
    # One test of the row and one column for it: a column per field, each under the test,
    # cost the statement 5 % more server time (session 22), and the client seven loads a row.
    f" RETURNING m.member_ref, CASE WHEN {_REVIEW} THEN ROW("
    + _MEMBER_STATE.format(history="m.history").split(", ", 1)[1]
    + ") END"
)


# LocatorStore.append_histories's second statement: members not stored yet, with their history.
_INSERT_HISTORIES = (
    "INSERT INTO members (member_ref, history, history_last_month)"
    f" SELECT u.ref, {_NEW_HISTORY}, u.last"
    " FROM "
    + _unnest_appends("ref", "digest_start", "counted", "line_start", "line_length", "last")
    + " ON CONFLICT DO NOTHING RETURNING member_ref"
)


# The other batch statements, each built once.
_INSERT_MEMBERS = (
    "INSERT INTO members (member_ref, uan, worker_state_lgd, worker_district_lgd,"
    " worker_rebaseline)"
    " SELECT r, nullif(substr(u, 2), ''), nullif(substr(s, 2), '')::smallint,"
    " nullif(substr(d, 2), '')::int, nullif(substr(b, 2), '')"
    f" FROM {_in_step('n', r=_TEXTS, u=_TEXTS, s=_TEXTS, d=_TEXTS, b=_TEXTS)}"
    " ON CONFLICT DO NOTHING RETURNING member_ref, ctid::text"
)
_SAVE_HISTORIES = (
    "UPDATE members AS m SET history = substring(%b FROM u.start FOR u.length),"
    " history_last_month = nullif(substr(u.last, 2), '')"
    " FROM "
    + _in_step("u", version=_VERSIONS, start=_int_array(), length=_int_array(), last=_TEXTS)
    + " WHERE m.ctid = u.version"
)
_SET_MEMBER_UANS = (
    f"UPDATE members AS m SET uan = a.uan, {_NO_HEAD}"
    f" FROM {_in_step('a', member_ref='%s::text[]', uan='%s::text[]')}"
    " WHERE m.member_ref = a.member_ref AND m.uan IS DISTINCT FROM a.uan" + _RETURNING_STATE
)
_UPSERT_WORKERS = (
    "INSERT INTO workers AS w (uan, member_ref, registration, profile,"
    " baselines, current_state_lgd, current_district_lgd, last_address_request_at,"
    " active_event_ids, updated_at)"
    " SELECT r.uan, r.member_ref, r.registration, r.profile, r.baselines::jsonb,"
    " r.state, r.district, nullif(substr(r.requested, 2), '')::timestamptz,"
    " string_to_array(substr(r.active, 2), ' '), now()"
    " FROM "
    + _in_step(
        "r",
        uan=_TEXTS,
        member_ref=_TEXTS,
        registration="%b::bytea[]",
        profile="%b::bytea[]",
        baselines=_TEXTS,
        state=_int_array(),
        district=_int_array(),
        requested=_TEXTS,
        active=_TEXTS,
    )
    + " ON CONFLICT (uan) DO UPDATE SET member_ref = EXCLUDED.member_ref,"
    " registration = EXCLUDED.registration,"
    " profile = EXCLUDED.profile,"
    " baselines = EXCLUDED.baselines,"
    " current_state_lgd = EXCLUDED.current_state_lgd,"
    " current_district_lgd = EXCLUDED.current_district_lgd,"
    " last_address_request_at = EXCLUDED.last_address_request_at,"
    " active_event_ids = EXCLUDED.active_event_ids,"
    " updated_at = now()"
)
# save_workers's statement when the heads are written by key, in the statement itself.
_UPSERT_WORKERS_WITH_HEADS = (
    "WITH saved AS ("
    + _UPSERT_WORKERS
    + f" RETURNING {_HEAD_RETURNING}) {_MIRROR_HEADS}{_RETURNING_STATE}"
)
_WRITE_HEADS = (
    "UPDATE members AS m SET worker_state_lgd = u.state,"
    " worker_district_lgd = u.district,"
    " worker_rebaseline = nullif(substr(u.rebaseline, 2), '')"
    " FROM "
    + _in_step("u", version=_VERSIONS, state=_int_array(), district=_int_array(), rebaseline=_TEXTS)
    + " WHERE m.ctid = u.version"
    + _RETURNING_STATE
)
_UPDATE_DERIVED = (
    "WITH saved AS (UPDATE workers AS w SET current_state_lgd = u.state,"
    " current_district_lgd = u.district,"
    " last_address_request_at = nullif(substr(u.requested, 2), '')::timestamptz,"
    " active_event_ids = string_to_array(substr(u.active, 2), ' '),"
    " profile = coalesce(convert_to(nullif(substr(u.profile, 2), ''), 'UTF8'), w.profile),"
    " updated_at = now()"
    " FROM "
    + _in_step(
        "u",
        uan=_TEXTS,
        state=_int_array(),
        district=_int_array(),
        requested=_TEXTS,
        active=_TEXTS,
        profile=_TEXTS,
    )
    + f" WHERE w.uan = u.uan RETURNING {_HEAD_RETURNING}) {_MIRROR_HEADS}"
)
_FORGET_MEMBERS = (
    f"UPDATE members AS m SET uan = NULL, history = NULL, history_last_month = NULL,"
    f" {_NO_HEAD},"
    " deregistered_at = GREATEST(m.deregistered_at, d.at)"
    f" FROM {_in_step('d', member_ref='%s::text[]', at='%s::timestamptz[]')}"
    " WHERE m.member_ref = d.member_ref" + _RETURNING_STATE
)
_RECORD_CHANGES = (
    "INSERT INTO location_changes (event_id, uan, change_type, effective_month, active,"
    " detected_at, body)"
    " SELECT c.event_id::uuid, c.uan, c.change_type, c.month, c.active::boolean,"
    " c.detected::timestamptz, decode(c.body, 'hex')"
    " FROM "
    + _in_step(
        "c",
        event_id=_TEXTS,
        uan=_TEXTS,
        change_type=_TEXTS,
        month=_TEXTS,
        active=_TEXTS,
        detected=_TEXTS,
        body=_TEXTS,
    )
    + " ON CONFLICT (event_id) DO UPDATE SET active = EXCLUDED.active"
)
_SAVE_OFFSETS = (
    "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)"
    " SELECT %s, t, p, o FROM "
    + _in_step("x", t="%s::text[]", p="%s::int[]", o="%s::bigint[]")
    + " ON CONFLICT (group_id, topic, partition) DO UPDATE"
    " SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset)"
)


def observation_key(source: str, transaction_id: str) -> str:
    """The idempotency key of rule 8: transaction ids are unique per PDS, not nationally."""
    return f"{source}/{transaction_id}"


def _members_query(*, lock: bool) -> str:
    """``LocatorStore.members``'s statement (its parameters: ``_pack(member_refs)``)."""
    query = (
        f"SELECT {_MEMBER_STATE.format(history='m.history')} FROM members m"
        " WHERE m.member_ref = ANY(string_to_array(%s, %s)) ORDER BY m.member_ref"
    )
    return query + " FOR UPDATE OF m" if lock else query


_APPEND_PARAMETER_NAMES = (
    "refs",
    "digests",
    "lines",
    "digest_starts",
    "counts",
    "line_starts",
    "line_lengths",
    "firsts",
    "lasts",
    "states",
    "districts",
)


def _append_parameters(appends: list[tuple[str, LaterMonths]]) -> dict[str, str | bytes]:
    """``append_histories``'s statements' parameters, in member order (``appends``: member
    refs distinct): the compiled ``pack`` where it is built (a tenth of the time: the sort,
    the joins and the decimals in one pass), else ``_append_parameters_in_python``."""
    if _compiled_append_parameters is None:
        return _append_parameters_in_python(appends)
    return _named_append_parameters(_compiled_append_parameters.pack(appends, _UNIT_SEPARATOR))


def _append_parameters_in_python(
    appends: list[tuple[str, LaterMonths]],
) -> dict[str, str | bytes]:
    """``_append_parameters`` in Python (and the compiled one's reference in the tests)."""
    refs, later = zip(*sorted(appends), strict=True)
    digests, lines, counts, firsts, lasts, districts = zip(*later, strict=True)
    packed_digests, digest_starts, _ = _pack_bytes(digests)
    packed_lines, line_starts, line_lengths = _pack_bytes(lines)
    return _named_append_parameters(
        (
            _pack(refs)[0],
            packed_digests,
            packed_lines,
            digest_starts,
            ",".join(map(str, counts)),
            line_starts,
            line_lengths,
            _pack(firsts)[0],
            _pack(lasts)[0],
            # 0: no district (LGD codes start at 1)
            ",".join([str(d[0]) if d else "0" for d in districts]),
            ",".join([str(d[1]) if d else "0" for d in districts]),
        )
    )


def _named_append_parameters(packed: tuple[str | bytes, ...]) -> dict[str, str | bytes]:
    """The packed parameters (in ``_APPEND_PARAMETER_NAMES`` order) by name, with the
    separator the text lists are joined with."""
    parameters: dict[str, str | bytes] = dict(zip(_APPEND_PARAMETER_NAMES, packed, strict=True))
    parameters["separator"] = _UNIT_SEPARATOR
    return parameters


class LocatorStore:
    """One connection; use ``unit_of_work()`` around each batch."""

    def __init__(self, conn: psycopg.Connection[TupleRow]) -> None:
        self._conn = conn
        set_json_loads(orjson.loads, conn)

    @classmethod
    def connect(cls, conninfo: str) -> LocatorStore:
        conn = psycopg.connect(conninfo, autocommit=False, options=SESSION_OPTIONS)
        # Every statement runs many times with the same shape: prepare it at once (psycopg's
        # default waits for the 5th run), and plan it once (see SESSION_OPTIONS).
        conn.prepare_threshold = 0
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    @property
    def closed(self) -> bool:
        return self._conn.closed or self._conn.broken

    def try_relay_lock(self, key: int) -> bool:
        """A transaction-scoped advisory lock: released at commit or rollback."""
        row = self._conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,)).fetchone()
        return bool(row and row[0])

    @contextmanager
    def unit_of_work(self) -> Iterator[LocatorStore]:
        with self._conn.transaction():
            yield self

    # --- members and workers -----------------------------------------------------------------

    def lock_members(
        self,
        member_refs: Iterable[str],
        uans: Mapping[str, str] | None = None,
        heads: Mapping[str, WorkerHead] | None = None,
    ) -> dict[str, MemberRow]:
        """Lock every given member row (inserting unseen members) and return each with its
        history and, when registered, its worker's head. Rows are locked in sorted order, the
        existing ones first (a deadlock with another process is retried by the caller).

        ``uans``: the uan an unseen member is inserted with (the registration of this batch
        that names it), instead of inserting it without one and updating it (a non-HOT update:
        ``uan`` decides the ``members_unregistered`` index). Rows inserted here are marked
        ``created``; the caller corrects their uan if the registration does not apply.
        ``heads``: the worker head such a member is inserted with (of the uan in ``uans``), as
        the caller expects its registration to leave it; ``save_workers`` corrects what
        differs (a head written after the insert is a second row version of every new
        member)."""
        refs = sorted(set(member_refs))
        if not refs:
            return {}
        found = self.members(refs, lock=True)
        if len(found) < len(refs):
            unseen = [ref for ref in refs if ref not in found]
            given = uans or {}
            expected = {
                ref: head for ref, head in (heads or {}).items() if given.get(ref) == head.uan
            }
            named_heads = [expected.get(ref) for ref in unseen]
            # A row this transaction inserts is its own until it commits: nothing to lock, and
            # nothing to read but where it is (no history).
            for ref, version in self._conn.execute(
                _INSERT_MEMBERS,
                (
                    *_pack(unseen),
                    *_pack_texts(given.get(ref) or "" for ref in unseen),
                    *_pack_texts(str(h.current_state_lgd) if h else "" for h in named_heads),
                    *_pack_texts(str(h.current_district_lgd) if h else "" for h in named_heads),
                    *_pack_texts((h.last_rebaseline or "") if h else "" for h in named_heads),
                ),
            ).fetchall():
                found[ref] = MemberRow(
                    ref,
                    version,
                    given.get(ref),
                    None,
                    MemberHistory(),
                    expected.get(ref),
                    created=True,
                )
            raced = [ref for ref in unseen if ref not in found]
            if raced:  # inserted by another transaction since the locked read: locked now
                found.update(self.members(raced, lock=True))
        return found

    def members(self, member_refs: Sequence[str], *, lock: bool = False) -> dict[str, MemberRow]:
        """The given members (sorted, optionally locked), each with its worker's head if any."""
        found: dict[str, MemberRow] = {}
        read = MemberHistory.from_bytes
        rows = self._conn.execute(
            _members_query(lock=lock).encode(), _pack(member_refs), binary=True
        ).fetchall()
        for ref, version, uan, deregistered_at, stored, *head in rows:
            history = read(stored) if stored else MemberHistory()
            found[ref] = MemberRow(ref, version, uan, deregistered_at, history, _head(uan, head))
        return found

    def save_histories(self, members: Sequence[MemberRow]) -> None:
        """Write the histories of members whose history changed: rows locked and not changed
        since they were read (``MemberRow.version``)."""
        if not members:
            return
        histories, starts, lengths = _pack_bytes([member.history.to_bytes() for member in members])
        updated = self._conn.execute(
            _SAVE_HISTORIES,
            (
                histories,
                *_pack([member.version for member in members]),
                starts,
                lengths,
                *_pack_texts(member.history.last_month() or "" for member in members),
            ),
        ).rowcount
        if updated != len(members):  # a row changed after it was read: a bug, never a skip
            raise StaleMemberRowError(
                f"{len(members) - updated} of {len(members)} member rows changed since read"
            )

    def append_histories(
        self, appends: Sequence[tuple[str, LaterMonths]]
    ) -> tuple[set[str], dict[str, MemberRow]]:
        """Append each member's ``LaterMonths`` to its stored history without reading it, in
        one statement, where that is what ``MemberHistory.merge_later`` would store: the row
        exists, its history's last month (``history_last_month``) is before ``first_month``,
        no digest is already stored, and the member is registered or was never deregistered
        (else late collections of a deleted worker may be skipped). Rows are written (and
        locked) in member order. A member not stored yet is inserted, unregistered, with its
        ``LaterMonths`` as its history (as ``lock_members`` would insert it, and the merge
        fill it). The others are left as they were, to be locked and read.

        Returns the member refs appended, and the rows among them, as read after the append
        and locked, whose worker's timeline may have changed (``merge_later``'s answer would
        be True; see ``LaterMonths``): registered, with a new month of presence away from the
        worker's current district, or a re-baseline."""
        if not appends:
            return set(), {}
        appends = list(appends)  # distinct member refs; the parameters put them in order
        written = self._conn.execute(
            _APPEND_HISTORIES, _append_parameters(appends), binary=True
        ).fetchall()
        # One pass for the refs, one for the few rows to review (their state, a record, is
        # set only on those): a third of the Python time per row of unpacking each row in one
        # loop.
        appended = {row[0] for row in written}
        review = {ref: _member_row(ref, state) for ref, state in written if state is not None}
        unseen = [append for append in appends if append[0] not in appended]
        if unseen:
            inserted = self._conn.execute(_INSERT_HISTORIES, _append_parameters(unseen))
            appended.update(ref for (ref,) in inserted)
        return appended, review

    def set_member_uans(
        self, assignments: Sequence[tuple[str, str | None]], rows: Mapping[str, MemberRow] = {}
    ) -> None:
        """(member_ref, uan or None) for members whose registration changed in this batch; a
        uan's head comes with its worker row (``save_workers``). ``rows``: members read in
        this transaction, brought up to date with what it writes."""
        if not assignments:
            return
        written = self._conn.execute(
            _SET_MEMBER_UANS,
            ([ref for ref, _ in assignments], [uan for _, uan in assignments]),
        )
        _refresh(rows, written.fetchall())

    def workers(
        self, uans: Iterable[str], *, lock: bool, registration: bool = True
    ) -> dict[str, StoredWorker]:
        """The given workers' rows; ``registration=False``: the Avro registration only for rows
        without a profile (written before migration 0002)."""
        keys = sorted(set(uans))
        if not keys:
            return {}
        columns = _FULL_WORKER_COLUMNS if registration else _HOT_WORKER_COLUMNS
        query = f"SELECT {columns} FROM workers w WHERE w.uan = ANY(%b) ORDER BY w.uan"
        if lock:
            query += " FOR UPDATE"
        rows = self._conn.execute(query.encode(), (keys,), binary=True).fetchall()
        return {row[0]: StoredWorker(*row) for row in rows}

    def save_workers(
        self, workers: Sequence[StoredWorker], rows: Mapping[str, MemberRow] = {}
    ) -> None:
        """Registrations: insert or replace each worker row (one statement; uans distinct),
        and its head on the row of its member (who must already name the uan:
        ``set_member_uans`` first). ``rows``: as in ``set_member_uans``. When it holds every
        worker's member (the locator's batches), the heads are written by row version where
        they differ (no join with ``members``, no index lookup); else by key."""
        if not workers:
            return
        rs = _RECORD_SEPARATOR
        by_version = all(w.member_ref in rows for w in workers)
        written = self._conn.execute(
            _UPSERT_WORKERS if by_version else _UPSERT_WORKERS_WITH_HEADS,
            (
                *_pack([w.uan for w in workers]),
                *_pack([w.member_ref for w in workers]),
                [w.registration for w in workers],
                [w.profile for w in workers],
                # JSON text never holds a raw control character
                rs.join(_dumps_text(w.baselines) for w in workers),
                rs,
                ",".join(str(w.current_state_lgd) for w in workers),
                ",".join(str(w.current_district_lgd) for w in workers),
                *_pack_texts(_timestamp_text(w.last_address_request_at) for w in workers),
                *_pack_texts(" ".join(w.active_event_ids) for w in workers),
            ),
        )
        if not by_version:
            _refresh(rows, written.fetchall())
            return
        self._write_heads(
            [(row, w.head) for w in workers if (row := rows[w.member_ref]).uan == w.uan], rows
        )

    def _write_heads(
        self, heads: Sequence[tuple[MemberRow, WorkerHead]], rows: Mapping[str, MemberRow]
    ) -> None:
        """Each member row's worker head, where it differs from the one read: one UPDATE by
        row version."""
        changed = [(row, head) for row, head in heads if row.worker != head]
        if not changed:
            return
        written = self._conn.execute(
            _WRITE_HEADS,
            (
                *_pack([row.version for row, _ in changed]),
                ",".join(str(head.current_state_lgd) for _, head in changed),
                ",".join(str(head.current_district_lgd) for _, head in changed),
                *_pack_texts(head.last_rebaseline or "" for _, head in changed),
            ),
        ).fetchall()
        if len(written) != len(changed):  # a row changed after it was read: a bug, never a skip
            raise StaleMemberRowError(
                f"{len(changed) - len(written)} of {len(changed)} member rows changed since read"
            )
        _refresh(rows, written)

    def update_derived(self, workers: Sequence[StoredWorker]) -> None:
        """Recomputed workers whose derived state changed: one UPDATE for all of them (every
        column packed into one text parameter: see ``_pack``), and one of their members'
        heads."""
        if not workers:
            return
        self._conn.execute(
            _UPDATE_DERIVED,
            (
                *_pack([w.uan for w in workers]),
                ",".join(str(w.current_state_lgd) for w in workers),
                ",".join(str(w.current_district_lgd) for w in workers),
                *_pack_texts(_timestamp_text(w.last_address_request_at) for w in workers),
                *_pack_texts(" ".join(w.active_event_ids) for w in workers),
                *_pack_texts("" if w.profile is None else w.profile.decode() for w in workers),
            ),
        )

    def delete_workers(
        self, deletions: Sequence[tuple[str, str, datetime]], rows: Mapping[str, MemberRow] = {}
    ) -> None:
        """Rule 11 tombstones: (uan, member_ref, tombstone time) -> the worker's state and whole
        history go, and collections of that member up to that time are not stored again.
        ``rows``: as in ``set_member_uans``."""
        if not deletions:
            return
        uans = [uan for uan, _, _ in deletions]
        refs = [ref for _, ref, _ in deletions]
        self._conn.execute("DELETE FROM location_changes WHERE uan = ANY(%s)", (uans,))
        self._conn.execute("DELETE FROM workers WHERE uan = ANY(%s)", (uans,))
        written = self._conn.execute(
            _FORGET_MEMBERS,
            (refs, [at for _, _, at in deletions]),
        )
        _refresh(rows, written.fetchall())

    def purge_unregistered(self, older_than: datetime) -> int:
        """Grace window: members still unregistered since before ``older_than`` are forgotten
        with their collections (a later collection starts them afresh). Returns how many."""
        cursor = self._conn.execute(
            "DELETE FROM members WHERE uan IS NULL AND first_seen_at < %s", (older_than,)
        )
        return cursor.rowcount

    # --- location changes --------------------------------------------------------------------

    def changes(self, event_ids: Iterable[str]) -> list[StoredChange]:
        keys = sorted(set(event_ids))
        if not keys:
            return []
        query = (
            "SELECT event_id::text AS event_id, uan, change_type, effective_month, active,"
            " detected_at, body FROM location_changes WHERE event_id = ANY(%s::uuid[])"
        )
        with self._conn.cursor(row_factory=class_row(StoredChange)) as cursor:
            return cursor.execute(query, (keys,)).fetchall()

    def record_changes(self, changes: Sequence[StoredChange], retracted: Sequence[str]) -> None:
        if retracted:
            self._conn.execute(
                "UPDATE location_changes SET active = false WHERE event_id = ANY(%s::uuid[])",
                (list(retracted),),
            )
        if not changes:
            return
        rs = _RECORD_SEPARATOR
        self._conn.execute(
            _RECORD_CHANGES,
            (
                *_pack([c.event_id for c in changes]),
                *_pack([c.uan for c in changes]),
                *_pack([c.change_type for c in changes]),
                *_pack([c.effective_month for c in changes]),
                rs.join("true" if c.active else "false" for c in changes),
                rs,
                rs.join(c.detected_at.isoformat() for c in changes),
                rs,
                rs.join(c.body.hex() for c in changes),
                rs,
            ),
        )

    # --- outbox and offsets ------------------------------------------------------------------

    def enqueue(self, rows: Sequence[OutboxRow]) -> None:
        if not rows:
            return
        copy = "COPY outbox (topic, key, value, headers) FROM STDIN"
        with self._conn.cursor() as cursor, cursor.copy(copy) as writer:
            for row in rows:
                headers = json.dumps([[name, value.hex()] for name, value in row.headers])
                writer.write_row((row.topic, row.key, row.value, headers))

    def pending_outbox(self, limit: int) -> list[PendingOutbox]:
        rows = self._conn.execute(
            "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT %s", (limit,)
        ).fetchall()
        return [
            PendingOutbox(
                int(row_id),
                OutboxRow(
                    str(topic),
                    bytes(key) if key is not None else None,
                    bytes(value) if value is not None else None,
                    tuple((str(name), bytes.fromhex(hexed)) for name, hexed in headers),
                ),
            )
            for row_id, topic, key, value, headers in rows
        ]

    def delete_outbox(self, ids: Sequence[int]) -> None:
        """Forget the rows published: these ids, never a range. Ids are drawn when a row is
        inserted, not when its transaction commits, so a row with a smaller id than the last
        one published can commit after ``pending_outbox`` read: ``id <= last`` would delete
        it unpublished."""
        self._conn.execute("DELETE FROM outbox WHERE id = ANY(%s)", (list(ids),))

    def save_offsets(self, group_id: str, next_offsets: dict[tuple[str, int], int]) -> None:
        if not next_offsets:
            return
        items = sorted(next_offsets.items())
        self._conn.execute(
            _SAVE_OFFSETS,
            (
                group_id,
                [topic for (topic, _), _ in items],
                [partition for (_, partition), _ in items],
                [offset for _, offset in items],
            ),
        )

    def load_offsets(self, group_id: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        rows = self._conn.execute(
            "SELECT topic, partition, next_offset FROM consumer_offsets"
            " WHERE group_id = %s AND topic = ANY(%s)",
            (group_id, list(topics)),
        ).fetchall()
        self._conn.commit()
        return {(str(t), int(p)): int(o) for t, p, o in rows}
