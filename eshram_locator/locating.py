"""The locator's unit of work: one batch of registry records and collections in, state and
outgoing events out, all inside one PostgreSQL transaction (the caller's).

Kafka-free: the consumer process decodes messages, calls ``apply_batch`` inside
``store.unit_of_work()``, saves the offsets in the same transaction, and leaves the outbox to
the relay. Everything here is set-based: a handful of statements per batch, whatever its size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from eshram_locator.avro_codec import AvroCodec
from eshram_locator.domain.history import epoch_us, later_months, may_move
from eshram_locator.domain.model import (
    ChangeType,
    District,
    Location,
    LocationChanged,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.domain.months import month_start
from eshram_locator.domain.rules import (
    Baseline,
    RuleParams,
    Timeline,
    WorkerProfile,
    address_update_request,
    derive_from_history,
    may_confirm,
    next_baselines,
    reconcile_published,
    stale_event_ids,
)
from eshram_locator.postgres.store import (
    LocatorStore,
    MemberRow,
    OutboxRow,
    StoredChange,
    StoredWorker,
    WorkerHead,
    observation_key,
)
from eshram_locator.records import (
    ADDRESS_UPDATE_REQUESTED,
    LOCATION_CHANGED,
    WORKER_REGISTRATION,
    address_update_requested_to_avro,
    location_changed_from_avro,
    location_changed_to_avro,
    location_from_avro,
    location_to_avro,
    worker_registration_from_avro,
    worker_registration_to_avro,
)
from eshram_locator.topics import TopicNames


@dataclass(frozen=True, slots=True)
class RegistryUpdate:
    """One record of the registry topic: a registration, or a tombstone (None) for ``uan``."""

    uan: str
    registration: WorkerRegistration | None
    recorded_at: datetime  # the record's Kafka timestamp: when a tombstone deregistered
    # The record's bytes when they encode ``registration`` with the current schema: stored as
    # they came instead of encoded again (None: encoded again).
    encoded: bytes | None = None


@dataclass(slots=True)
class BatchOutcome:
    changes: list[LocationChanged] = field(default_factory=list)
    address_requests: int = 0
    new_observations: int = 0
    registrations: int = 0
    deregistrations: int = 0
    recomputed_workers: int = 0


class Locator:
    """Applies the rules to a batch against the store. Holds no state between batches."""

    def __init__(self, codec: AvroCodec, params: RuleParams, names: TopicNames) -> None:
        self._codec = codec
        self._params = params
        self._names = names

    def apply_batch(
        self,
        store: LocatorStore,
        registry: Sequence[RegistryUpdate],
        collections: Mapping[str, list[RationCollection]],
        now: datetime,
    ) -> tuple[BatchOutcome, list[OutboxRow]]:
        """``collections``: the batch's collections as ``by_member`` groups them (pure work the
        caller can do before the transaction)."""
        outcome = BatchOutcome()
        registry_refs: set[str] = set()
        named: dict[str, str] = {}  # member_ref -> uan of the batch's last registration naming it
        heads: dict[str, WorkerHead] = {}  # and the worker head it is expected to leave there
        if registry:
            known = store.workers(
                {update.uan for update in registry}, lock=False, registration=False
            )
            registry_refs.update(worker.member_ref for worker in known.values())
            named = {u.registration.member_ref: u.uan for u in registry if u.registration}
            registry_refs.update(named)
            heads = {
                u.registration.member_ref: _expected_head(u.uan, u.registration, known.get(u.uan))
                for u in registry
                if u.registration
            }
        collections, appended, appended_moved = self._append_later(
            store, collections, registry_refs, outcome
        )
        members = store.lock_members(collections.keys() | registry_refs, named, heads)

        # Brings the rows it writes up to date (version, uan, worker's head, history deleted).
        affected, fresh = self._apply_registry(store, registry, outcome, members)

        changed, moved = self._add_collections(members, collections, outcome)
        store.save_histories([members[ref] for ref in sorted(changed)])
        members.update(appended)
        moved |= appended_moved
        targets = [
            row
            for ref, row in members.items()
            if row.worker is not None
            and (ref in moved or row.worker.uan in affected)
            # a first registration with nothing collected yet is stored as its baseline
            and not (row.worker.uan in fresh and not row.history)
        ]
        targets.sort(key=_member_ref)
        return outcome, self._recompute(store, targets, now, outcome)

    # --- rule 8: the member histories --------------------------------------------------------

    def _append_later(
        self,
        store: LocatorStore,
        collections: Mapping[str, list[RationCollection]],
        registry_refs: set[str],
        outcome: BatchOutcome,
    ) -> tuple[Mapping[str, list[RationCollection]], dict[str, MemberRow], set[str]]:
        """The common member first, without a read before the write: collections of months
        after every stored one are appended to the stored history in one statement
        (``LaterMonths``), as ``_add_collections`` would store them, and a member not stored
        yet is inserted with them. Members a registration of the batch names are always read
        first.

        Returns the collections left to add after reading their members, the rows appended
        whose worker's timeline may have changed (locked, as the append left them), and those
        among them whose timeline the rules must derive again (``may_confirm``, as
        ``_add_collections`` asks it)."""
        appends = [
            (ref, later)
            for ref, batch in collections.items()
            if ref not in registry_refs and (later := later_months(batch)) is not None
        ]
        appended, review = store.append_histories(appends)
        if not appended:
            return collections, {}, set()
        # LaterMonths' third item: the transactions counted
        outcome.new_observations += sum(later[2] for ref, later in appends if ref in appended)
        moved = {
            ref
            for ref, row in review.items()
            if row.worker is not None
            and may_confirm(
                row.history,
                {collection.allocation_month for collection in collections[ref]},
                row.worker.current_district,
                row.worker.last_rebaseline,
                self._params,
            )
        }
        rest = {ref: batch for ref, batch in collections.items() if ref not in appended}
        return rest, review, moved

    def _add_collections(
        self,
        members: dict[str, MemberRow],
        collections: Mapping[str, list[RationCollection]],
        outcome: BatchOutcome,
    ) -> tuple[set[str], set[str]]:
        """Count each collection not seen before in its member's history.

        Returns (members whose history changed, members whose timeline may have changed). The
        second set leaves out, without deriving anything, members for whom no rule can give
        another answer: every month the batch touched kept its monthly district (rule 3), or
        is a month after all the member's observed months where the worker already is.
        ``collections``: grouped by ``by_member``. Most members take one compiled step
        (``MemberHistory.merge_later``: collections of months after every stored one); the
        others add each collection, then ask ``may_move``.
        """
        changed: set[str] = set()
        moved: set[str] = set()
        touched: dict[str, dict[str, District | None]] = {}
        for ref, batch in collections.items():
            row = members[ref]
            worker = row.worker
            if row.uan is not None or row.deregistered_at is None:  # no late ones to skip
                merged = row.history.merge_later(
                    batch,
                    None if worker is None else worker.current_district,
                    None if worker is None else worker.last_rebaseline,
                )
                if merged is not None:
                    counted, moves = merged
                    if counted:
                        outcome.new_observations += counted
                        changed.add(ref)
                    # collections of months after every stored one: may_move, made finer
                    if (
                        moves
                        and worker is not None
                        and may_confirm(
                            row.history,
                            {collection.allocation_month for collection in batch},
                            worker.current_district,
                            worker.last_rebaseline,
                            self._params,
                        )
                    ):
                        moved.add(ref)
                    continue
            history = row.history
            before = touched[ref] = {}
            for collection in batch:
                if (
                    row.uan is None
                    and row.deregistered_at is not None
                    and collection.transacted_at <= row.deregistered_at
                ):
                    continue  # the deleted worker's history (rule 11), arriving late
                month = collection.allocation_month
                if month not in before:
                    before[month] = history.month_district(month)
                if history.add(
                    observation_key(collection.source, collection.transaction_id),
                    month,
                    epoch_us(collection.transacted_at),
                    collection.auth_mode.is_biometric,
                    collection.fps_id,
                    collection.fps_location,
                ):
                    outcome.new_observations += 1
                    changed.add(ref)
        moved.update(
            ref
            for ref, months in touched.items()
            if (worker := members[ref].worker) is not None
            and may_move(
                members[ref].history, months, worker.current_district, worker.last_rebaseline
            )
        )
        return changed, moved

    # --- rule 11: the registry ---------------------------------------------------------------

    def _apply_registry(
        self,
        store: LocatorStore,
        registry: Sequence[RegistryUpdate],
        outcome: BatchOutcome,
        members: Mapping[str, MemberRow],
    ) -> tuple[set[str], set[str]]:
        """Apply registry records in order. Returns the uans whose timeline must be recomputed,
        and those of them registered for the first time in this batch. ``members``: the
        batch's locked members (those ``lock_members`` created carry a uan given in advance)."""
        if not registry:
            return set(), set()
        current = store.workers({update.uan for update in registry}, lock=True)
        affected: set[str] = set()
        fresh: set[str] = set()
        deletions: list[tuple[str, str, datetime]] = []
        member_assignments: dict[str, str | None] = {}  # the last word per member wins
        saved: dict[str, StoredWorker] = {}
        for update in registry:
            old = saved.get(update.uan) or current.get(update.uan)
            if update.registration is None:
                if old is not None:
                    deletions.append((old.uan, old.member_ref, update.recorded_at))
                    member_assignments[old.member_ref] = None
                    saved.pop(update.uan, None)
                    current.pop(update.uan, None)
                    affected.discard(update.uan)
                    fresh.discard(update.uan)
                    outcome.deregistrations += 1
                continue
            new = update.registration
            old_registration = self._registration(old) if old else None
            if old_registration is not None and new.updated_at < old_registration.updated_at:
                continue  # an older version re-delivered: the registry moves forward only
            baselines = next_baselines(
                old_registration, new, baselines_from_json(old.baselines) if old else ()
            )
            if old is not None and old.member_ref != new.member_ref:
                member_assignments[old.member_ref] = None
            member_assignments[new.member_ref] = new.uan
            if old is None:
                fresh.add(new.uan)
            baseline = new.baseline
            saved[new.uan] = StoredWorker(
                uan=new.uan,
                member_ref=new.member_ref,
                registration=update.encoded
                or self._codec.encode(WORKER_REGISTRATION, worker_registration_to_avro(new)),
                profile=profile_json(new.permanent_address, new.present_address, new.sms_reachable),
                baselines=baselines_to_json(baselines),
                current_state_lgd=old.current_state_lgd if old else baseline.state_lgd,
                current_district_lgd=old.current_district_lgd if old else baseline.district_lgd,
                last_address_request_at=old.last_address_request_at if old else None,
                active_event_ids=old.active_event_ids if old else [],
            )
            outcome.registrations += 1
            if (
                old_registration is None
                or _addresses(old_registration) != _addresses(new)
                or old_registration.member_ref != new.member_ref
            ):
                affected.add(new.uan)
        for ref, row in members.items():
            if row.created and row.uan is not None:  # given in advance: None unless assigned
                member_assignments.setdefault(ref, None)
        # A uan deregistered and registered again in one batch ends registered.
        store.set_member_uans(
            [
                (ref, uan)
                for ref, uan in member_assignments.items()
                if ref not in members or members[ref].uan != uan
            ],
            members,
        )
        store.delete_workers([d for d in deletions if d[0] not in saved], members)
        store.save_workers(list(saved.values()), members)
        return affected, fresh

    # --- rules 1-9, 12: recompute the affected workers ----------------------------------------

    def _recompute(
        self,
        store: LocatorStore,
        targets: Sequence[MemberRow],
        now: datetime,
        outcome: BatchOutcome,
    ) -> list[OutboxRow]:
        if not targets:
            return []
        derived: list[tuple[StoredWorker, WorkerProfile, Timeline, list[str]]] = []
        stale_ids: list[str] = []
        # Read after their members' rows were locked: no other batch changes them now.
        workers = store.workers(
            (row.worker.uan for row in targets if row.worker), lock=False, registration=False
        )
        for row in targets:
            assert row.worker is not None  # targets are registered members
            worker = workers[row.worker.uan]
            profile = self._profile(worker)
            timeline = derive_from_history(profile, row.history, self._params)
            stale = stale_event_ids(timeline, worker.active_event_ids)
            stale_ids.extend(stale)
            derived.append((worker, profile, timeline, stale))
            outcome.recomputed_workers += 1
        stored_stale = {
            change.event_id: self._change(change) for change in store.changes(stale_ids)
        }

        outbox: list[OutboxRow] = []
        new_changes: list[StoredChange] = []
        retracted: list[str] = []
        updated: list[StoredWorker] = []
        for worker, profile, timeline, stale in derived:
            uan = worker.uan
            events = reconcile_published(
                profile,
                timeline,
                frozenset(worker.active_event_ids),
                [stored_stale[event_id] for event_id in stale],
                now,
            )
            for event in events:
                body = self._codec.encode(LOCATION_CHANGED, location_changed_to_avro(event))
                outbox.append(OutboxRow(self._names.location_changes, uan.encode(), body))
                new_changes.append(
                    StoredChange(
                        event_id=event.event_id,
                        uan=uan,
                        change_type=event.change_type.value,
                        effective_month=event.effective_month,
                        active=event.change_type is not ChangeType.RETRACTED,
                        detected_at=event.detected_at,
                        body=body,
                    )
                )
                if event.supersedes_event_id is not None:
                    retracted.append(event.supersedes_event_id)
                outcome.changes.append(event)
            last_requested_at = worker.last_address_request_at
            for move in events:
                if move.change_type is ChangeType.RETRACTED:
                    continue
                # Rule 9, decided for each new change with its location, on event time (the
                # first day of its effective month): another batching asks the same questions.
                as_of = month_start(move.effective_month)
                request = address_update_request(
                    profile, move.current_location, last_requested_at, as_of, self._params
                )
                if request is not None:
                    body = self._codec.encode(
                        ADDRESS_UPDATE_REQUESTED, address_update_requested_to_avro(request)
                    )
                    outbox.append(
                        OutboxRow(self._names.address_update_requests, uan.encode(), body)
                    )
                    last_requested_at = as_of
                    outcome.address_requests += 1
            current = timeline.current_location
            after = replace(
                worker,
                current_state_lgd=current.state_lgd,
                current_district_lgd=current.district_lgd,
                last_address_request_at=last_requested_at,
                active_event_ids=[change.event_id for change in timeline.changes],
                profile=worker.profile
                or profile_json(
                    profile.permanent_address, profile.present_address, profile.sms_reachable
                ),
            )
            if after != worker:  # update-only: most collections change nothing derived
                updated.append(after)
        store.record_changes(new_changes, retracted)
        store.update_derived(updated)
        return outbox

    def _profile(self, worker: StoredWorker) -> WorkerProfile:
        baselines = baselines_from_json(worker.baselines)
        if worker.profile is None:  # a row from before migration 0002
            return WorkerProfile.from_registration(self._registration(worker), baselines)
        stored = orjson.loads(worker.profile)
        present = stored["r"]
        return WorkerProfile(
            uan=worker.uan,
            permanent_address=Location.from_list(stored["p"]),
            present_address=None if present is None else Location.from_list(present),
            sms_reachable=stored["s"],
            baselines=baselines,
        )

    def _registration(self, worker: StoredWorker) -> WorkerRegistration:
        if worker.registration is None:
            raise ValueError(f"worker {worker.uan}: registration not read")
        _, datum = self._codec.decode(worker.registration, WORKER_REGISTRATION)
        return worker_registration_from_avro(datum)

    def _change(self, stored: StoredChange) -> LocationChanged:
        _, datum = self._codec.decode(stored.body, LOCATION_CHANGED)
        return location_changed_from_avro(datum)


def profile_json(permanent: Location, present: Location | None, sms_reachable: bool) -> bytes:
    """What the rules need of a registration, for ``workers.profile`` (migration 0002)."""
    return orjson.dumps(
        {
            "p": permanent.as_list(),
            "r": None if present is None else present.as_list(),
            "s": sms_reachable,
        }
    )


def _expected_head(
    uan: str, registration: WorkerRegistration, stored: StoredWorker | None
) -> WorkerHead:
    """The worker head a registration is expected to leave on its member's row: a new worker
    is where the registration places them (rule 11's first baseline); a known one stays where
    derived. ``save_workers`` corrects a head that turns out otherwise."""
    if stored is None:
        baseline = registration.baseline
        return WorkerHead(uan, baseline.state_lgd, baseline.district_lgd, None)
    return stored.head


def _member_ref(row: MemberRow) -> str:
    return row.member_ref


def by_member(collections: Sequence[RationCollection]) -> dict[str, list[RationCollection]]:
    """A batch's collections by member, each transaction once: of a transaction id seen twice
    in the batch, the smallest content (as ``derive_timeline`` does), never the first to
    arrive. What ``Locator.apply_batch`` takes."""
    grouped: dict[str, list[RationCollection]] = {}
    for collection in _in_content_order(collections):
        batch = grouped.get(collection.member_ref)
        if batch is None:
            grouped[collection.member_ref] = [collection]
        else:
            batch.append(collection)
    return grouped


def _in_content_order(collections: Sequence[RationCollection]) -> Sequence[RationCollection]:
    """The batch with each transaction once: of one seen twice, the smallest content (the
    order of distinct transactions does not matter to a history)."""
    if len({(c.source, c.transaction_id) for c in collections}) == len(collections):
        return collections  # the common case: no transaction twice
    kept: dict[tuple[str, str], RationCollection] = {}
    for collection in collections:
        key = (collection.source, collection.transaction_id)
        other = kept.get(key)
        if other is None or _content(collection) < _content(other):
            kept[key] = collection
    return list(kept.values())


def _content(collection: RationCollection) -> tuple[Any, ...]:
    where = collection.fps_location
    return (
        collection.transacted_at,
        collection.allocation_month,
        collection.auth_mode.value,
        collection.fps_id,
        where.state_lgd,
        where.district_lgd,
        -1 if where.subdistrict_lgd is None else where.subdistrict_lgd,
        -1 if where.village_town_lgd is None else where.village_town_lgd,
        "" if where.pincode is None else where.pincode,
    )


def baselines_to_json(baselines: tuple[Baseline, ...]) -> list[list[Any]]:
    return [[month, location_to_avro(location)] for month, location in baselines]


def baselines_from_json(stored: list[list[Any]]) -> tuple[Baseline, ...]:
    return tuple((month, location_from_avro(location)) for month, location in stored)


def _addresses(registration: WorkerRegistration) -> tuple[object, object]:
    return registration.permanent_address, registration.present_address
