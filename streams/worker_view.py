"""What the streams worker knows of one worker: the value of the ``workers`` table (key uan).

Pure. One record per worker holds everything the fan-out, the migration flows and the query
API need, so each input message changes exactly one table record, written as one changelog
message: a crash can lose a whole update but never half of one.

- ``sharing``/``origin``: from the latest ``WorkerRegistration`` (None until it arrives).
- ``changes``: every ``LocationChanged`` seen for the worker by ``event_id``, each with its
  status. Statuses are assignments, not increments: a MOVED/RETURNED_HOME record makes its
  change active, a RETRACTED record makes the change it supersedes retracted. Applying the
  same record again changes nothing, which is what makes a replay after a crash harmless.
- ``held``: encoded changes waiting for the registration (see ``routing``).

The most recent ``MAX_CHANGES`` changes are kept (older ones drop out of history and flows).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from eshram_locator.domain.model import ChangeType, District, Location, LocationChanged
from streams.routing import SharingProfile

MAX_CHANGES: Final = 200
MAX_HELD: Final = 50


@dataclass(frozen=True, slots=True)
class ChangeEntry:
    """One change of location as the worker view keeps it."""

    event_id: str
    change_type: ChangeType  # MOVED or RETURNED_HOME (a retraction only sets ``active``)
    effective_month: str
    current: Location
    previous: Location | None
    detected_at_ms: int
    active: bool


@dataclass(frozen=True, slots=True)
class WorkerView:
    uan: str
    partition: int
    sharing: SharingProfile | None = None
    origin: District | None = None
    changes: tuple[ChangeEntry, ...] = ()
    held: tuple[bytes, ...] = ()

    # --- derived ----------------------------------------------------------------------------

    def active_changes(self) -> list[ChangeEntry]:
        """Active changes in timeline order (effective month, then detection, then id)."""
        return sorted(
            (change for change in self.changes if change.active),
            key=lambda c: (c.effective_month, c.detected_at_ms, c.event_id),
        )

    def current_change(self) -> ChangeEntry | None:
        active = self.active_changes()
        return active[-1] if active else None

    def current_location(self) -> Location | None:
        """The location the latest active change set; else the baseline its first change left."""
        current = self.current_change()
        if current is not None:
            return current.current
        if self.changes:
            first = min(self.changes, key=lambda c: (c.effective_month, c.event_id))
            return first.previous
        return None

    @property
    def consents(self) -> bool:
        return self.sharing is not None and self.sharing.consent_state_sharing

    def visible_to(self, state_lgd: int) -> bool:
        """A state sees a consenting worker whose home, previous or current location it holds."""
        if not self.consents or self.sharing is None:
            return False
        states = {self.sharing.home_state_lgd}
        current = self.current_change()
        if current is not None:
            states.add(current.current.state_lgd)
            if current.previous is not None:
                states.add(current.previous.state_lgd)
        else:
            location = self.current_location()
            if location is not None:
                states.add(location.state_lgd)
        return state_lgd in states

    # --- updates ----------------------------------------------------------------------------

    def registered(self, profile: SharingProfile, origin: District) -> WorkerView:
        return replace(self, sharing=profile, origin=origin)

    def with_change(self, event: LocationChanged) -> WorkerView:
        """Apply one LocationChanged (idempotent: applying it twice equals applying it once)."""
        by_id = {change.event_id: change for change in self.changes}
        if event.change_type is ChangeType.RETRACTED:
            target = event.supersedes_event_id or ""
            known = by_id.get(target)
            if known is not None:
                by_id[target] = replace(known, active=False)
            else:  # a retraction of a change we never saw: keep it, inactive, for history
                by_id[target] = _entry(event, target, ChangeType.MOVED, active=False)
        else:
            by_id[event.event_id] = _entry(event, event.event_id, event.change_type, active=True)
        ordered = sorted(by_id.values(), key=lambda c: (c.effective_month, c.event_id))
        return replace(self, changes=tuple(ordered[-MAX_CHANGES:]))

    def holding(self, encoded: bytes) -> WorkerView:
        if encoded in self.held:
            return self
        return replace(self, held=(*self.held, encoded)[-MAX_HELD:])

    def released(self) -> WorkerView:
        return replace(self, held=())

    # --- table value ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "uan": self.uan,
            "p": self.partition,
            "sharing": None
            if self.sharing is None
            else [self.sharing.consent_state_sharing, self.sharing.home_state_lgd],
            "origin": None if self.origin is None else list(self.origin),
            "changes": [_entry_to_json(change) for change in self.changes],
            "held": [base64.b64encode(item).decode("ascii") for item in self.held],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerView:
        sharing = data["sharing"]
        origin = data["origin"]
        return cls(
            uan=data["uan"],
            partition=data["p"],
            sharing=None if sharing is None else SharingProfile(bool(sharing[0]), int(sharing[1])),
            origin=None if origin is None else District(int(origin[0]), int(origin[1])),
            changes=tuple(_entry_from_json(item) for item in data["changes"]),
            held=tuple(base64.b64decode(item) for item in data["held"]),
        )


def _entry(event: LocationChanged, event_id: str, kind: ChangeType, *, active: bool) -> ChangeEntry:
    return ChangeEntry(
        event_id=event_id,
        change_type=kind,
        effective_month=event.effective_month,
        current=event.current_location,
        previous=event.previous_location,
        detected_at_ms=int(event.detected_at.timestamp() * 1000),
        active=active,
    )


def _location_to_json(location: Location | None) -> list[Any] | None:
    return None if location is None else location.as_list()


def _location_from_json(data: list[Any] | None) -> Location | None:
    return None if data is None else Location.from_list(data)


def _entry_to_json(change: ChangeEntry) -> dict[str, Any]:
    return {
        "id": change.event_id,
        "type": change.change_type.value,
        "month": change.effective_month,
        "cur": _location_to_json(change.current),
        "prev": _location_to_json(change.previous),
        "at": change.detected_at_ms,
        "active": change.active,
    }


def _entry_from_json(data: Mapping[str, Any]) -> ChangeEntry:
    current = _location_from_json(data["cur"])
    if current is None:
        raise ValueError("a change entry without a current location")
    return ChangeEntry(
        event_id=data["id"],
        change_type=ChangeType(data["type"]),
        effective_month=data["month"],
        current=current,
        previous=_location_from_json(data["prev"]),
        detected_at_ms=int(data["at"]),
        active=bool(data["active"]),
    )
