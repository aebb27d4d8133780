"""The locator's unit of work: one batch of registry records and collections in, state and
outgoing events out, all inside one PostgreSQL transaction (the caller's).

Kafka-free: the consumer process decodes messages, calls ``apply_batch`` inside
``store.unit_of_work()``, saves the offsets in the same transaction, and leaves the outbox to
the relay. Everything here is set-based: a handful of statements per batch, whatever its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from eshram_locator.avro_codec import AvroCodec
from eshram_locator.domain.model import (
    ChangeType,
    LocationChanged,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.domain.months import month_start
from eshram_locator.domain.rules import (
    Baseline,
    RuleParams,
    WorkerProfile,
    address_update_request,
    derive_timeline,
    next_baselines,
    reconcile,
)
from eshram_locator.postgres.store import LocatorStore, OutboxRow, StoredChange, StoredWorker
from eshram_locator.records import (
    address_update_requested_to_avro,
    location_changed_from_avro,
    location_changed_to_avro,
    location_from_avro,
    location_to_avro,
    worker_registration_from_avro,
    worker_registration_to_avro,
)
from eshram_locator.topics import TopicNames

LOCATION_CHANGED = "LocationChanged"
ADDRESS_UPDATE_REQUESTED = "AddressUpdateRequested"
WORKER_REGISTRATION = "WorkerRegistration"


@dataclass(frozen=True, slots=True)
class RegistryUpdate:
    """One record of the registry topic: a registration, or a tombstone (None) for ``uan``."""

    uan: str
    registration: WorkerRegistration | None
    recorded_at: datetime  # the record's Kafka timestamp: when a tombstone deregistered


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
        collections: Sequence[RationCollection],
        now: datetime,
    ) -> tuple[BatchOutcome, list[OutboxRow]]:
        outcome = BatchOutcome()
        registry_uans = {update.uan for update in registry}
        known = store.workers(registry_uans, lock=False)
        member_refs = {collection.member_ref for collection in collections}
        member_refs.update(worker.member_ref for worker in known.values())
        member_refs.update(u.registration.member_ref for u in registry if u.registration)
        members = store.lock_members(member_refs)

        affected = self._apply_registry(store, registry, outcome)

        new_refs = store.insert_observations(collections)
        outcome.new_observations = len(new_refs)
        for ref in new_refs:
            uan = members.get(ref)
            if uan is not None:
                affected.add(uan)
        return outcome, self._recompute(store, affected, now, outcome)

    # --- rule 11: the registry ---------------------------------------------------------------

    def _apply_registry(
        self, store: LocatorStore, registry: Sequence[RegistryUpdate], outcome: BatchOutcome
    ) -> set[str]:
        """Apply registry records in order; returns the uans whose timeline must be recomputed."""
        if not registry:
            return set()
        current = store.workers({update.uan for update in registry}, lock=True)
        affected: set[str] = set()
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
            baseline = new.baseline
            saved[new.uan] = StoredWorker(
                uan=new.uan,
                member_ref=new.member_ref,
                registration=self._codec.encode(
                    WORKER_REGISTRATION, worker_registration_to_avro(new)
                ),
                baselines=baselines_to_json(baselines),
                current_state_lgd=old.current_state_lgd if old else baseline.state_lgd,
                current_district_lgd=old.current_district_lgd if old else baseline.district_lgd,
                last_address_request_at=old.last_address_request_at if old else None,
            )
            outcome.registrations += 1
            if (
                old_registration is None
                or _addresses(old_registration) != _addresses(new)
                or old_registration.member_ref != new.member_ref
            ):
                affected.add(new.uan)
        # A uan deregistered and registered again in one batch ends registered.
        store.set_member_uans(list(member_assignments.items()))
        store.delete_workers([d for d in deletions if d[0] not in saved])
        store.save_workers(list(saved.values()))
        return affected

    # --- rules 1-9, 12: recompute the affected workers ----------------------------------------

    def _recompute(
        self, store: LocatorStore, uans: set[str], now: datetime, outcome: BatchOutcome
    ) -> list[OutboxRow]:
        if not uans:
            return []
        workers = store.workers(uans, lock=True)
        observations = store.observations(worker.member_ref for worker in workers.values())
        emitted = store.active_changes(workers)
        outbox: list[OutboxRow] = []
        new_changes: list[StoredChange] = []
        retracted: list[str] = []
        updated: list[StoredWorker] = []
        for uan in sorted(workers):
            worker = workers[uan]
            registration = self._registration(worker)
            profile = WorkerProfile.from_registration(
                registration, baselines_from_json(worker.baselines)
            )
            own = observations.get(worker.member_ref, [])
            timeline = derive_timeline(profile, own, self._params)
            previous = [self._change(stored) for stored in emitted.get(uan, [])]
            events = reconcile(profile, timeline, previous, now)
            outcome.recomputed_workers += 1
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
            updated.append(
                replace(
                    worker,
                    current_state_lgd=current.state_lgd,
                    current_district_lgd=current.district_lgd,
                    last_address_request_at=last_requested_at,
                )
            )
        store.record_changes(new_changes, retracted)
        store.save_workers(updated)
        return outbox

    def _registration(self, worker: StoredWorker) -> WorkerRegistration:
        _, datum = self._codec.decode(worker.registration, WORKER_REGISTRATION)
        return worker_registration_from_avro(datum)

    def _change(self, stored: StoredChange) -> LocationChanged:
        _, datum = self._codec.decode(stored.body, LOCATION_CHANGED)
        return location_changed_from_avro(datum)


def baselines_to_json(baselines: tuple[Baseline, ...]) -> list[list[Any]]:
    return [[month, location_to_avro(location)] for month, location in baselines]


def baselines_from_json(stored: list[list[Any]]) -> tuple[Baseline, ...]:
    return tuple((month, location_from_avro(location)) for month, location in stored)


def _addresses(registration: WorkerRegistration) -> tuple[object, object]:
    return registration.permanent_address, registration.present_address
