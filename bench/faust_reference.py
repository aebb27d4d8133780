#!/usr/bin/env python3
"""The Faust reference of issue 5: the same rules, one event at a time, state in a Faust table.

A child process of bench/run; not meant to be run by hand. One straightforward faust-streaming
agent reads both input topics (raw bytes), decodes and validates each record with the same
intake code as the locator (``read_collection`` / ``read_registration``), and keeps, per
``member_ref``, everything the rules need in the ``members`` table (``memory://`` by default):
the worker's registration (Avro, hex) and baseline history, their observations, the changes
published and not retracted, and the rule 9 cooldown. A ``uans`` table maps uan to member_ref
for tombstones. Table values go to their changelogs as JSON (Faust's default). For every
collection of a registered worker (and every registry record that changes an address), it
rebuilds the worker's observations and calls
``eshram_locator.domain.rules.derive_timeline`` and ``reconcile``, then sends each new
``LocationChanged`` (and ``AddressUpdateRequested``) to ``--output``. Both tables are keyed
across topics with different partition counts, so they use Faust's partitioner for their
changelogs (``use_partitioner=True``); one worker holds every partition.

What it leaves out, compared with the locator: dead letters are only counted (not produced),
and the unregistered-member grace purge is not run. Neither matters for the bench's input.

It writes a JSON status file (atomically) every ``--status-every`` events and when it reaches
``--expected``: ``processed``, ``first_at`` (wall time after the first event), ``last_at``,
``changes``, ``registry_records``, ``recomputes`` (derive_timeline calls) and, at the end,
``active_changes`` (MOVED/RETURNED_HOME not retracted).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faust

from bench.harness import vm_hwm_kb, write_status
from eshram_locator import bootstrap
from eshram_locator.avro_codec import AvroCodec
from eshram_locator.domain.model import (
    AuthMode,
    ChangeType,
    Location,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.domain.months import month_start
from eshram_locator.domain.rules import (
    Observation,
    RuleParams,
    WorkerProfile,
    address_update_request,
    derive_timeline,
    next_baselines,
    reconcile,
)
from eshram_locator.errors import PermanentRecordError
from eshram_locator.intake import RawMessage, read_collection, read_registration
from eshram_locator.locating import baselines_from_json, baselines_to_json
from eshram_locator.postgres.store import observation_key
from eshram_locator.records import (
    ADDRESS_UPDATE_REQUESTED,
    LOCATION_CHANGED,
    WORKER_REGISTRATION,
    address_update_requested_to_avro,
    location_changed_from_avro,
    location_changed_to_avro,
    worker_registration_from_avro,
    worker_registration_to_avro,
)
from eshram_locator.topics import TopicNames

State = dict[str, Any]


def _millis(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)


def _new_state() -> State:
    return {
        "uan": None,
        "reg": None,  # the WorkerRegistration, Avro single-object encoding, hex
        "baselines": [],
        "obs": [],  # [key, month, ms, auth, fps_id, state, district, sub, village, pincode]
        "emitted": [],  # [[event_id, LocationChanged as Avro hex], ...], active only
        "last_request_ms": None,
        "dereg_ms": None,
    }


class Reference:
    """The rules, one event at a time, against a Faust table."""

    def __init__(self, args: argparse.Namespace) -> None:
        settings = bootstrap.load_settings()
        self.codec: AvroCodec = bootstrap.codec(settings)
        self.params: RuleParams = bootstrap.rule_params(settings)
        self.names = TopicNames(args.prefix)
        self.args = args
        self.processed = 0
        self.changes = 0
        self.rejected = 0
        self.registry_records = 0
        self.recomputes = 0
        self.first_at: float | None = None
        self.app = faust.App(
            args.app_id,
            broker=f"kafka://{args.bootstrap}",
            store=args.store,
            datadir=str(args.data_dir),
            topic_partitions=settings.collections_partitions,
            topic_replication_factor=1,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=False,
        )
        self.members = self.app.Table(
            "members",
            default=None,
            partitions=settings.collections_partitions,
            use_partitioner=True,
        )
        self.uans = self.app.Table(
            "uans",
            default=None,
            partitions=settings.collections_partitions,
            use_partitioner=True,
        )
        self.output = self.app.topic(args.output, key_serializer="raw", value_serializer="raw")
        inputs = self.app.topic(
            self.names.collections,
            self.names.registry,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.app.agent(inputs, name="reference")(self._agent)

    # --- the agent ---------------------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            raw = RawMessage(
                message.topic,
                message.partition,
                message.offset,
                event.key,
                event.value,
                tuple(message.headers or ()),
            )
            try:
                if raw.topic == self.names.collections:
                    await self._collection(read_collection(self.codec, raw))
                else:
                    self.registry_records += 1
                    uan = (raw.key or b"").decode("utf-8", errors="replace")
                    await self._registry(
                        uan, read_registration(self.codec, raw), int(message.timestamp * 1000)
                    )
            except PermanentRecordError:
                self.rejected += 1
            self.processed += 1
            if self.first_at is None:
                self.first_at = time.time()
            if self.processed == self.args.expected:
                self._report(final=True)
            elif self.processed % self.args.status_every == 0:
                self._report()

    async def _collection(self, collection: RationCollection) -> None:
        ref = collection.member_ref
        state = self.members.get(ref) or _new_state()
        at = _millis(collection.transacted_at)
        if state["uan"] is None and state["dereg_ms"] is not None and at <= state["dereg_ms"]:
            return  # the deleted worker's history (rule 11 tombstone)
        key = observation_key(collection.source, collection.transaction_id)
        if any(row[0] == key for row in state["obs"]):
            return  # rule 8: a transaction seen before changes nothing
        where = collection.fps_location
        state["obs"].append(
            [
                key,
                collection.allocation_month,
                at,
                collection.auth_mode.value,
                collection.fps_id,
                where.state_lgd,
                where.district_lgd,
                where.subdistrict_lgd,
                where.village_town_lgd,
                where.pincode,
            ]
        )
        if state["uan"] is not None:
            await self._recompute(state)
        self.members[ref] = state

    async def _registry(
        self, uan: str, registration: WorkerRegistration | None, recorded_ms: int
    ) -> None:
        old_ref = self.uans.get(uan)
        if registration is None:  # tombstone: the worker's state and history go
            if old_ref is not None:
                ref = str(old_ref)
                state = _new_state()
                state["dereg_ms"] = recorded_ms
                self.members[ref] = state
                self.uans.pop(uan, None)
            return
        ref = registration.member_ref
        if old_ref is not None:
            previous = str(old_ref)
            if previous != ref:
                moved = self.members.get(previous) or _new_state()
                moved["uan"], moved["reg"] = None, None
                self.members[previous] = moved
        state = self.members.get(ref) or _new_state()
        old = self._registration(state)
        if old is not None and registration.updated_at < old.updated_at:
            return  # an older version re-delivered
        baselines = next_baselines(
            old, registration, baselines_from_json(state["baselines"]) if old else ()
        )
        state["uan"] = uan
        state["reg"] = self.codec.encode(
            WORKER_REGISTRATION, worker_registration_to_avro(registration)
        ).hex()
        state["baselines"] = baselines_to_json(baselines)
        self.uans[uan] = ref
        if old is None or (old.permanent_address, old.present_address) != (
            registration.permanent_address,
            registration.present_address,
        ):
            await self._recompute(state)
        self.members[ref] = state

    # --- the rules ---------------------------------------------------------------------------

    def _registration(self, state: State) -> WorkerRegistration | None:
        if state["reg"] is None:
            return None
        _, datum = self.codec.decode(bytes.fromhex(state["reg"]), WORKER_REGISTRATION)
        return worker_registration_from_avro(datum)

    async def _recompute(self, state: State) -> None:
        self.recomputes += 1
        registration = self._registration(state)
        assert registration is not None
        uan = registration.uan
        profile = WorkerProfile.from_registration(
            registration, baselines_from_json(state["baselines"])
        )
        observations = [
            Observation(
                transaction_id=key,
                allocation_month=month,
                transacted_at=datetime.fromtimestamp(ms / 1000, UTC),
                auth_mode=AuthMode(auth),
                fps_id=fps_id,
                fps_location=Location(s, d, sub, village, pincode),
            )
            for key, month, ms, auth, fps_id, s, d, sub, village, pincode in state["obs"]
        ]
        timeline = derive_timeline(profile, observations, self.params)
        emitted = [
            location_changed_from_avro(self.codec.decode(bytes.fromhex(body), LOCATION_CHANGED)[1])
            for _, body in state["emitted"]
        ]
        events = reconcile(profile, timeline, emitted, datetime.now(UTC))
        if not events:
            return
        active = {event_id: body for event_id, body in state["emitted"]}
        last_ms = state["last_request_ms"]
        last = None if last_ms is None else datetime.fromtimestamp(last_ms / 1000, UTC)
        for event in events:
            body = self.codec.encode(LOCATION_CHANGED, location_changed_to_avro(event))
            await self.output.send(key=uan.encode(), value=body)
            self.changes += 1
            if event.change_type is ChangeType.RETRACTED:
                active.pop(str(event.supersedes_event_id), None)
                continue
            active[event.event_id] = body.hex()
            as_of = month_start(event.effective_month)
            request = address_update_request(
                profile, event.current_location, last, as_of, self.params
            )
            if request is not None:
                await self.output.send(
                    key=uan.encode(),
                    value=self.codec.encode(
                        ADDRESS_UPDATE_REQUESTED, address_update_requested_to_avro(request)
                    ),
                )
                last = as_of
        state["emitted"] = [[event_id, body] for event_id, body in active.items()]
        state["last_request_ms"] = None if last is None else _millis(last)

    # --- reporting ---------------------------------------------------------------------------

    def _report(self, *, final: bool = False) -> None:
        status: dict[str, Any] = {
            "processed": self.processed,
            "first_at": self.first_at,
            "last_at": time.time(),
            "changes": self.changes,
            "rejected": self.rejected,
            "registry_records": self.registry_records,
            "recomputes": self.recomputes,
            "vm_hwm_kb": vm_hwm_kb(),
            "done": final,
        }
        if final:
            status["active_changes"] = sum(
                len(state["emitted"]) for state in self.members.values() if state
            )
        write_status(self.args.status, status)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers.")
    parser.add_argument("--prefix", required=True, help="Topic prefix of the run's inputs.")
    parser.add_argument("--app-id", required=True, help="Faust app id (consumer group).")
    parser.add_argument("--output", required=True, help="Topic for the events it derives.")
    parser.add_argument("--expected", type=int, required=True, help="Input messages in all.")
    parser.add_argument("--status", type=Path, required=True, help="JSON status file to write.")
    parser.add_argument("--status-every", type=int, default=2_000, help="Events per status.")
    parser.add_argument("--store", default="memory://", help="Faust table store URL.")
    parser.add_argument("--data-dir", type=Path, required=True, help="Faust data directory.")
    args = parser.parse_args()
    reference = Reference(args)
    worker = faust.Worker(reference.app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
