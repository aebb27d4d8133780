"""One input message in, the new worker view and the messages to publish out. No Faust, no I/O.

The Faust agent (``streams.app``) reads the worker's view from its table, calls ``process``,
stores the returned view and sends the returned outputs. Keeping the decisions here makes them
testable without a broker and keeps the agent a loop of table reads, writes and sends.

A record that cannot be read (undecodable, fails validation, carries an Aadhaar-like number,
key is not the record's uan) becomes a dead letter (``intake.dead_letter``) and leaves the view
unchanged: a bad record never stops the stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from eshram_locator.avro_codec import AvroCodec
from eshram_locator.domain.model import LocationChanged
from eshram_locator.errors import PermanentRecordError, ValidationError

# The guarded decode (Aadhaar check, masked DLQ copy) is shared with the locator's intake.
from eshram_locator.intake import RawMessage, dead_letter, decode_guarded, read_registration
from eshram_locator.records import LOCATION_CHANGED, location_changed_from_avro
from eshram_locator.topics import TopicNames
from streams.projection import DEFAULT_PROJECTION, StateProjection, project_change
from streams.routing import SharingProfile, route
from streams.worker_view import WorkerView

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """``view`` is the worker's new view (None: forget the worker); ``store`` says whether to
    write it (False: leave the table as it is); ``change``: the ``LocationChanged`` the message
    carried (None for a registration or a dead letter)."""

    view: WorkerView | None
    store: bool
    outputs: tuple[Output, ...] = ()
    dead_lettered: bool = False
    change: LocationChanged | None = None


@dataclass(slots=True)
class Processor:
    codec: AvroCodec
    names: TopicNames
    projections: Mapping[int, StateProjection] = field(default_factory=dict)

    def process(self, message: RawMessage, view: WorkerView | None) -> Outcome:
        try:
            if message.topic == self.names.registry:
                return self._registration(message, view)
            if message.topic == self.names.location_changes:
                return self._change(message, view)
            raise ValidationError("message from a topic the fan-out does not read")
        except PermanentRecordError as problem:
            return self._rejected(message, view, problem)
        except (KeyError, TypeError, ValueError) as problem:  # a record our checks let through
            wrapped = ValidationError(f"unprocessable record ({type(problem).__name__})")
            return self._rejected(message, view, wrapped)

    # --- registry --------------------------------------------------------------------------

    def _registration(self, message: RawMessage, view: WorkerView | None) -> Outcome:
        registration = read_registration(self.codec, message)
        if registration is None:  # tombstone: rule 11, forget the worker and what was held
            return Outcome(None, store=view is not None)
        profile = SharingProfile(
            registration.consent_state_sharing, registration.permanent_address.state_lgd
        )
        base = view or WorkerView(registration.uan, message.partition)
        updated = base.registered(profile, registration.permanent_address.district)
        outputs: list[Output] = []
        for encoded in updated.held:
            outputs.extend(self._routed(encoded, profile))
        if updated.held:
            log.info("held_changes_released", count=len(updated.held), shared=len(outputs))
        return Outcome(updated.released(), store=True, outputs=tuple(outputs))

    def _routed(self, encoded: bytes, profile: SharingProfile | None) -> list[Output]:
        _, datum = self.codec.decode(encoded, LOCATION_CHANGED)
        event = location_changed_from_avro(datum)
        routing = route(event.previous_location, event.current_location, profile)
        return [self._to_state(state, event.uan, datum) for state in sorted(routing.states)]

    # --- location changes ------------------------------------------------------------------

    def _change(self, message: RawMessage, view: WorkerView | None) -> Outcome:
        datum = decode_guarded(self.codec, message, LOCATION_CHANGED)
        event = location_changed_from_avro(datum)
        key = (message.key or b"").decode("utf-8", errors="replace")
        if key != event.uan:
            raise ValidationError("message key is not the record's uan")
        base = view or WorkerView(event.uan, message.partition)
        updated = base.with_change(event)
        routing = route(event.previous_location, event.current_location, updated.sharing)
        if routing.held:
            assert message.value is not None  # decode_guarded rejects an empty value
            log.info("change_held", reason="registration_not_seen")
            return Outcome(updated.holding(message.value), store=True, change=event)
        outputs = tuple(self._to_state(state, event.uan, datum) for state in sorted(routing.states))
        return Outcome(updated, store=True, outputs=outputs, change=event)

    def _to_state(self, state_lgd: int, uan: str, datum: dict[str, Any]) -> Output:
        projection = self.projections.get(state_lgd, DEFAULT_PROJECTION)
        topic = self.names.state(state_lgd)
        value = self.codec.encode(LOCATION_CHANGED, project_change(datum, projection), topic=topic)
        return Output(topic, uan.encode(), value)

    # --- dead letters ----------------------------------------------------------------------

    def _rejected(
        self, message: RawMessage, view: WorkerView | None, problem: PermanentRecordError
    ) -> Outcome:
        row = dead_letter(message, problem)
        log.warning(
            "dead_lettered",
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            error_class=problem.error_class,
        )
        return Outcome(
            view,
            store=False,
            outputs=(Output(row.topic, row.key, row.value, row.headers),),
            dead_lettered=True,
        )
