"""Rule 10 routing: home, previous and current state, each once, only with consent."""

from __future__ import annotations

from eshram_locator.domain.model import Location
from streams.routing import HOLD, NOWHERE, SharingProfile, route

UP = Location(9, 901)
UP_OTHER = Location(9, 902)
MAHARASHTRA = Location(27, 2701)
DELHI = Location(7, 701)


def test_consenting_worker_goes_to_home_previous_and_current_state() -> None:
    routing = route(MAHARASHTRA, DELHI, SharingProfile(True, 9))
    assert routing.states == frozenset({9, 27, 7})
    assert not routing.held


def test_each_state_once() -> None:
    assert route(UP, MAHARASHTRA, SharingProfile(True, 9)).states == frozenset({9, 27})
    assert route(UP, UP_OTHER, SharingProfile(True, 9)).states == frozenset({9})


def test_no_previous_location() -> None:
    assert route(None, MAHARASHTRA, SharingProfile(True, 9)).states == frozenset({9, 27})


def test_non_consenting_worker_goes_nowhere() -> None:
    assert route(UP, MAHARASHTRA, SharingProfile(False, 9)) == NOWHERE


def test_unknown_registration_is_held_not_shared() -> None:
    routing = route(UP, MAHARASHTRA, None)
    assert routing == HOLD
    assert routing.held
    assert routing.states == frozenset()
