"""The locator's PostgreSQL adapter: set-based reads and writes for one batch, in one transaction.

Every method takes many keys and issues one statement (or one COPY), never one round trip per
event. ``LocatorStore`` holds an open connection; ``unit_of_work()`` gives the transaction in
which a batch's state, its outgoing events (the outbox) and the consumer offsets commit together.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow, class_row
from psycopg.types.json import Jsonb

from eshram_locator.domain.model import AuthMode, Location, RationCollection
from eshram_locator.domain.rules import Observation


@dataclass(frozen=True, slots=True)
class StoredWorker:
    uan: str
    member_ref: str
    registration: bytes
    baselines: list[list[Any]]  # rule 11 history, as JSON: [[month or null, location], ...]
    current_state_lgd: int
    current_district_lgd: int
    last_address_request_at: datetime | None


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


_OBSERVATION_COLUMNS = (
    "source",
    "transaction_id",
    "member_ref",
    "allocation_month",
    "transacted_at",
    "auth_mode",
    "fps_id",
    "state_lgd",
    "district_lgd",
    "subdistrict_lgd",
    "village_town_lgd",
    "pincode",
)


def observation_key(source: str, transaction_id: str) -> str:
    """The idempotency key of rule 8: transaction ids are unique per PDS, not nationally."""
    return f"{source}/{transaction_id}"


class LocatorStore:
    """One connection; use ``unit_of_work()`` around each batch."""

    def __init__(self, conn: psycopg.Connection[TupleRow]) -> None:
        self._conn = conn
        self._staging_ready = False

    @classmethod
    def connect(cls, conninfo: str) -> LocatorStore:
        return cls(psycopg.connect(conninfo, autocommit=False))

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

    def lock_members(self, member_refs: Iterable[str]) -> dict[str, str | None]:
        """Insert unseen members and lock every given row, in sorted order (no deadlocks);
        returns member_ref -> uan (None: not a registered worker)."""
        refs = sorted(set(member_refs))
        if not refs:
            return {}
        rows = self._conn.execute(
            "INSERT INTO members (member_ref) SELECT unnest(%s::text[]) "
            "ON CONFLICT (member_ref) DO UPDATE SET member_ref = EXCLUDED.member_ref "
            "RETURNING member_ref, uan",
            (refs,),
        ).fetchall()
        return {str(ref): (str(uan) if uan is not None else None) for ref, uan in rows}

    def set_member_uans(self, assignments: Sequence[tuple[str, str | None]]) -> None:
        """(member_ref, uan or None) for members whose registration changed in this batch."""
        if not assignments:
            return
        self._conn.execute(
            "UPDATE members AS m SET uan = a.uan "
            "FROM unnest(%s::text[], %s::text[]) AS a(member_ref, uan) "
            "WHERE m.member_ref = a.member_ref",
            ([ref for ref, _ in assignments], [uan for _, uan in assignments]),
        )

    def workers(self, uans: Iterable[str], *, lock: bool) -> dict[str, StoredWorker]:
        keys = sorted(set(uans))
        if not keys:
            return {}
        query = (
            "SELECT uan, member_ref, registration, baselines, current_state_lgd,"
            " current_district_lgd, last_address_request_at FROM workers"
            " WHERE uan = ANY(%s) ORDER BY uan"
        )
        if lock:
            query += " FOR UPDATE"
        with self._conn.cursor(row_factory=class_row(StoredWorker)) as cursor:
            return {worker.uan: worker for worker in cursor.execute(query.encode(), (keys,))}

    def save_workers(self, workers: Sequence[StoredWorker]) -> None:
        if not workers:
            return
        with self._conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO workers (uan, member_ref, registration, baselines,"
                " current_state_lgd, current_district_lgd, last_address_request_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, now())"
                " ON CONFLICT (uan) DO UPDATE SET member_ref = EXCLUDED.member_ref,"
                " registration = EXCLUDED.registration,"
                " baselines = EXCLUDED.baselines,"
                " current_state_lgd = EXCLUDED.current_state_lgd,"
                " current_district_lgd = EXCLUDED.current_district_lgd,"
                " last_address_request_at = EXCLUDED.last_address_request_at,"
                " updated_at = now()",
                [
                    (
                        worker.uan,
                        worker.member_ref,
                        worker.registration,
                        Jsonb(worker.baselines),
                        worker.current_state_lgd,
                        worker.current_district_lgd,
                        worker.last_address_request_at,
                    )
                    for worker in workers
                ],
            )

    def delete_workers(self, deletions: Sequence[tuple[str, str, datetime]]) -> None:
        """Rule 11 tombstones: (uan, member_ref, tombstone time) -> the worker's state and whole
        history go, and collections of that member up to that time are not stored again."""
        if not deletions:
            return
        uans = [uan for uan, _, _ in deletions]
        refs = [ref for _, ref, _ in deletions]
        self._conn.execute("DELETE FROM location_changes WHERE uan = ANY(%s)", (uans,))
        self._conn.execute("DELETE FROM observations WHERE member_ref = ANY(%s)", (refs,))
        self._conn.execute("DELETE FROM workers WHERE uan = ANY(%s)", (uans,))
        self._conn.execute(
            "UPDATE members AS m SET uan = NULL,"
            " deregistered_at = GREATEST(m.deregistered_at, d.at)"
            " FROM unnest(%s::text[], %s::timestamptz[]) AS d(member_ref, at)"
            " WHERE m.member_ref = d.member_ref",
            (refs, [at for _, _, at in deletions]),
        )

    # --- observations ------------------------------------------------------------------------

    def insert_observations(self, collections: Sequence[RationCollection]) -> set[str]:
        """COPY into a staging table, then one INSERT ... ON CONFLICT DO NOTHING.

        Returns the member_refs that gained at least one new observation (rule 8: a
        transaction seen before changes nothing)."""
        if not collections:
            return set()
        if not self._staging_ready:
            self._conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS staging_observations"
                " (LIKE observations INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            self._staging_ready = True
        columns = sql.SQL(", ").join(sql.Identifier(name) for name in _OBSERVATION_COLUMNS)
        copy = sql.SQL("COPY staging_observations ({}) FROM STDIN").format(columns)
        with self._conn.cursor() as cursor:
            with cursor.copy(copy) as writer:
                for collection in collections:
                    where = collection.fps_location
                    writer.write_row(
                        (
                            collection.source,
                            collection.transaction_id,
                            collection.member_ref,
                            collection.allocation_month,
                            collection.transacted_at,
                            collection.auth_mode.value,
                            collection.fps_id,
                            where.state_lgd,
                            where.district_lgd,
                            where.subdistrict_lgd,
                            where.village_town_lgd,
                            where.pincode,
                        )
                    )
            inserted = sql.SQL(
                "INSERT INTO observations ({cols}) SELECT DISTINCT ON (source, transaction_id)"
                " {cols} FROM staging_observations s WHERE NOT EXISTS (SELECT 1 FROM members m"
                "  WHERE m.member_ref = s.member_ref AND m.uan IS NULL"
                "  AND m.deregistered_at >= s.transacted_at)"
                " ORDER BY source, transaction_id"
                " ON CONFLICT (source, transaction_id) DO NOTHING RETURNING member_ref"
            ).format(cols=columns)
            refs = {str(row[0]) for row in cursor.execute(inserted).fetchall()}
            cursor.execute("TRUNCATE staging_observations")
        return refs

    def observations(self, member_refs: Iterable[str]) -> dict[str, list[Observation]]:
        refs = sorted(set(member_refs))
        found: dict[str, list[Observation]] = defaultdict(list)
        if not refs:
            return found
        rows = self._conn.execute(
            "SELECT member_ref, source, transaction_id, allocation_month, transacted_at,"
            " auth_mode, fps_id, state_lgd, district_lgd, subdistrict_lgd, village_town_lgd,"
            " pincode FROM observations WHERE member_ref = ANY(%s)",
            (refs,),
        ).fetchall()
        locations: dict[tuple[object, ...], Location] = {}
        for ref, source, transaction_id, month, at, auth, fps_id, *place in rows:
            place_key = tuple(place)
            location = locations.get(place_key)
            if location is None:
                state, district, subdistrict, village, pincode = place
                location = Location(
                    int(state),
                    int(district),
                    int(subdistrict) if subdistrict is not None else None,
                    int(village) if village is not None else None,
                    str(pincode) if pincode is not None else None,
                )
                locations[place_key] = location
            found[str(ref)].append(
                Observation(
                    transaction_id=observation_key(str(source), str(transaction_id)),
                    allocation_month=str(month),
                    transacted_at=at,
                    auth_mode=AuthMode(auth),
                    fps_id=str(fps_id),
                    fps_location=location,
                )
            )
        return found

    def purge_unregistered(self, older_than: datetime) -> int:
        """Grace window: collections of members who never registered are not kept."""
        cursor = self._conn.execute(
            "DELETE FROM observations o USING members m WHERE o.member_ref = m.member_ref"
            " AND m.uan IS NULL AND o.received_at < %s",
            (older_than,),
        )
        purged = cursor.rowcount
        self._conn.execute(
            "DELETE FROM members m WHERE m.uan IS NULL AND m.first_seen_at < %s"
            " AND NOT EXISTS (SELECT 1 FROM observations o WHERE o.member_ref = m.member_ref)",
            (older_than,),
        )
        return purged

    # --- location changes --------------------------------------------------------------------

    def active_changes(self, uans: Iterable[str]) -> dict[str, list[StoredChange]]:
        keys = sorted(set(uans))
        found: dict[str, list[StoredChange]] = defaultdict(list)
        if not keys:
            return found
        query = (
            "SELECT event_id::text AS event_id, uan, change_type, effective_month, active,"
            " detected_at, body FROM location_changes WHERE uan = ANY(%s) AND active"
            " ORDER BY effective_month"
        )
        with self._conn.cursor(row_factory=class_row(StoredChange)) as cursor:
            for change in cursor.execute(query, (keys,)):
                found[change.uan].append(change)
        return found

    def record_changes(self, changes: Sequence[StoredChange], retracted: Sequence[str]) -> None:
        if retracted:
            self._conn.execute(
                "UPDATE location_changes SET active = false WHERE event_id = ANY(%s::uuid[])",
                (list(retracted),),
            )
        if not changes:
            return
        with self._conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO location_changes (event_id, uan, change_type, effective_month,"
                " active, detected_at, body) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (event_id) DO UPDATE SET active = EXCLUDED.active",
                [
                    (
                        c.event_id,
                        c.uan,
                        c.change_type,
                        c.effective_month,
                        c.active,
                        c.detected_at,
                        c.body,
                    )
                    for c in changes
                ],
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

    def delete_outbox(self, up_to_id: int) -> None:
        self._conn.execute("DELETE FROM outbox WHERE id <= %s", (up_to_id,))

    def save_offsets(self, group_id: str, next_offsets: dict[tuple[str, int], int]) -> None:
        if not next_offsets:
            return
        items = sorted(next_offsets.items())
        self._conn.execute(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)"
            " SELECT %s, t, p, o FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS x(t, p, o)"
            " ON CONFLICT (group_id, topic, partition) DO UPDATE"
            " SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset)",
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
