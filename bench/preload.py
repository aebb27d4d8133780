"""The population-scaling input of ``bench/run --preload-registry`` (issue 5).

Planning a population with the simulator costs time and memory in proportion to the population
(tens of minutes and several GB for 10,000,000 workers), and producing it makes the locator
ingest the whole registry through Kafka before any collection. In production, a month is
re-derived against a registry that is already in the locator's state. This module builds that
state directly, then produces only collections:

* ``SyntheticRegistry``: worker ``i`` of a population of ``workers``, deterministic in the seed
  and computed on demand (nothing is held per worker). Its uan is ``"11"`` + 10 digits (never
  Aadhaar-like: the first digit is 1) and its member_ref ``"MR"`` + 20 hex characters (a tag
  from the seed, ending in a letter, then ``i`` in hex: never a run of 12 digits). Both grow
  with ``i``, so the bulk load appends to the B-tree indexes. Its registration is one of a pool
  of at most 65,536 registrations drawn like the simulator's (home state by e-Shram share, a
  district and a shop of the synthetic map, 5 % settled elsewhere with a present address there,
  20 % with the present address equal to the permanent one), encoded once each with the
  locator's codec; each worker's Avro bytes are the pool entry's with its own uan and member_ref
  spliced in (both fixed-length), checked against ``AvroCodec.encode`` on a sample of rows.
* ``preload_registry``: COPY of every worker into ``members`` and ``workers`` of a migrated
  database, in chunks (bounded memory), as the locator stores a first registration
  (``Locator._apply_registry``): ``members`` (member_ref, uan, the worker's head; history
  NULL), ``workers`` (registration, ``locating.profile_json``,
  ``locating.baselines_to_json(((None, baseline),))``, current location = the baseline, no
  address request, no active change). Then VACUUM (ANALYZE) and a CHECKPOINT, so that the
  timed run neither sets hint bits nor flushes the load.
* ``collection_messages``: ``events`` collections by ``ceil(events / months)`` workers spread
  over the population, one a month for ``months`` consecutive allocation months, month by month
  (each month in its own order). A share of them (``move_share``) is away from some month on for
  two or more consecutive months (permanently, or for 2-3 months then home again), which
  confirms a move (rule 5); everyone else collects at the shop of their baseline district.
  Biometric authentication mostly (rule 1); some OTP/MANUAL at home.

Population size is the only thing that changes between two runs with the same ``--events``
and ``--preload-months``: the same number of workers collect, with the same pattern.
"""

from __future__ import annotations

import contextlib
import math
import queue
import random
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import orjson
import psycopg
from confluent_kafka import Producer

from bench.harness import Input, Namespace, log, vm_hwm_kb
from eshram_locator.avro_codec import AvroCodec
from eshram_locator.domain.model import (
    AuthMode,
    CollectionItem,
    Location,
    Portability,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.domain.months import month_from_index, month_index
from eshram_locator.kafka import clients
from eshram_locator.kafka.publish import PublishCounts, publish_simulation
from eshram_locator.locating import baselines_to_json, profile_json
from eshram_locator.records import WORKER_REGISTRATION, worker_registration_to_avro
from eshram_locator.simulator.places import RICE_STATES, STATE_ABBREVIATIONS, SyntheticMap
from eshram_locator.simulator.planner import DAY_S, IM_PDS, month_start
from eshram_locator.simulator.population import SimMessage
from eshram_locator.topics import COLLECTIONS, TopicNames

START_MONTH = "2025-04"  # the simulator's default window start
POOL_SIZE = 1 << 16  # distinct registrations (workers share them beyond that)
SHOPS_PER_DISTRICT = 12  # the simulator's default
MIN_MONTHS = 3  # a move needs a month at home, then two months away
MAX_MONTHS = 120
UAN_PREFIX = "11"  # simulated uans start with 10, latency probes with 19
UAN_DIGITS = 10
MEMBER_REF_LENGTH = 22
SETTLED_SHARE = 0.05  # registered with a present address in another district
PRESENT_EQUALS_PERMANENT_SHARE = 0.2
CONSENT_SHARE = 0.92
SMS_REACHABLE_SHARE = 0.85
OCCUPATIONS = ("9313.0100", "9211.0100", "9111.0100", "5230.0100", "8322.0100", "7533.0100")
BIOMETRIC_AT_HOME = 0.92  # the rest OTP (3/4) or MANUAL (1/4): not presence (rule 1)
SEASONAL_SHARE = 1 / 3  # of movers: away 2-3 months, then home (when the window allows)
CHUNK_ROWS = 10_000
_VERIFY_EVERY = 99_991  # and the first 100 rows: spliced Avro == AvroCodec.encode

MEMBERS_COPY = (
    "COPY members (member_ref, uan, worker_state_lgd, worker_district_lgd, worker_rebaseline)"
    " FROM STDIN (FORMAT BINARY)"
)
WORKERS_COPY = (
    "COPY workers (uan, member_ref, registration, profile, baselines, current_state_lgd,"
    " current_district_lgd) FROM STDIN (FORMAT BINARY)"
)
# Binary COPY framing (PostgreSQL's "COPY ... BINARY" file format).
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # no OIDs, no header extension
COPY_TRAILER = b"\xff\xff"
_INT32 = struct.Struct("!i")
_SMALLINT_FIELD = struct.Struct("!ih")
_INTEGER_FIELD = struct.Struct("!ii")
_JSONB_VERSION = b"\x01"
# A row's field count, then each field's length (uan: 12 bytes, member_ref: 22).
_MEMBER_HEAD = struct.pack("!hi", 5, MEMBER_REF_LENGTH)
_NULL_FIELD = _INT32.pack(-1)
_UAN_HEAD = _INT32.pack(len(UAN_PREFIX) + UAN_DIGITS)
_WORKER_HEAD = struct.pack("!hi", 7, len(UAN_PREFIX) + UAN_DIGITS)
_MEMBER_REF_HEAD = _INT32.pack(MEMBER_REF_LENGTH)

_M64 = (1 << 64) - 1
_SHOP_OPENS_S = 8 * 3600  # IST
_SHOP_HOURS_S = 12 * 3600
_ID_MULTIPLIER = 0x9E3779B97F  # odd: seq -> (seq * m) mod 2**40 is a bijection
_ID_MASK = (1 << 40) - 1
# Streams of the per-worker hash: each decision draws from its own.
_POOL, _MOVER, _DESTINATION, _MONTH, _ORDER = range(5)


def _mix(x: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers that scatters every bit."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _coprime_multiplier(modulus: int, draw: int) -> int:
    """A multiplier ``a`` with gcd(a, modulus) = 1: ``j -> (a * j + b) % modulus`` permutes."""
    if modulus <= 2:
        return 1
    a = 2 + draw % (modulus - 2)
    while math.gcd(a, modulus) != 1:
        a += 1
    return a


@dataclass(frozen=True, slots=True)
class Profile:
    """One registration of the pool (uan and member_ref are placeholders)."""

    template: WorkerRegistration
    home_shop: int  # shop index of the permanent address
    stay_shop: int  # where the worker collects when at home (the baseline's district)
    home_district: int  # district index of the permanent address (the card's home)
    stay_district: int  # district index of the baseline
    rest: bytes  # the Avro bytes after member_ref
    registration_length: bytes  # binary COPY: the registration field's length (int32)
    tail: bytes  # binary COPY of ``workers``: the fields after the registration
    worker_head: bytes  # binary COPY of ``members``: the fields after the uan (migration 0004)


@dataclass(frozen=True, slots=True)
class Mover:
    start: int  # first month away
    end: int  # first month home again (``months``: never)
    shop: int  # the shop where the worker collects while away


class SyntheticRegistry:
    """A population of ``workers`` registered workers, deterministic in ``seed``."""

    def __init__(
        self,
        codec: AvroCodec,
        seed: int,
        workers: int,
        *,
        start_month: str = START_MONTH,
        pool_size: int = POOL_SIZE,
    ) -> None:
        if not 1 <= workers <= 10**UAN_DIGITS:
            raise ValueError(f"workers must be in 1..{10**UAN_DIGITS}")
        self.codec = codec
        self.seed = seed
        self.workers = workers
        self.start_month = start_month
        self.smap = SyntheticMap(SHOPS_PER_DISTRICT)
        self._key = _mix(seed & _M64)
        rng = random.Random(f"bench/preload/registry/{seed}")
        self.member_tag = f"{rng.getrandbits(36):09x}{'abcdef'[rng.randrange(6)]}"
        self.pool_size = min(workers, pool_size)
        window_start, _ = month_start(start_month)
        self._prefix = b""
        self._mid = b""
        self.pool = [self._profile(rng, window_start) for _ in range(self.pool_size)]

    # --- identities and registrations ---------------------------------------------------------

    def uan(self, index: int) -> str:
        return f"{UAN_PREFIX}{index:0{UAN_DIGITS}d}"

    def member_ref(self, index: int) -> str:
        return f"MR{self.member_tag}{index:010x}"

    def draw(self, stream: int, value: int) -> int:
        """64 random bits for ``value`` in decision ``stream``, deterministic in the seed."""
        return _mix(self._key ^ _mix((value << 3) | stream))

    def profile_of(self, index: int) -> Profile:
        if self.workers <= self.pool_size:
            return self.pool[index]
        return self.pool[self.draw(_POOL, index) % self.pool_size]

    def registration(self, index: int) -> WorkerRegistration:
        return replace(
            self.profile_of(index).template, uan=self.uan(index), member_ref=self.member_ref(index)
        )

    def registration_bytes(self, index: int) -> bytes:
        """Worker ``index``'s registration as ``AvroCodec.encode`` writes it."""
        return b"".join(
            (
                self._prefix,
                self.uan(index).encode(),
                self._mid,
                self.member_ref(index).encode(),
                self.profile_of(index).rest,
            )
        )

    def verify(self, index: int) -> None:
        """The spliced encoding of worker ``index`` is the codec's, byte for byte."""
        expected = self.codec.encode(
            WORKER_REGISTRATION, worker_registration_to_avro(self.registration(index))
        )
        if self.registration_bytes(index) != expected:
            raise RuntimeError(
                f"preload: worker {index}'s registration bytes differ from the codec"
            )

    def _profile(self, rng: random.Random, window_start: int) -> Profile:
        smap = self.smap
        home_state = smap.home_state(rng)
        home = smap.any_district(rng, home_state)
        home_shop = smap.random_shop(rng, home)
        permanent = smap.shops[home_shop].location
        present: Location | None = None
        stay_shop, stay = home_shop, home
        if rng.random() < SETTLED_SHARE:
            elsewhere = _destination(smap, rng, home)
            if elsewhere is not None:
                stay_shop, stay = smap.random_shop(rng, elsewhere), elsewhere
                present = smap.shops[stay_shop].location
        elif rng.random() < PRESENT_EQUALS_PERMANENT_SHARE:
            present = permanent
        occupation = rng.choice(OCCUPATIONS) if rng.random() < 0.9 else None
        days_before = 30 + int(rng.random() * 870)
        updated_at = datetime.fromtimestamp(
            window_start - days_before * DAY_S + int(rng.random() * DAY_S), UTC
        )
        template = WorkerRegistration(
            uan=self.uan(0),
            member_ref=self.member_ref(0),
            permanent_address=permanent,
            present_address=present,
            occupation_nco=occupation,
            consent_state_sharing=rng.random() < CONSENT_SHARE,
            sms_reachable=rng.random() < SMS_REACHABLE_SHARE,
            updated_at=updated_at,
        )
        prefix, mid, rest = self._split(template)
        if not self._prefix:
            self._prefix, self._mid = prefix, mid
        elif (prefix, mid) != (self._prefix, self._mid):
            raise RuntimeError("preload: the registration's Avro framing is not constant")
        baseline = template.baseline
        baselines = orjson.dumps(baselines_to_json(((None, baseline),)))  # no re-baseline
        current = _SMALLINT_FIELD.pack(2, baseline.state_lgd) + _INTEGER_FIELD.pack(
            4, baseline.district_lgd
        )
        profile = profile_json(permanent, present, template.sms_reachable)
        length = len(prefix) + len(template.uan) + len(mid) + len(template.member_ref) + len(rest)
        return Profile(
            template=template,
            home_shop=home_shop,
            stay_shop=stay_shop,
            home_district=home,
            stay_district=stay,
            rest=rest,
            registration_length=_INT32.pack(length),
            tail=b"".join(
                (
                    rest,
                    _INT32.pack(len(profile)),
                    profile,
                    _INT32.pack(len(baselines) + 1),
                    _JSONB_VERSION,
                    baselines,
                    current,
                )
            ),
            worker_head=current + _NULL_FIELD,
        )

    def _split(self, template: WorkerRegistration) -> tuple[bytes, bytes, bytes]:
        """The Avro bytes of ``template`` around its uan and member_ref (fixed-length strings:
        their length prefixes are constant, so another worker's are spliced in between)."""
        encoded = self.codec.encode(WORKER_REGISTRATION, worker_registration_to_avro(template))
        uan, ref = template.uan.encode(), template.member_ref.encode()
        if len(uan) != 2 + UAN_DIGITS or len(ref) != MEMBER_REF_LENGTH:
            raise ValueError("preload: uan and member_ref must have a fixed length")
        at_uan = encoded.find(uan)
        at_ref = encoded.find(ref, at_uan + len(uan))
        if at_uan < 0 or at_ref < 0:
            raise RuntimeError("preload: uan or member_ref not found in the Avro bytes")
        return (
            encoded[:at_uan],
            encoded[at_uan + len(uan) : at_ref],
            encoded[at_ref + len(ref) :],
        )

    # --- the rows -----------------------------------------------------------------------------

    def member_rows(self, rows: int = CHUNK_ROWS) -> Iterator[bytes]:
        """Binary COPY rows of ``members`` (MEMBERS_COPY), ``rows`` at a time."""
        for first in range(0, self.workers, rows):
            chunk: list[bytes] = []
            for index in range(first, min(first + rows, self.workers)):
                chunk += (
                    _MEMBER_HEAD,
                    f"MR{self.member_tag}{index:010x}".encode(),
                    _UAN_HEAD,
                    f"{UAN_PREFIX}{index:0{UAN_DIGITS}d}".encode(),
                    self.profile_of(index).worker_head,
                )
            yield b"".join(chunk)

    def worker_rows(self, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, bytes]]:
        """(workers so far, binary COPY rows of ``workers`` (WORKERS_COPY)), ``rows`` at a time."""
        prefix, mid, pool, size = self._prefix, self._mid, self.pool, self.pool_size
        shared = self.workers <= size
        for first in range(0, self.workers, rows):
            chunk: list[bytes] = []
            last = min(first + rows, self.workers)
            for index in range(first, last):
                profile = pool[index] if shared else pool[self.draw(_POOL, index) % size]
                uan = f"{UAN_PREFIX}{index:0{UAN_DIGITS}d}".encode()
                ref = f"MR{self.member_tag}{index:010x}".encode()
                chunk += (
                    _WORKER_HEAD,
                    uan,
                    _MEMBER_REF_HEAD,
                    ref,
                    profile.registration_length,
                    prefix,
                    uan,
                    mid,
                    ref,
                    profile.tail,
                )
            yield last, b"".join(chunk)

    # --- movements ----------------------------------------------------------------------------

    def mover(self, index: int, months: int, move_share: float) -> Mover | None:
        """Whether worker ``index`` is away for two or more consecutive months of the window,
        and when and where (None: at home throughout)."""
        if months < MIN_MONTHS:
            return None
        draw = self.draw(_MOVER, index)
        if (draw & 0xFFFFFFFF) / 2**32 >= move_share:
            return None
        start = 1 + (draw >> 32) % (months - 2)  # at home in month 0, away two months at least
        end = months
        if ((draw >> 48) & 0xFFFF) / 2**16 < SEASONAL_SHARE and start + 2 < months:
            end = start + 2 + (draw >> 40) % 2
        rng = random.Random(self.draw(_DESTINATION, index))
        destination = _destination(self.smap, rng, self.profile_of(index).stay_district)
        if destination is None:
            return None
        return Mover(start, min(end, months), self.smap.random_shop(rng, destination))


def _destination(smap: SyntheticMap, rng: random.Random, origin: int) -> int | None:
    """Another district than ``origin``: in another state about half the time."""
    state = smap.districts[origin].state_lgd
    if rng.random() < 0.5:
        state = smap.destination_state(rng, state)
    found = smap.destination_district(rng, state, [origin])
    if found is None:
        found = smap.destination_district(rng, smap.destination_state(rng, state), [origin])
    return found


# --- the bulk load ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreloadStats:
    workers: int
    copy_s: float  # the COPYs and their commits
    vacuum_s: float  # VACUUM (ANALYZE) and CHECKPOINT
    rows_per_s: float  # workers per second of copy_s
    bench_rss_mb: float  # peak RSS of this process so far (VmHWM)


def preload_registry(dsn: str, registry: SyntheticRegistry) -> PreloadStats:
    """COPY ``registry``'s workers into the (migrated, empty) locator database ``dsn``.

    One binary COPY (one transaction) per table, on two connections at once, so that
    PostgreSQL loads ``members`` and ``workers`` on two backends; each COPY's rows are
    generated by a thread of its own, at most two chunks of CHUNK_ROWS ahead of the socket."""
    log(f"preloading {registry.workers:,} registered workers into the locator's database")
    for index in range(min(100, registry.workers)):
        registry.verify(index)
    started = time.monotonic()
    abort = threading.Event()

    def checked_worker_rows() -> Iterator[bytes]:
        done = 0
        next_log = started + 30
        for last, chunk in registry.worker_rows():
            for index in range(-(-done // _VERIFY_EVERY) * _VERIFY_EVERY, last, _VERIFY_EVERY):
                registry.verify(index)
            done = last
            if time.monotonic() >= next_log:
                rate = done / (time.monotonic() - started)
                log(f"preload: {done:,} of {registry.workers:,} workers ({rate:,.0f}/s)")
                next_log += 30
            yield chunk

    with ThreadPoolExecutor(1, thread_name_prefix="preload-members") as pool:
        members = pool.submit(_copy_binary, dsn, MEMBERS_COPY, registry.member_rows(), abort)
        _copy_binary(dsn, WORKERS_COPY, checked_worker_rows(), abort)
        members.result()
    copy_s = time.monotonic() - started
    vacuumed = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) members, workers")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            log("preload: no privilege to CHECKPOINT; the timed run may flush the load's pages")
    stats = PreloadStats(
        workers=registry.workers,
        copy_s=copy_s,
        vacuum_s=time.monotonic() - vacuumed,
        rows_per_s=registry.workers / copy_s if copy_s > 0 else 0.0,
        bench_rss_mb=(vm_hwm_kb() or 0) / 1024,
    )
    log(
        f"preloaded {stats.workers:,} workers in {stats.copy_s:.1f} s"
        f" ({stats.rows_per_s:,.0f}/s), VACUUM + CHECKPOINT {stats.vacuum_s:.1f} s,"
        f" bench peak RSS {stats.bench_rss_mb:.0f} MB"
    )
    return stats


def _copy_binary(dsn: str, statement: str, chunks: Iterator[bytes], abort: threading.Event) -> None:
    """``statement`` (a binary COPY FROM STDIN) fed with ``chunks``, committed at the end.

    A thread generates the chunks (at most two ahead) while this one sends them, so that the
    generation and PostgreSQL overlap. Any failure sets ``abort`` (and aborts the COPY); a set
    ``abort`` stops the generation, and then the COPY fails."""
    ahead: queue.Queue[bytes | None] = queue.Queue(maxsize=2)
    finished = threading.Event()

    def generate() -> None:
        try:
            for chunk in chunks:
                if abort.is_set() or finished.is_set():
                    return
                ahead.put(chunk)
        finally:
            ahead.put(None)

    with ThreadPoolExecutor(1, thread_name_prefix="preload-rows") as pool:
        generated = pool.submit(generate)
        try:
            with (
                psycopg.connect(dsn) as conn,
                conn.cursor() as cursor,
                cursor.copy(statement) as copy,
            ):
                copy.write(COPY_SIGNATURE)
                while (chunk := ahead.get()) is not None:
                    copy.write(chunk)
                generated.result()  # a failed generation aborts the COPY
                if abort.is_set():
                    raise RuntimeError("preload: the other table's COPY failed")
                copy.write(COPY_TRAILER)
        except BaseException:
            abort.set()
            raise
        finally:
            finished.set()
            while not generated.done():  # unblock the generator's put
                with contextlib.suppress(queue.Empty):
                    ahead.get(timeout=0.1)


# --- the collections ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CollectionPlan:
    events: int
    months: int
    collectors: int  # distinct workers that collect (one collection a month each)


def plan_collections(events: int, workers: int, months: int | None = None) -> CollectionPlan:
    """``months`` consecutive months (at least 3, and enough that ``events / months`` workers
    exist) and ``ceil(events / months)`` collecting workers."""
    wanted = max(MIN_MONTHS, months or MIN_MONTHS, math.ceil(events / workers))
    if wanted > MAX_MONTHS:
        raise ValueError(
            f"{events:,} events for {workers:,} workers need more than {MAX_MONTHS} months"
        )
    return CollectionPlan(events, wanted, math.ceil(events / wanted))


def collection_messages(
    registry: SyntheticRegistry, plan: CollectionPlan, move_share: float
) -> Iterator[SimMessage]:
    """``plan.events`` collections, month by month; within a month, the collecting workers in
    an order of that month's own. Holds nothing per worker."""
    workers, collectors, months = registry.workers, plan.collectors, plan.months
    spread = registry.draw(_ORDER, 1 << 40)
    pick_a, pick_b = _coprime_multiplier(workers, spread), (spread >> 20) % workers
    first = month_index(registry.start_month)
    labels = [month_from_index(first + month) for month in range(months)]
    salt = random.Random(f"bench/preload/ids/{registry.seed}").getrandbits(40)
    emitted = 0
    for month in range(months):
        draw = registry.draw(_ORDER, month)
        order_a, order_b = _coprime_multiplier(collectors, draw), (draw >> 20) % collectors
        builder = _MonthBuilder(registry, labels[month], month, months, move_share)
        for k in range(collectors):
            if emitted >= plan.events:
                return
            j = (order_a * k + order_b) % collectors
            index = (pick_a * j + pick_b) % workers
            scrambled = ((emitted * _ID_MULTIPLIER) & _ID_MASK) ^ salt
            collection = builder.collection(index, scrambled)
            emitted += 1
            yield SimMessage(COLLECTIONS, collection.member_ref, collection)


class _MonthBuilder:
    """The collections of one allocation month."""

    def __init__(
        self,
        registry: SyntheticRegistry,
        label: str,
        month: int,
        months: int,
        move_share: float,
    ) -> None:
        self.registry = registry
        self.label = label
        self.compact = label.replace("-", "")
        self.month = month
        self.months = months
        self.move_share = move_share
        self.start_s, self.days = month_start(label)
        self._items: dict[tuple[bool, str, int], tuple[CollectionItem, ...]] = {}

    def collection(self, index: int, scrambled: int) -> RationCollection:
        registry = self.registry
        smap = registry.smap
        profile = registry.profile_of(index)
        draw = registry.draw(_MONTH, index * MAX_MONTHS + self.month)
        mover = registry.mover(index, self.months, self.move_share)
        away = mover is not None and mover.start <= self.month < mover.end
        shop = smap.shops[mover.shop if mover is not None and away else profile.stay_shop]
        home = smap.districts[profile.home_district]
        auth = AuthMode.FINGERPRINT
        rest = (draw & 0xFFFF) / 2**16
        if not away and rest >= BIOMETRIC_AT_HOME:
            auth = AuthMode.MANUAL if (draw >> 62) == 0 else AuthMode.OTP
        elif rest < 0.05:
            auth = AuthMode.IRIS
        elif rest < 0.08:
            auth = AuthMode.FACE
        if shop.district == home:
            portability, source = Portability.NONE, shop.state_source
        elif shop.district.state_lgd == home.state_lgd:
            portability, source = Portability.INTRA_STATE, shop.state_source
        else:
            portability, source = Portability.INTER_STATE, IM_PDS
        day = (((draw >> 16) & 0xFFFF) * self.days) >> 16
        seconds = (((draw >> 32) & 0xFFFFFF) * _SHOP_HOURS_S) >> 24
        persons = 1 + ((draw >> 56) & 1)
        scheme = "PMGKAY" if ((draw >> 57) & 3) else "NFSA"
        return RationCollection(
            transaction_id=f"{source}-{self.compact}-{scrambled:010x}",
            source=source,
            ration_card_id=f"{STATE_ABBREVIATIONS[home.state_lgd]}/RC/{index:09d}",
            member_ref=registry.member_ref(index),
            auth_mode=auth,
            fps_id=shop.fps_id,
            fps_location=shop.location,
            card_state_lgd=home.state_lgd,
            portability=portability,
            allocation_month=self.label,
            transacted_at=datetime.fromtimestamp(
                self.start_s + _SHOP_OPENS_S + day * DAY_S + seconds, UTC
            ),
            items=self._items_for(shop.location.state_lgd in RICE_STATES, scheme, persons),
        )

    def _items_for(self, rice: bool, scheme: str, persons: int) -> tuple[CollectionItem, ...]:
        key = (rice, scheme, persons)
        items = self._items.get(key)
        if items is None:
            if rice:
                items = (CollectionItem("rice", scheme, 5000 * persons),)
            else:
                items = (
                    CollectionItem("wheat", scheme, 3000 * persons),
                    CollectionItem("rice", scheme, 2000 * persons),
                )
            self._items[key] = items
        return items


def produce_preloaded_input(
    namespace: Namespace,
    codec: AvroCodec,
    registry: SyntheticRegistry,
    events: int,
    months: int | None,
    move_share: float,
) -> tuple[Input, CollectionPlan]:
    """Produce the collections of ``plan_collections(events, ...)`` to the run's topics."""
    started = time.monotonic()
    plan = plan_collections(events, registry.workers, months)
    log(
        f"producing {plan.events:,} collections by {plan.collectors:,} of the"
        f" {registry.workers:,} workers over {plan.months} months ({move_share:.0%} movers)"
    )
    counts = produce_collections(
        clients.producer(namespace.bootstrap_servers),
        codec,
        namespace.names,
        registry,
        plan,
        move_share,
    )
    produced = Input(
        events=counts.total,
        collections=counts.by_topic.get(namespace.names.collections, 0),
        registry=0,
        workers=registry.workers,
        months=plan.months,
        produce_s=time.monotonic() - started,
    )
    return produced, plan


def produce_collections(
    producer: Producer,
    codec: AvroCodec,
    names: TopicNames,
    registry: SyntheticRegistry,
    plan: CollectionPlan,
    move_share: float,
) -> PublishCounts:
    """Encode and produce ``plan``'s collections (the simulator's publisher); waits for all."""
    return publish_simulation(
        producer, codec, names, collection_messages(registry, plan, move_share)
    )
