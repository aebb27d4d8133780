"""The simulator's synthetic map: districts, Fair Price Shops and migration corridors.

Everything here is **synthetic** except the states themselves (``geography.STATES``, real LGD
state codes). Real LGD district codes are not used: district ``k`` (1..N) of a state gets
``district_lgd = state_lgd * 100 + k``, so Uttar Pradesh's districts are 901..930. N grows with
the state's e-Shram weight (5 for the smallest UTs, 30 for Uttar Pradesh). Districts ``k = 1`` and
``k = 2`` play the state's big cities: migrants going to a state pick them more often.
Sub-district and village codes and pincodes are made up from the same numbers, short enough that
no field can ever hold a 12-digit run.

Pure data, built once per ``SyntheticMap`` (cheap: a few thousand shops). Each shop has one
``Location`` object that every transaction at that shop reuses.
"""

from __future__ import annotations

import random
from bisect import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from eshram_locator.domain.model import District, Location
from eshram_locator.geography import STATES, STATES_BY_LGD

# Two-letter codes (vehicle registration style) used in PDS source names and ration card ids.
STATE_ABBREVIATIONS: dict[int, str] = {
    1: "JK",
    2: "HP",
    3: "PB",
    4: "CH",
    5: "UK",
    6: "HR",
    7: "DL",
    8: "RJ",
    9: "UP",
    10: "BR",
    11: "SK",
    12: "AR",
    13: "NL",
    14: "MN",
    15: "MZ",
    16: "TR",
    17: "ML",
    18: "AS",
    19: "WB",
    20: "JH",
    21: "OD",
    22: "CG",
    23: "MP",
    24: "GJ",
    27: "MH",
    28: "AP",
    29: "KA",
    30: "GA",
    31: "LD",
    32: "KL",
    33: "TN",
    34: "PY",
    35: "AN",
    36: "TS",
    37: "LA",
    38: "DH",
}

# States whose ration is all rice; the others lift wheat and rice.
RICE_STATES: frozenset[int] = frozenset(
    {10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 28, 29, 30, 31, 32, 33, 34, 35, 36}
)

# Where migrants from the big origin states go (destination state LGD -> weight). Loosely after
# the Census 2011 D-series and ISMW studies: UP and Bihar to Delhi, Maharashtra, Gujarat and the
# Punjab/Haryana farm belt; West Bengal and Odisha to the south and Gujarat; Jharkhand everywhere.
ORIGIN_CORRIDORS: dict[int, dict[int, float]] = {
    9: {27: 22, 7: 22, 24: 14, 6: 10, 3: 8, 29: 6, 36: 5, 33: 4, 32: 3},
    10: {7: 20, 27: 14, 6: 12, 3: 12, 24: 10, 29: 8, 33: 8, 32: 6, 36: 6},
    19: {32: 20, 29: 16, 27: 14, 7: 12, 33: 12, 24: 8, 36: 8},
    21: {24: 28, 33: 14, 32: 14, 28: 12, 29: 10, 27: 10, 36: 8},
    20: {27: 16, 7: 14, 24: 12, 29: 12, 33: 12, 32: 10, 6: 8, 3: 6},
}
# Destinations of inter-state migrants from any other state.
DEFAULT_CORRIDOR: dict[int, float] = {27: 20, 7: 16, 24: 16, 29: 12, 33: 10, 32: 8, 6: 9, 3: 9}
# Share of inter-state moves that follow a corridor (the rest go anywhere, by e-Shram weight).
CORRIDOR_SHARE_FROM_ORIGIN = 0.85
CORRIDOR_SHARE_OTHERS = 0.6
# Weight of the "city" districts k=1 and k=2 when a migrant picks a district in a state.
CITY_DISTRICT_WEIGHTS = (6.0, 3.0)


def districts_in_state(eshram_share: float) -> int:
    """Synthetic district count: 5 for the smallest states, 30 for the largest."""
    return max(5, min(30, int(3 + 2.5 * eshram_share + 0.5)))


@dataclass(frozen=True, slots=True)
class Shop:
    """A Fair Price Shop: its id, its one shared ``Location`` and its state's PDS source."""

    index: int
    fps_id: str
    location: Location
    district: District
    state_source: str  # e.g. "UP-PDS"


class SyntheticMap:
    """Districts and shops of every state, indexed for fast random picks."""

    def __init__(self, shops_per_district: int) -> None:
        if shops_per_district < 1:
            raise ValueError("shops_per_district must be at least 1")
        self.shops_per_district = shops_per_district
        self.districts: list[District] = []
        self.shops: list[Shop] = []
        self.state_districts: dict[int, list[int]] = {}  # state lgd -> district indexes
        self._district_index: dict[District, int] = {}
        for state in STATES:
            indexes: list[int] = []
            for k in range(1, districts_in_state(state.eshram_share) + 1):
                district = District(state.lgd, state.lgd * 100 + k)
                index = len(self.districts)
                self.districts.append(district)
                self._district_index[district] = index
                indexes.append(index)
                for n in range(1, shops_per_district + 1):
                    self.shops.append(_make_shop(len(self.shops), district, n))
            self.state_districts[state.lgd] = indexes
        self.state_lgds: list[int] = [state.lgd for state in STATES]
        self.state_cum_weights: list[float] = list(
            accumulate(state.eshram_share for state in STATES)
        )
        self._city_weights: dict[int, list[float]] = {
            lgd: _district_weights(len(indexes)) for lgd, indexes in self.state_districts.items()
        }

    def district_index(self, district: District) -> int:
        return self._district_index[district]

    def shop_of(self, district_index: int, n: int) -> int:
        """Global index of shop ``n`` (0-based) of a district."""
        return district_index * self.shops_per_district + n % self.shops_per_district

    def random_shop(self, rng: random.Random, district_index: int) -> int:
        return district_index * self.shops_per_district + int(
            rng.random() * self.shops_per_district
        )

    def other_shop(self, rng: random.Random, shop_index: int) -> int:
        """Another shop in the same district (the same one if the district has only one)."""
        if self.shops_per_district == 1:
            return shop_index
        base = shop_index - shop_index % self.shops_per_district
        offset = 1 + int(rng.random() * (self.shops_per_district - 1))
        return base + (shop_index - base + offset) % self.shops_per_district

    def home_state(self, rng: random.Random) -> int:
        """A state drawn by its share of e-Shram registrations."""
        cum = self.state_cum_weights
        return self.state_lgds[bisect(cum, rng.random() * cum[-1], 0, len(cum) - 1)]

    def any_district(self, rng: random.Random, state_lgd: int) -> int:
        """A district of the state, uniformly (where people are registered from)."""
        indexes = self.state_districts[state_lgd]
        return indexes[int(rng.random() * len(indexes))]

    def destination_district(
        self, rng: random.Random, state_lgd: int, avoid: Sequence[int] = ()
    ) -> int | None:
        """A district of the state that migrants go to (cities weighted up), not in ``avoid``."""
        indexes = self.state_districts[state_lgd]
        weights = self._city_weights[state_lgd]
        choices = [(i, w) for i, w in zip(indexes, weights, strict=True) if i not in avoid]
        if not choices:
            return None
        return rng.choices([i for i, _ in choices], weights=[w for _, w in choices])[0]

    def destination_state(self, rng: random.Random, origin_lgd: int) -> int:
        """Another state, along the origin's corridors most of the time."""
        corridor = ORIGIN_CORRIDORS.get(origin_lgd)
        share = CORRIDOR_SHARE_FROM_ORIGIN if corridor is not None else CORRIDOR_SHARE_OTHERS
        if corridor is None:
            corridor = DEFAULT_CORRIDOR
        if rng.random() < share:
            states = [lgd for lgd in corridor if lgd != origin_lgd]
            weights = [corridor[lgd] for lgd in states]
        else:
            states = [lgd for lgd in self.state_lgds if lgd != origin_lgd]
            weights = [STATES_BY_LGD[lgd].eshram_share for lgd in states]
        return rng.choices(states, weights=weights)[0]


def _district_weights(count: int) -> list[float]:
    weights = [1.0] * count
    for k, weight in enumerate(CITY_DISTRICT_WEIGHTS[:count]):
        weights[k] = weight
    return weights


def _make_shop(index: int, district: District, n: int) -> Shop:
    state_lgd, district_lgd = district
    k = district_lgd - state_lgd * 100
    location = Location(
        state_lgd=state_lgd,
        district_lgd=district_lgd,
        subdistrict_lgd=district_lgd * 10 + n % 5,  # <= 5 digits
        village_town_lgd=district_lgd * 1000 + n,  # <= 7 digits
        pincode=f"{110000 + state_lgd * 10000 + k * 100 + n % 100:06d}",
    )
    return Shop(
        index=index,
        fps_id=f"FPS-{state_lgd:02d}-{district_lgd}-{n:03d}",
        location=location,
        district=district,
        state_source=f"{STATE_ABBREVIATIONS[state_lgd]}-PDS",
    )
