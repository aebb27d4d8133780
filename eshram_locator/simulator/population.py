"""A deterministic synthetic population of e-Shram workers and their monthly ration collections.

Pure: no Kafka, no clock, no global random state. ``simulate(config)`` plans every worker's
months up front (``planner``: which shop, who authenticates how, what arrives late or twice)
with ``random.Random(config.seed)``; ``Simulation.messages()`` turns the plans into domain
records in production order with a second generator seeded from the same seed, so the same
config always gives the same sequence; ``ground_truth()`` says which real moves the rules should
find (``truth``).

Behaviours (each a share in ``SimulationConfig``; the remainder, ~71 % by default, are
non-migrants who collect every month at their home shop):

* permanent inter-district and inter-state moves (destinations along real corridors, see
  ``places``); seasonal migration (away 3-5 months, then home); settled migrants who moved
  before the window (registry present address = where they live); return migrants (moved before
  the window, come home mid-window); deregistered workers (a registry tombstone mid-window; their
  collections go on and must be treated as unregistered).
* overlays on any worker: one-month trips (one month's presence elsewhere, never a move);
  household members (their own ``member_ref``, never registered) lifting on the worker's card at
  the home shop while the worker is away, and sometimes while at home; the worker's own
  OTP/MANUAL transactions at the home shop (never presence); months without any collection;
  another shop in the same district; move months with a lift at both ends (the old district
  early in the month, the new one late: rule 3 takes the latest); duplicated transactions (the
  same record twice); late transactions (2-5 months late, or at the very end); registrations
  that arrive after the worker's first collections; later registry versions (SMS-reachability
  or consent flips, address corrections within the district, the present address catching up
  with a confirmed move).

Production order: first the registry snapshot (every worker registered before the window,
shuffled), then month by month every registry record and collection of that month shuffled
together; late ones go to a later month or to a final batch. Topics are the unprefixed names of
``topics.py``; the Kafka adapter applies any prefix and encodes the values.

Records: ``transacted_at`` falls within the allocation month in IST (08:00-20:00), sometimes in
the first three days of the next month; ``EARLY`` lifts (the old district in a move month) on
days 1-10, ``LATE`` ones (the new district) from day 18, so rule 3's "latest" is well defined.

Identity never looks like an Aadhaar number: ``uan`` is "10" + 10 digits; ``member_ref`` is
"MR" + 20 hex characters with no 12-digit run; a transaction id is
``<source>-<yyyymm>-<10 hex>`` (a bijection of a counter, so unique); ration card ids hold at
most 11 digits in a row. Everything geographic below the state is synthetic (see ``places``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import NamedTuple

from eshram_locator.domain.model import RationCollection, WorkerRegistration
from eshram_locator.domain.months import month_from_index, month_index
from eshram_locator.simulator.config import BEHAVIOURS, SimulationConfig
from eshram_locator.simulator.leaks import AadhaarInjector
from eshram_locator.simulator.planner import (
    ANY_DAY,
    AUTH_MODES,
    DAY_S,
    EARLY,
    PORTABILITIES,
    PlannedPopulation,
    Planner,
    Trip,
    month_start,
)
from eshram_locator.simulator.truth import TrueMove, read_ground_truth, write_ground_truth
from eshram_locator.topics import COLLECTIONS, REGISTRY

__all__ = [
    "BEHAVIOURS",
    "SimMessage",
    "Simulation",
    "SimulationConfig",
    "Trip",
    "TrueMove",
    "read_ground_truth",
    "simulate",
    "write_ground_truth",
]

_SHOP_OPENS_S = 8 * 3600  # IST
_SHOP_HOURS_S = 12 * 3600
_EARLY_DAYS = 10  # EARLY lifts: days 1-10
_LATE_FROM_DAY = 17  # LATE lifts: day 18 on
_SPILL_DAYS = 3  # a lift spilling into the next month falls on its first 3 days
_ID_MULTIPLIER = 0x9E3779B97F  # odd, so seq -> (seq * m) mod 2**40 is a bijection
_ID_MASK = (1 << 40) - 1


class SimMessage(NamedTuple):
    """One record to produce: ``value`` None is a registry tombstone (``key`` = uan)."""

    topic: str
    key: str
    value: RationCollection | WorkerRegistration | None


class Simulation:
    """A planned population. ``messages()`` may be iterated any number of times.

    ``counts`` (for printing) has ``messages_by_topic``, ``workers_by_behaviour``,
    ``collections_by_behaviour`` (collection messages, duplicates included),
    ``events_by_feature`` (late, duplicated, household lifts, trips, registry updates, auth
    modes, portability...), ``true_moves_by_kind`` and ``true_moves`` (total, detectable).
    """

    def __init__(self, config: SimulationConfig, planned: PlannedPopulation) -> None:
        self.config = config
        self.counts = planned.counts
        self.one_month_trips: tuple[Trip, ...] = tuple(planned.trips)
        self._planned = planned

    @property
    def total_messages(self) -> int:
        return sum(self.counts["messages_by_topic"].values())

    def ground_truth(self) -> list[TrueMove]:
        """Every real change of residence district, in worker then month order."""
        return list(self._planned.truth)

    def messages(self) -> Iterator[SimMessage]:
        """Registry snapshot, then month by month (shuffled within a month), then late ones.

        With ``aadhaar_injection_rate`` > 0, that share of the records carries a raw
        Aadhaar-like number (``leaks``): a leak into ``member_ref`` is in the key too.
        """
        clean = self._clean_messages()
        rate = self.config.aadhaar_injection_rate
        if rate <= 0:
            return clean
        return self._with_leaks(clean, AadhaarInjector(rate, self.config.seed))

    def _with_leaks(
        self, messages: Iterator[SimMessage], injector: AadhaarInjector
    ) -> Iterator[SimMessage]:
        for message in messages:
            value = message.value
            leaked = None if value is None else injector.leak(value)
            if leaked is None or value is None:
                yield message
                continue
            record, leak = leaked
            key = (
                record.member_ref
                if leak.field == "member_ref" and message.topic == COLLECTIONS
                else message.key
            )
            yield SimMessage(message.topic, key, record)

    def _clean_messages(self) -> Iterator[SimMessage]:
        """Registry snapshot, then month by month (shuffled within a month), then late ones.

        A month's batch is shuffled as small integers (month, worker, position) and each record
        is built only when yielded, so the generator holds no records, and a duplicate yields
        the very same record object twice.
        """
        config = self.config
        planned = self._planned
        plans = planned.plans
        item_table = planned.items
        rng = random.Random(f"eshram-locator/simulator/messages/{config.seed}")
        months = config.months
        workers = len(plans)
        # A batch entry: >= 0 a collection, bits (month, worker, position in the month's
        # transactions); < 0 a registry record, ~entry indexing ``registry``.
        worker_bits = max(1, workers.bit_length())
        worker_mask = (1 << worker_bits) - 1
        buckets: list[list[int]] = [[] for _ in range(months + 1)]
        registry: list[SimMessage] = []
        snapshot: list[SimMessage] = []
        for plan in plans:
            for month, record in plan.registry:
                message = SimMessage(REGISTRY, plan.uan, record)
                if month < 0:
                    snapshot.append(message)
                else:
                    buckets[month].append(~len(registry))
                    registry.append(message)
        rng.shuffle(snapshot)
        yield from snapshot
        del snapshot

        salt = random.Random(f"eshram-locator/simulator/ids/{config.seed}").getrandbits(40)
        first = month_index(config.start_month)
        labels = [month_from_index(first + m) for m in range(months)]
        prefixes = [label.replace("-", "") for label in labels]
        starts = [month_start(label) for label in labels]
        seq = 0
        random_ = rng.random
        from_timestamp = datetime.fromtimestamp
        utc = UTC
        spill = config.spill_into_next_month
        collections = COLLECTIONS
        new_message = tuple.__new__  # SimMessage's own __new__, less one Python call
        message_type = SimMessage
        fps_ids = [shop.fps_id for shop in planned.smap.shops]
        locations = [shop.location for shop in planned.smap.shops]
        collection_of = RationCollection
        auth_modes = AUTH_MODES
        portabilities = PORTABILITIES
        twice: dict[int, SimMessage] = {}  # duplicated entries built once, yielded twice
        for m in range(months + 1):
            if m < months:
                base = m << worker_bits
                for w, plan in enumerate(plans):
                    txs = plan.months[m]
                    if not txs:
                        continue
                    entry = (base | w) << 2
                    for tx in txs:
                        delay = tx[7]
                        if delay == 0:
                            target = m
                        else:
                            target = months if delay < 0 else min(m + delay, months)
                        buckets[target].append(entry)
                        if tx[8]:
                            buckets[target if tx[8] == 1 else min(target + 1, months)].append(entry)
                        entry += 1
            bucket = buckets[m]
            buckets[m] = []
            rng.shuffle(bucket)
            for entry in bucket:
                if entry < 0:
                    yield registry[~entry]
                    continue
                tx_month = entry >> (worker_bits + 2)
                plan = plans[(entry >> 2) & worker_mask]
                member_ref, auth, shop_index, timing, items, port, source, _, dup = plan.months[
                    tx_month
                ][entry & 3]
                if dup:
                    built = twice.pop(entry, None)
                    if built is not None:
                        yield built
                        continue
                start_s, days = starts[tx_month]
                if timing == ANY_DAY:
                    day = int(random_() * days)
                elif timing == EARLY:
                    day = int(random_() * _EARLY_DAYS)
                else:
                    day = _LATE_FROM_DAY + int(random_() * (days - _LATE_FROM_DAY))
                if timing != EARLY and random_() < spill:
                    day = days + int(random_() * _SPILL_DAYS)
                seq += 1
                scrambled = ((seq * _ID_MULTIPLIER) & _ID_MASK) ^ salt
                message = new_message(
                    message_type,
                    (
                        collections,
                        member_ref,
                        collection_of(
                            f"{source}-{prefixes[tx_month]}-{scrambled:010x}",
                            source,
                            plan.card_id,
                            member_ref,
                            auth_modes[auth],
                            fps_ids[shop_index],
                            locations[shop_index],
                            plan.card_state,
                            portabilities[port],
                            labels[tx_month],
                            from_timestamp(
                                start_s
                                + _SHOP_OPENS_S
                                + day * DAY_S
                                + int(random_() * _SHOP_HOURS_S),
                                utc,
                            ),
                            item_table[items],
                        ),
                    ),
                )
                if dup:
                    twice[entry] = message
                yield message


def simulate(config: SimulationConfig | None = None) -> Simulation:
    """Plan a population (deterministic in ``config``); see ``Simulation``."""
    config = config if config is not None else SimulationConfig()
    return Simulation(config, Planner(config).run())
