"""Rule 10: which state topics a ``LocationChanged`` goes to. Pure.

Each change goes to the state of the worker's home (permanent address), of the location left
and of the location reached, each state once, and only when the worker consents to sharing
with states. The central topic always gets it (that is the locator's job, not ours).

Ordering race: a change may be read before the worker's registration. Unknown consent is not
consent, so nothing is shared yet; the change is *held* (``Routing.held``) and routed when the
registration arrives, with the consent it carries then. A tombstone drops what was held.
"""

from __future__ import annotations

from dataclasses import dataclass

from eshram_locator.domain.model import Location


@dataclass(frozen=True, slots=True)
class SharingProfile:
    """What routing needs of a worker's registration."""

    consent_state_sharing: bool
    home_state_lgd: int


@dataclass(frozen=True, slots=True)
class Routing:
    """The state topics to publish to (empty: none); ``held``: wait for the registration."""

    states: frozenset[int]
    held: bool = False


HOLD = Routing(frozenset(), held=True)
NOWHERE = Routing(frozenset())


def route(
    previous_location: Location | None,
    current_location: Location,
    profile: SharingProfile | None,
) -> Routing:
    """Rule 10 for one change, given the sharing profile of its worker (None: not known yet)."""
    if profile is None:
        return HOLD
    if not profile.consent_state_sharing:
        return NOWHERE
    states = {profile.home_state_lgd, current_location.state_lgd}
    if previous_location is not None:
        states.add(previous_location.state_lgd)
    return Routing(frozenset(states))
