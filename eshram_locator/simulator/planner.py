"""Planning a population: every worker's months decided up front by one seeded generator.

A plan says, for each worker and month, which transactions happen (who authenticates how, at
which shop, early or late in the month, arriving on time, late or twice) and which registry
records the worker has. ``population.Simulation`` turns plans into records; the ground truth
comes from the plans alone. Everything is decided in worker order from ``random.Random(seed)``,
so a config always gives the same plans.

Speed: a month at home (most months) takes a handful of ``random()`` draws and usually reuses a
transaction tuple prepared once per worker; only the rarer months go through the general path.
"""

from __future__ import annotations

import random
import re
from bisect import bisect
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import accumulate
from typing import NamedTuple

from eshram_locator.domain.model import (
    AuthMode,
    CollectionItem,
    District,
    Location,
    Portability,
    WorkerRegistration,
)
from eshram_locator.domain.months import IST, month_from_index, month_index
from eshram_locator.simulator.config import (
    BEHAVIOURS,
    DEREGISTERED,
    INTER_DISTRICT_MOVE,
    INTER_STATE_MOVE,
    NON_MIGRANT,
    RETURN_MIGRANT,
    SEASONAL,
    SETTLED_MIGRANT,
    SimulationConfig,
)
from eshram_locator.simulator.places import RICE_STATES, STATE_ABBREVIATIONS, SyntheticMap
from eshram_locator.simulator.truth import KIND_SEASONAL, TrueMove, confirmed_changes, true_moves
from eshram_locator.topics import COLLECTIONS, REGISTRY

IM_PDS = "IM-PDS"  # Integrated Management of PDS: the inter-state portability system
DAY_S = 86_400

# Timing of a transaction within its allocation month (see Simulation.messages).
ANY_DAY, EARLY, LATE = 0, 1, 2
# Delay of a transaction: 0 on time, k > 0 months late, AT_END after the last month.
AT_END = -1

# Enumerations by index: a planned transaction holds only strings and small ints, so the
# garbage collector untracks it (a population holds hundreds of thousands of them).
AUTH_MODES = (AuthMode.FINGERPRINT, AuthMode.IRIS, AuthMode.FACE, AuthMode.OTP, AuthMode.MANUAL)
FINGERPRINT, IRIS, FACE, OTP, MANUAL = range(5)
BIOMETRIC_BELOW = 3  # auth index < 3: FINGERPRINT, IRIS, FACE
PORTABILITIES = (Portability.NONE, Portability.INTRA_STATE, Portability.INTER_STATE)
NONE, INTRA_STATE, INTER_STATE = range(3)

# A planned transaction: (member_ref, auth index, shop index, timing, items index,
# portability index, source, delay, duplicate); duplicate 0 = once, 1 = twice in the same
# batch, 2 = once more in the next batch.
Tx = tuple[str, int, int, int, int, int, str, int, int]
Route = tuple[int, str]  # (portability index, source)

_NO_TXS: tuple[Tx, ...] = ()
_OCCUPATIONS = (
    "9313.0100",  # building construction labourer
    "9211.0100",  # farm hand
    "9111.0100",  # domestic helper
    "5230.0100",  # street vendor
    "8322.0100",  # car and taxi driver
    "7533.0100",  # tailor
    "9333.0100",  # loader and unloader
    "7112.0100",  # mason
)
_CARD_SIZES = (1, 2, 3, 4, 5, 6, 7)
_CARD_SIZE_CUM_WEIGHTS = tuple(accumulate((5, 15, 20, 25, 18, 10, 7)))
_TWELVE_DIGITS = re.compile(r"\d{12}")


class Trip(NamedTuple):
    """A one-month trip: presence at ``district`` in ``month`` only. Never a TrueMove."""

    uan: str
    month: str
    district: District


@dataclass(slots=True)
class WorkerPlan:
    uan: str
    card_id: str
    card_state: int
    behaviour: str
    months: list[tuple[Tx, ...]]  # per month index
    registry: list[tuple[int, WorkerRegistration | None]]  # (month index or -1 = snapshot)


@dataclass(slots=True)
class PlannedPopulation:
    smap: SyntheticMap
    items: list[tuple[CollectionItem, ...]]  # by items index
    plans: list[WorkerPlan]
    truth: list[TrueMove]
    trips: list[Trip]
    counts: dict[str, dict[str, int]]


def month_start(label: str) -> tuple[int, int]:
    """Epoch seconds of IST midnight on the 1st of ``YYYY-MM``, and the month's length in days."""
    year, month = int(label[:4]), int(label[5:7])
    start = datetime(year, month, 1, tzinfo=IST)
    following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=IST)
    return int(start.timestamp()), (following - start).days


@dataclass(slots=True)
class _Card:
    """One worker's ration card and the things every month of theirs needs."""

    member_ref: str
    home: int  # district index
    home_district: District
    home_shop: int
    home_route: Route
    card_size: int
    own_share: int  # persons the worker lifts for when away
    scheme: str
    household: list[str]  # other members' refs, made when first needed


class Planner:
    """Plans every worker of a ``SimulationConfig``."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.smap = SyntheticMap(config.shops_per_district)
        self.months = config.months
        first = month_index(config.start_month)
        self.labels = [month_from_index(first + m) for m in range(config.months)]
        self.month_starts = [month_start(label) for label in self.labels]
        self.features: Counter[str] = Counter()
        self.behaviours: Counter[str] = Counter()
        self.truth: list[TrueMove] = []
        self.trips: list[Trip] = []
        self._behaviour_shares = list(config.behaviour_shares().items())
        self._uans: set[str] = set()
        self._tokens: set[str] = set()
        self._cards: set[str] = set()
        self._item_cache: dict[tuple[bool, str, int], int] = {}
        self._item_table: list[tuple[CollectionItem, ...]] = []

    def run(self) -> PlannedPopulation:
        plans = [self._plan_worker() for _ in range(self.config.workers)]
        return PlannedPopulation(
            self.smap, self._item_table, plans, self.truth, self.trips, self._counts(plans)
        )

    def _counts(self, plans: list[WorkerPlan]) -> dict[str, dict[str, int]]:
        by_behaviour: Counter[str] = Counter()
        kinds = len(PORTABILITIES)
        modes = [0] * (len(AUTH_MODES) * kinds)  # by auth index * kinds + portability index
        registry = 0
        for plan in plans:
            registry += len(plan.registry)
            messages = 0
            for txs in plan.months:
                for tx in txs:
                    messages += 2 if tx[8] else 1
                    modes[tx[1] * kinds + tx[5]] += 1
            by_behaviour[plan.behaviour] += messages
        features = Counter(self.features)
        for index, count in enumerate(modes):
            auth, portability = divmod(index, kinds)
            features[f"auth_{AUTH_MODES[auth].value.lower()}"] += count
            features[f"portability_{PORTABILITIES[portability].value.lower()}"] += count
        return {
            "messages_by_topic": {
                COLLECTIONS: sum(by_behaviour.values()),
                REGISTRY: registry,
            },
            "workers_by_behaviour": {b: self.behaviours[b] for b in BEHAVIOURS},
            "collections_by_behaviour": {b: by_behaviour[b] for b in BEHAVIOURS},
            "events_by_feature": dict(sorted(features.items())),
            "true_moves_by_kind": dict(sorted(Counter(m.kind for m in self.truth).items())),
            "true_moves": {
                "total": len(self.truth),
                "detectable": sum(1 for move in self.truth if move.detectable),
            },
        }

    # --- identities ---------------------------------------------------------------------------

    def _uan(self) -> str:
        """12 digits starting "10": a UAN never looks like an Aadhaar number (first digit 2-9)."""
        while True:
            uan = f"10{self.rng.getrandbits(34) % 10**10:010d}"
            if uan not in self._uans:
                self._uans.add(uan)
                return uan

    def _member_ref(self) -> str:
        """An opaque token: "MR" + 20 hex characters, never with a run of 12 digits."""
        while True:
            token = f"MR{self.rng.getrandbits(80):020x}"
            if token not in self._tokens and _TWELVE_DIGITS.search(token) is None:
                self._tokens.add(token)
                return token

    def _card_id(self, state_lgd: int, district_k: int) -> str:
        """A state-scoped ration card number in one of three styles, at most 11 digits in a row."""
        abbreviation = STATE_ABBREVIATIONS[state_lgd]
        length = 7 + state_lgd % 5  # 7..11 digits, fixed per state
        style = state_lgd % 3
        while True:
            digits = 10 ** (length - 1) + int(self.rng.random() * 9 * 10 ** (length - 1))
            if style == 0:
                card = f"{abbreviation}{digits}"
            elif style == 1:
                card = f"{abbreviation}-{district_k:03d}-{digits}"
            else:
                card = f"{abbreviation}/RC/{digits}"
            if card not in self._cards:
                self._cards.add(card)
                return card

    def _items(self, shop_state: int, scheme: str, persons: int) -> int:
        """Index of the grain for ``persons`` at 5 kg a head: rice, or wheat and rice, by the
        shop's state."""
        rice = shop_state in RICE_STATES
        key = (rice, scheme, persons)
        index = self._item_cache.get(key)
        if index is None:
            if rice:
                items: tuple[CollectionItem, ...] = (
                    CollectionItem("rice", scheme, 5000 * persons),
                )
            else:
                items = (
                    CollectionItem("wheat", scheme, 3000 * persons),
                    CollectionItem("rice", scheme, 2000 * persons),
                )
            index = self._item_cache[key] = len(self._item_table)
            self._item_table.append(items)
        return index

    def _route(self, shop_index: int, home: District) -> Route:
        """Portability and originating system of a lift at a shop by a card from ``home``."""
        shop = self.smap.shops[shop_index]
        if shop.district == home:
            return NONE, shop.state_source
        if shop.district.state_lgd == home.state_lgd:
            return INTRA_STATE, shop.state_source
        return INTER_STATE, IM_PDS

    # --- one worker ---------------------------------------------------------------------------

    def _between(self, low: int, high: int) -> int | None:
        """A month index in [low, high], or None when the range is empty."""
        return low + int(self.rng.random() * (high - low + 1)) if low <= high else None

    def _pick_behaviour(self) -> str:
        draw = self.rng.random()
        for behaviour, share in self._behaviour_shares:
            if draw < share:
                return behaviour
            draw -= share
        return NON_MIGRANT

    def _destination(self, origin: int, other_state: bool, avoid: list[int]) -> int | None:
        """A migration destination district from district ``origin``, not in ``avoid``."""
        smap, rng = self.smap, self.rng
        state = smap.districts[origin].state_lgd
        if other_state:
            state = smap.destination_state(rng, state)
        found = smap.destination_district(rng, state, avoid)
        if found is None:  # every district avoided: go to another state
            found = smap.destination_district(rng, smap.destination_state(rng, state), avoid)
        return found

    def _plan_worker(self) -> WorkerPlan:
        config, rng, smap, months = self.config, self.rng, self.smap, self.months
        uan = self._uan()
        member_ref = self._member_ref()
        home_state = smap.home_state(rng)
        home = smap.any_district(rng, home_state)
        home_district = smap.districts[home]
        home_shop = smap.random_shop(rng, home)
        card_id = self._card_id(home_state, home_district.district_lgd - home_state * 100)
        card_size = _CARD_SIZES[
            bisect(_CARD_SIZE_CUM_WEIGHTS, rng.random() * _CARD_SIZE_CUM_WEIGHTS[-1])
        ]
        card = _Card(
            member_ref=member_ref,
            home=home,
            home_district=home_district,
            home_shop=home_shop,
            home_route=self._route(home_shop, home_district),
            card_size=card_size,
            own_share=1 if card_size < 3 or rng.random() < 0.7 else 2,
            scheme="PMGKAY" if rng.random() < 0.8 else "NFSA",
            household=[],
        )

        registered_from = -1  # month of the first registry record; -1 = the snapshot
        if months >= 4 and rng.random() < config.late_registration_share:
            registered_from = rng.randint(1, 2)
            self.features["late_registrations"] += 1
        first_event = max(1, registered_from + 1)  # moves and trips only once registered

        behaviour = self._pick_behaviour()
        residence = [home] * months
        kinds: dict[int, str] = {}
        present_shop: int | None = None
        tombstone: int | None = None
        if behaviour in (INTER_DISTRICT_MOVE, INTER_STATE_MOVE):
            month = self._between(first_event, months - 1)
            destination = self._destination(home, behaviour == INTER_STATE_MOVE, [home])
            if month is None or destination is None:
                behaviour = NON_MIGRANT
            else:
                residence[month:] = [destination] * (months - month)
        elif behaviour == SEASONAL:
            month = self._between(first_event, months - 2)
            destination = self._destination(home, rng.random() < 0.5, [home])
            if month is None or destination is None:
                behaviour = NON_MIGRANT
            else:
                end = min(months, month + rng.randint(3, 5))
                residence[month:end] = [destination] * (end - month)
                kinds[month] = KIND_SEASONAL
        elif behaviour in (SETTLED_MIGRANT, RETURN_MIGRANT):
            destination = self._destination(home, rng.random() < 0.65, [home])
            back: int | None = None
            if behaviour == RETURN_MIGRANT:
                back = self._between(max(first_event, 2), months - 2)
                if back is None:
                    back = self._between(first_event, months - 1)
            if destination is None or (behaviour == RETURN_MIGRANT and back is None):
                behaviour = NON_MIGRANT
            else:
                until = months if back is None else back
                residence[:until] = [destination] * until
                present_shop = smap.random_shop(rng, destination)
        elif behaviour == DEREGISTERED:
            tombstone = self._between(max(2, first_event), months - 1)
            if tombstone is None:
                behaviour = NON_MIGRANT
        self.behaviours[behaviour] += 1

        # The shop the worker uses during a stay in each district.
        stay_shops = {home: home_shop}
        for district in residence:
            if district not in stay_shops:
                present_district = (
                    None if present_shop is None else smap.shops[present_shop].district
                )
                if present_shop is not None and present_district == smap.districts[district]:
                    stay_shops[district] = present_shop
                else:
                    stay_shops[district] = smap.random_shop(rng, district)

        trip_month: int | None = None
        trip_shop = 0
        if rng.random() < config.one_month_trip_share:
            trip_month, trip_shop = self._trip(uan, home, residence, first_event)

        month_txs, observed = self._plan_months(card, residence, stay_shops, trip_month, trip_shop)

        permanent = smap.shops[home_shop].location
        present: Location | None = None
        if present_shop is not None:
            present = smap.shops[present_shop].location
            self.features["present_address_differs"] += 1
        elif rng.random() < config.present_equals_permanent_share:
            present = permanent
        registration = WorkerRegistration(
            uan=uan,
            member_ref=member_ref,
            permanent_address=permanent,
            present_address=present,
            occupation_nco=_OCCUPATIONS[int(rng.random() * len(_OCCUPATIONS))]
            if rng.random() < 0.9
            else None,
            consent_state_sharing=rng.random() < config.consent_share,
            sms_reachable=rng.random() < config.sms_reachable_share,
            updated_at=self._registered_at(registered_from),
        )
        if residence[0] != residence[-1] or kinds:
            self.truth.extend(
                true_moves(
                    uan,
                    self.labels,
                    [smap.districts[d] for d in residence],
                    observed,
                    registration.baseline.district,
                    home_district,
                    config.confirm_months,
                    config.max_gap_months,
                    kinds,
                )
            )
        registry = self._registry(
            registration,
            registered_from,
            tombstone,
            behaviour,
            residence,
            stay_shops,
            observed,
            month_txs,
        )
        return WorkerPlan(uan, card_id, home_state, behaviour, month_txs, registry)

    def _trip(
        self, uan: str, home: int, residence: list[int], first_event: int
    ) -> tuple[int | None, int]:
        """A month away from a steady residence, to a district the worker never lives in."""
        rng, smap, months = self.rng, self.smap, self.months
        candidates = [
            m
            for m in range(first_event, months)
            if residence[m] == residence[m - 1]
            and (m + 1 == months or residence[m + 1] == residence[m])
        ]
        if not candidates:
            return None, 0
        month = rng.choice(candidates)
        district = self._destination(
            residence[month], rng.random() < 0.5, sorted(set(residence) | {home})
        )
        if district is None:
            return None, 0
        self.trips.append(Trip(uan, self.labels[month], smap.districts[district]))
        self.features["one_month_trips"] += 1
        return month, smap.random_shop(rng, district)

    def _plan_months(
        self,
        card: _Card,
        residence: list[int],
        stay_shops: dict[int, int],
        trip_month: int | None,
        trip_shop: int,
    ) -> tuple[list[tuple[Tx, ...]], list[District | None]]:
        """Each month's transactions, and the worker's monthly location (rule 3) or None."""
        config, features = self.config, self.features
        random_ = self.rng.random
        home, home_shop, member_ref = card.home, card.home_shop, card.member_ref
        home_district = card.home_district
        portability, source = card.home_route
        items_full = self._items(home_district.state_lgd, card.scheme, card.card_size)
        # The usual month, prepared once: the worker's own biometric lift at the home shop.
        usual = {
            mode: ((member_ref, mode, home_shop, ANY_DAY, items_full, portability, source, 0, 0),)
            for mode in (FINGERPRINT, IRIS, FACE)
        }
        missing = config.missing_month_per_month
        household_to = config.household_lift_home_per_month if card.card_size > 1 else 0.0
        fallback_to = household_to + config.biometric_fallback_per_month
        switch = config.shop_switch_per_month
        rare = config.late_share + config.duplicate_share
        iris_to = config.iris_share
        face_to = iris_to + config.face_share

        month_txs: list[tuple[Tx, ...]] = []
        observed: list[District | None] = []
        previous = residence[0]
        for m, here in enumerate(residence):
            if here != home or previous != home or m == trip_month:
                txs = self._away_month(card, m, residence, stay_shops, trip_month, trip_shop)
                month_txs.append(txs)
                location: District | None = None
                for tx in txs:
                    if tx[0] == member_ref and tx[1] < BIOMETRIC_BELOW:
                        location = self.smap.shops[tx[2]].district
                observed.append(location)
            elif random_() < missing:
                features["missing_months"] += 1
                month_txs.append(_NO_TXS)
                observed.append(None)
            else:
                draw = random_()
                if draw < household_to:
                    month_txs.append(
                        (
                            self._tx(
                                self._household_member(card),
                                self._biometric(),
                                home_shop,
                                ANY_DAY,
                                items_full,
                                card.home_route,
                            ),
                        )
                    )
                    features["household_lifts_at_home"] += 1
                    observed.append(None)
                elif draw < fallback_to:
                    month_txs.append(
                        (
                            self._tx(
                                member_ref,
                                self._non_biometric(),
                                home_shop,
                                ANY_DAY,
                                items_full,
                                card.home_route,
                            ),
                        )
                    )
                    features["own_otp_manual_at_home"] += 1
                    observed.append(None)
                else:
                    draw = random_()
                    mode = IRIS if draw < iris_to else FACE if draw < face_to else FINGERPRINT
                    if random_() < switch:
                        features["same_district_shop_switches"] += 1
                        shop = self.smap.other_shop(self.rng, home_shop)
                        month_txs.append(
                            (
                                self._tx(
                                    member_ref, mode, shop, ANY_DAY, items_full, card.home_route
                                ),
                            )
                        )
                    else:
                        draw = random_()
                        if draw >= rare:
                            month_txs.append(usual[mode])
                        else:
                            month_txs.append(
                                (
                                    self._tx(
                                        member_ref,
                                        mode,
                                        home_shop,
                                        ANY_DAY,
                                        items_full,
                                        card.home_route,
                                        draw,
                                    ),
                                )
                            )
                    observed.append(home_district)
            previous = here
        return month_txs, observed

    def _away_month(
        self,
        card: _Card,
        m: int,
        residence: list[int],
        stay_shops: dict[int, int],
        trip_month: int | None,
        trip_shop: int,
    ) -> tuple[Tx, ...]:
        """A month away from home, a trip, or a move month: the general path."""
        config, rng, features = self.config, self.rng, self.features
        home, home_district = card.home, card.home_district
        here = residence[m]
        trip = m == trip_month
        split = m > 0 and residence[m - 1] != here and rng.random() < config.split_move_month_share
        away = here != home or trip
        rest = max(1, card.card_size - card.own_share)
        member_ref = card.member_ref
        txs: list[Tx] = []

        def lift(who: str, auth: int, shop: int, timing: int, persons: int) -> Tx:
            route = self._route(shop, home_district)
            items = self._items(self.smap.shops[shop].district.state_lgd, card.scheme, persons)
            return self._tx(who, auth, shop, timing, items, route)

        if rng.random() < config.missing_month_per_month:
            features["missing_months"] += 1
            split = False
        elif trip:
            txs.append(lift(member_ref, self._biometric(), trip_shop, ANY_DAY, card.own_share))
        elif split:
            before = residence[m - 1]
            persons = rest if before == home else card.own_share
            txs.append(lift(member_ref, self._biometric(), stay_shops[before], EARLY, persons))
            persons = card.card_size if here == home else card.own_share
            txs.append(lift(member_ref, self._biometric(), stay_shops[here], LATE, persons))
            features["split_move_months"] += 1
        else:
            shop = stay_shops[here]
            if rng.random() < config.shop_switch_per_month:
                features["same_district_shop_switches"] += 1
                shop = self.smap.other_shop(rng, shop)
            persons = card.card_size if here == home else card.own_share
            txs.append(lift(member_ref, self._biometric(), shop, ANY_DAY, persons))
        if away and not split:
            draw = rng.random()
            if draw < config.household_lift_away_per_month and card.card_size > 1:
                who = self._household_member(card)
                txs.append(lift(who, self._biometric(), card.home_shop, ANY_DAY, rest))
                features["household_lifts_while_away"] += 1
            elif draw < config.household_lift_away_per_month + config.own_otp_away_per_month:
                txs.append(lift(member_ref, self._non_biometric(), card.home_shop, ANY_DAY, rest))
                features["own_otp_manual_while_away"] += 1
        return tuple(txs)

    def _tx(
        self,
        member_ref: str,
        auth: int,
        shop: int,
        timing: int,
        items: int,
        route: Route,
        draw: float | None = None,
    ) -> Tx:
        """A transaction, late (``late_share``) or duplicated (``duplicate_share``) by chance."""
        config, rng = self.config, self.rng
        if draw is None:
            draw = rng.random()
        delay = duplicate = 0
        if draw < config.late_share:
            delay = AT_END if rng.random() < config.late_to_end_share else rng.randint(2, 5)
            self.features["late_transactions" if delay > 0 else "late_transactions_at_end"] += 1
            if rng.random() < config.duplicate_share:
                duplicate = rng.randint(1, 2)
        elif draw < config.late_share + config.duplicate_share:
            duplicate = rng.randint(1, 2)
        if duplicate:
            self.features["duplicated_transactions"] += 1
        return (member_ref, auth, shop, timing, items, route[0], route[1], delay, duplicate)

    def _biometric(self) -> int:
        draw = self.rng.random()
        if draw < self.config.iris_share:
            return IRIS
        if draw < self.config.iris_share + self.config.face_share:
            return FACE
        return FINGERPRINT

    def _non_biometric(self) -> int:
        return MANUAL if self.rng.random() < self.config.manual_share else OTP

    def _household_member(self, card: _Card) -> str:
        """Another member of the worker's card: a ``member_ref`` never registered with e-Shram."""
        if not card.household:
            card.household.extend(self._member_ref() for _ in range(card.card_size - 1))
        return card.household[int(self.rng.random() * len(card.household))]

    def _registered_at(self, month: int) -> datetime:
        """``updated_at`` of a record first produced in month ``month`` (-1: before the window)."""
        rng = self.rng
        if month < 0:
            start, _ = self.month_starts[0]
            seconds = start - (30 + int(rng.random() * 870)) * DAY_S + int(rng.random() * DAY_S)
        else:
            start, days = self.month_starts[month]
            seconds = start + int(rng.random() * days) * DAY_S + int(rng.random() * DAY_S)
        return datetime.fromtimestamp(seconds, UTC)

    def _registry(
        self,
        registration: WorkerRegistration,
        registered_from: int,
        tombstone: int | None,
        behaviour: str,
        residence: list[int],
        stay_shops: dict[int, int],
        observed: list[District | None],
        month_txs: list[tuple[Tx, ...]],
    ) -> list[tuple[int, WorkerRegistration | None]]:
        """The worker's registry records in production order: (month, record or tombstone).

        At most one update a month, each a new version with a later ``updated_at``: an SMS or
        consent flip, an address correction within the district (workers who never move), or
        the present address catching up with a confirmed permanent move. That last one
        re-baselines the worker (rule 11: observations before its month are frozen history), so
        it comes two months after the confirming month (a whole month of records between, more
        than any consumer batch) and only when the worker's transactions of the confirming months
        are on time: the change is published before the registry catches up.
        """
        config, rng, smap, months = self.config, self.rng, self.smap, self.months
        records: list[tuple[int, WorkerRegistration | None]] = [(registered_from, registration)]
        last = months - 1 if tombstone is None else tombstone - 1
        earliest = max(1, registered_from + 1)
        updates: dict[int, str] = {}
        if rng.random() < config.registry_update_share:
            month = self._between(earliest, last)
            if month is not None:
                updates[month] = "consent" if rng.random() < 0.5 else "sms"
        if rng.random() < config.address_correction_share and len(set(residence)) == 1:
            month = self._between(earliest, last)
            if month is not None and month not in updates:
                updates[month] = "correction"
        if behaviour in (INTER_DISTRICT_MOVE, INTER_STATE_MOVE):
            changes = confirmed_changes(
                registration.baseline.district,
                observed,
                config.confirm_months,
                config.max_gap_months,
            )
            if changes and rng.random() < config.mover_address_update_share:
                change = changes[0]
                month = change.confirmed_in + 2
                on_time = all(
                    tx[7] == 0
                    for txs in month_txs[change.effective : change.confirmed_in + 1]
                    for tx in txs
                    if tx[0] == registration.member_ref
                )
                if on_time and month <= last and month not in updates:
                    updates[month] = "mover"
        current = registration
        for month in sorted(updates):
            what = updates[month]
            updated_at = self._registered_at(month)
            if what == "consent":
                current = replace(
                    current,
                    consent_state_sharing=not current.consent_state_sharing,
                    updated_at=updated_at,
                )
                self.features["registry_consent_flips"] += 1
            elif what == "sms":
                current = replace(
                    current, sms_reachable=not current.sms_reachable, updated_at=updated_at
                )
                self.features["registry_sms_flips"] += 1
            elif what == "correction":
                shop = smap.other_shop(rng, stay_shops[residence[0]])
                current = replace(
                    current, present_address=smap.shops[shop].location, updated_at=updated_at
                )
                self.features["registry_address_corrections"] += 1
            else:
                current = replace(
                    current,
                    present_address=smap.shops[stay_shops[residence[-1]]].location,
                    updated_at=updated_at,
                )
                self.features["registry_mover_address_updates"] += 1
            records.append((month, current))
        if tombstone is not None:
            records.append((tombstone, None))
            self.features["registry_tombstones"] += 1
        return records
