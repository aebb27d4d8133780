"""The locator process: batched confluent-kafka consumer of collections and the registry.

One loop: consume a batch (thousands of messages), decode and validate, apply the rules inside
one PostgreSQL transaction that also stores the outgoing events (outbox), the dead letters and
the consumer offsets; then the relay publishes the outbox. PostgreSQL holds the offsets, so a
crash anywhere resumes exactly after the last committed batch: nothing lost, no effect twice.

Two threads: the main thread consumes and decodes batch N+1 while one committer thread runs
batch N's transaction and relay (psycopg and librdkafka release the GIL while they wait, so the
decoding fills the time spent waiting for PostgreSQL). Transactions still run one at a time, in
the order of consumption, and at most one batch waits decoded: a rebalance, a purge or the end
of the input first lets the batch in flight commit.

SIGTERM or SIGINT: the batch in flight finishes and commits, then the process exits 0.
"""

from __future__ import annotations

import ctypes
import gc
import platform
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import TypeVar

import psycopg
import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from eshram_locator.avro_codec import AvroCodec, single_object_header
from eshram_locator.domain.history import compiled_merge_available
from eshram_locator.domain.model import RationCollection
from eshram_locator.errors import PermanentRecordError, RetriableError
from eshram_locator.intake import (
    RawMessage,
    dead_letter,
    fast_batch_reader,
    fast_collection_reader,
    fast_registration_reader,
    read_collection,
    read_registration,
)
from eshram_locator.kafka.relay import OutboxRelay
from eshram_locator.locating import Locator, RegistryUpdate, by_member
from eshram_locator.postgres.store import LocatorStore, OutboxRow
from eshram_locator.records import WORKER_REGISTRATION
from eshram_locator.topics import TopicNames

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

_BOOTSTRAP_IDLE_AFTER_S = 2.0

# glibc's malloc: allocations from this size up get a mapping of their own, unmapped when freed.
# By default the threshold rises to the largest block freed so far (up to 32 MB), so a batch's
# large buffers (its histories joined, the PostgreSQL results: megabytes, growing with the
# histories) later come from the heap, where what is freed between smaller live blocks stays
# resident: two processes held 25 to 30 MB more each by the end of a 10-month run (bench).
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_MMAP_THRESHOLD_BYTES = 256 * 1024


def tune_collector() -> tuple[int, int, int]:
    """The cyclic collector as a batch needs it; returns the thresholds it had.

    A batch allocates hundreds of thousands of short-lived containers that reference counting
    frees; with the default thresholds the collector ran every 700 of them and traversed the
    whole heap every ~70,000 (about 15 % of the CPU per event, measured). The objects that
    exist now (start-up) are frozen out of its sight, and it runs less often."""
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 20, 20)
    return thresholds


def release_large_blocks() -> bool:
    """Have glibc unmap large blocks when freed (``_MMAP_THRESHOLD_BYTES``, a fixed threshold).
    False where the C library is not glibc or refuses: memory is then the C library's as it
    is."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


# PostgreSQL rolled the transaction back so that another could go on: redone at once.
_CONFLICTS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_RETRIABLE_DB = (psycopg.OperationalError, *_CONFLICTS)


@dataclass(frozen=True, slots=True)
class LocatorConfig:
    group_id: str
    topics: TopicNames
    batch_size: int
    batch_timeout_s: float
    grace: timedelta
    purge_every_s: float = 60.0
    # Stop once caught up with the input and then idle for this many polls (demo, bench, tests).
    idle_exit_polls: int | None = None


@dataclass(slots=True)
class Totals:
    consumed: int = 0
    collections: int = 0
    registry: int = 0
    dead_lettered: int = 0
    changes: int = 0
    address_requests: int = 0
    batches: int = 0
    by_error: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Batch:
    """A consumed batch, decoded: what its transaction applies."""

    messages: int
    registry: list[RegistryUpdate]
    collections: dict[str, list[RationCollection]]  # by member (locating.by_member)
    collection_count: int
    rejected: list[OutboxRow]
    next_offsets: dict[tuple[str, int], int]
    by_error: dict[str, int]


@dataclass(slots=True)
class _Read:
    """What ``LocatorProcess._read_each`` read of a batch's messages."""

    registry: list[RegistryUpdate]
    collections: list[RationCollection]
    positions: list[int]  # each collection's message: its index in the batch
    rejected: list[OutboxRow]
    by_error: dict[str, int]


class LocatorProcess:
    def __init__(
        self,
        consumer: Consumer,
        conninfo: str,
        codec: AvroCodec,
        locator: Locator,
        relay: OutboxRelay,
        config: LocatorConfig,
        on_batch: Callable[[Totals], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._conninfo = conninfo
        self._codec = codec
        # Most records take the compiled readers; what they leave (None) takes read_collection
        # or read_registration.
        self._read_fast = fast_collection_reader(codec)
        self._read_registration_fast = fast_registration_reader(codec)
        # The batch's collections that _read_fast takes, read by one compiled call.
        self._read_batch = fast_batch_reader(codec)
        if self._read_fast is None or self._read_registration_fast is None:
            log.warning("compiled_reader_unavailable")
        if not compiled_merge_available():  # every collection is added in Python (slower)
            log.warning("compiled_history_merge_unavailable")
        # Registrations that come in the current schema's single-object encoding are stored as
        # they came.
        self._current_registration = single_object_header(
            codec.catalog.current(WORKER_REGISTRATION).fingerprint
        )
        self._locator = locator
        self._relay = relay
        self._config = config
        self._on_batch = on_batch
        self._stop = threading.Event()
        self._store: LocatorStore | None = None
        self._positions: dict[tuple[str, int], int] = {}  # next offset per assigned partition
        # Registry bootstrap: after an assignment, collections wait (paused) until the registry
        # partitions reach their high watermarks at assignment: the assigned ones as this
        # process consumes them, the others (``_group_targets``) as the offsets the group's
        # other processes commit to PostgreSQL show.
        self._registry_targets: dict[tuple[str, int], int] = {}
        self._group_targets: dict[tuple[str, int], int] = {}
        self._group_read = -1  # the group's registry offsets summed, at the last look
        self._paused: list[TopicPartition] = []
        self._paused_at = 0.0  # since then, the bootstrap has not advanced
        # One thread runs the transactions (and the relay), one at a time, in consumption order.
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="locator-commit")
        self._in_flight: Future[dict[tuple[str, int], int]] | None = None
        self.totals = Totals()  # written by the committer thread only

    # --- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        log.info("stop_requested", signal=signum)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> Totals:
        thresholds = tune_collector()
        if not release_large_blocks():
            log.info("malloc_threshold_unchanged", libc=platform.libc_ver()[0] or "unknown")
        self._consumer.subscribe(
            list(self._config.topics.inputs), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        idle = 0
        last_purge = 0.0
        try:
            self._publish_pending()
            while not self._stop.is_set():
                messages = self._consumer.consume(
                    self._config.batch_size, self._config.batch_timeout_s
                )
                if messages:
                    idle = 0
                    batch = self._read(messages)
                    del messages  # not held while the next batch is consumed
                    self._positions.update(batch.next_offsets)  # consumed; committed in order
                    self._settle()
                    self._in_flight = self._committer.submit(self._commit, batch)
                    if self._paused and not self._group_targets and self._registry_read():
                        self._resume_collections("registry read")
                else:
                    self._settle()  # nothing to decode meanwhile: let the batch in flight commit
                    if self._paused:
                        self._advance_bootstrap()
                    else:
                        idle += 1
                        if (
                            self._config.idle_exit_polls
                            and idle >= self._config.idle_exit_polls
                            and self._caught_up()
                        ):
                            break
                if time.monotonic() - last_purge > self._config.purge_every_s:
                    self._purge()
                    last_purge = time.monotonic()
        finally:
            try:
                self._settle()  # what was consumed and decoded before the stop commits
            finally:
                self._committer.shutdown()
                gc.set_threshold(*thresholds)
                self._consumer.close()
                self._relay.close()
                if self._store is not None:
                    self._store.close()
        log.info("locator_stopped", consumed=self.totals.consumed, changes=self.totals.changes)
        return self.totals

    def _settle(self) -> None:
        """Wait for the batch in flight to commit (raising what its transaction raised)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        next_offsets = in_flight.result()
        if next_offsets:
            try:  # for lag monitoring only: PostgreSQL holds the offsets that count
                self._consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()],
                    asynchronous=True,
                )
            except KafkaException as problem:
                log.warning("kafka_commit_skipped", error=str(problem))

    # --- rebalancing: PostgreSQL holds the positions -----------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle()  # the store is free, and the batch consumed before commits first
        offsets = self._with_store(
            lambda store: store.load_offsets(
                self._config.group_id, list(self._config.topics.inputs)
            )
        )
        # PostgreSQL is the source of truth; Kafka's committed offsets are for lag only.
        positioned = [
            TopicPartition(
                p.topic, p.partition, offsets.get((p.topic, p.partition), OFFSET_BEGINNING)
            )
            for p in partitions
        ]
        consumer.assign(positioned)
        for p in positioned:
            self._positions[(p.topic, p.partition)] = max(p.offset, 0)
        log.info(
            "partitions_assigned",
            partitions=[f"{p.topic}[{p.partition}]@{p.offset}" for p in positioned],
        )
        self._bootstrap_registry(consumer, positioned, offsets)

    def _bootstrap_registry(
        self,
        consumer: Consumer,
        assigned: list[TopicPartition],
        stored: dict[tuple[str, int], int],
    ) -> None:
        """Read the registry before the collections, as a stream-table join loads its table.

        Collections of workers whose registration is still unread go into unregistered
        members' histories, and each registration read later derives the worker's whole history
        again: correct (the rules do not depend on the order), but several times the work.
        The registry is keyed by uan and the collections by member, so the registration of a
        member whose collections this process reads is as likely in another process's
        partition as in its own: the whole registry counts, not only the assigned part. While
        one process still registers the members whose collections the other reads, both lock
        the same rows: they wait for each other and deadlock (measured: up to five deadlocks
        and half the throughput in a bench run).

        librdkafka fetches every assigned partition at once, so after an assignment the
        collections partitions are paused until every registry partition reaches its high
        watermark of now: the assigned ones as this process reads them, the others as the
        offsets their processes commit to PostgreSQL show. A bootstrap that stops advancing for
        ``_BOOTSTRAP_IDLE_AFTER_S`` (nothing more to read, or another process stalled) ends.
        """
        registry = self._config.topics.registry
        collections = [p for p in assigned if p.topic == self._config.topics.collections]
        if not collections:
            return
        assigned_keys = {(p.topic, p.partition) for p in assigned}
        targets: dict[tuple[str, int], int] = {}
        group_targets: dict[tuple[str, int], int] = {}
        try:
            for partition in _partitions(consumer, registry):
                key = (registry, partition)
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(registry, partition), timeout=10, cached=False
                )
                if key in assigned_keys:
                    if self._positions[key] < high:
                        targets[key] = high
                elif stored.get(key, 0) < high:
                    group_targets[key] = high
        except KafkaException as problem:  # no bootstrap: correct, only slower
            log.warning("registry_watermarks_unavailable", error=str(problem))
            return
        if not targets and not group_targets:
            return
        consumer.pause(collections)
        self._registry_targets, self._group_targets = targets, group_targets
        self._paused, self._group_read = collections, -1
        self._paused_at = time.monotonic()
        log.info(
            "registry_bootstrap_started",
            partitions=len(targets),
            group_partitions=len(group_targets),
        )

    def _registry_read(self) -> bool:
        """The assigned registry partitions are read up to their targets."""
        positions = self._positions
        return all(positions.get(key, 0) >= high for key, high in self._registry_targets.items())

    def _advance_bootstrap(self) -> None:
        """After a poll that found nothing, with no batch in flight: end the bootstrap once the
        whole registry is read, or once it has not advanced for a while."""
        now = time.monotonic()
        if self._registry_read() and self._group_registry_read(now):
            self._resume_collections("registry read")
        elif now - self._paused_at > _BOOTSTRAP_IDLE_AFTER_S:
            self._resume_collections("registry idle")

    def _group_registry_read(self, now: float) -> bool:
        """The other processes' registry partitions are read up to their targets, as the
        offsets they committed to PostgreSQL show; while they advance, the bootstrap waits."""
        if not self._group_targets:
            return True
        registry = self._config.topics.registry
        stored = self._with_store(
            lambda store: store.load_offsets(self._config.group_id, [registry])
        )
        read = {key: min(stored.get(key, 0), high) for key, high in self._group_targets.items()}
        if sum(read.values()) > self._group_read:
            self._group_read, self._paused_at = sum(read.values()), now
        return read == self._group_targets

    def _resume_collections(self, reason: str) -> None:
        self._consumer.resume(self._paused)
        self._registry_targets, self._group_targets, self._paused = {}, {}, []
        log.info("registry_bootstrap_done", reason=reason)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The batch in flight commits its offsets before another process can take them over.
        self._settle()
        if self._paused:  # librdkafka keeps a partition paused when it is assigned again
            consumer.resume(self._paused)
        consumer.unassign()
        self._positions.clear()
        self._registry_targets, self._group_targets, self._paused = {}, {}, []
        log.info("partitions_revoked", count=len(partitions))

    # --- one batch ---------------------------------------------------------------------------

    def _read(self, messages: list[Message]) -> _Batch:
        """Decode and validate a batch (main thread); invalid records become dead letters.

        The compiled reader takes the common case (collections it reads); the messages it
        leaves go through ``_read_each`` as every message does without it."""
        read_batch = self._read_batch
        compiled = (
            None if read_batch is None else read_batch(messages, self._config.topics.collections)
        )
        grouped: dict[str, list[RationCollection]] | None
        if compiled is None:
            next_offsets: dict[tuple[str, int], int] = {}
            each = self._read_each(messages, range(len(messages)), next_offsets)
            collections, grouped = each.collections, None
        else:
            collections, grouped, next_offsets, left = compiled
            # It recorded the next offsets of the messages it left too.
            each = self._read_each(messages, left, {})
            if each.collections:  # the general path read some: all in arrival order
                collections = _in_arrival_order(collections, left, each, len(messages))
                grouped = None
        # Grouping is pure work: done here, it overlaps the transaction in flight.
        return _Batch(
            len(messages),
            each.registry,
            by_member(collections) if grouped is None else grouped,
            len(collections),
            each.rejected,
            next_offsets,
            each.by_error,
        )

    def _read_each(
        self,
        messages: list[Message],
        indices: Sequence[int],
        next_offsets: dict[tuple[str, int], int],
    ) -> _Read:
        """The messages at ``indices``, one at a time."""
        registry: list[RegistryUpdate] = []
        collections: list[RationCollection] = []
        positions: list[int] = []
        rejected: list[OutboxRow] = []
        by_error: dict[str, int] = {}
        collections_topic, codec = self._config.topics.collections, self._codec
        read_fast, current_registration = self._read_fast, self._current_registration
        read_registration_fast = self._read_registration_fast
        for index in indices:
            message = messages[index]
            error = message.error()
            if error is not None:
                if _transient(error):  # librdkafka reconnects and rejoins by itself
                    log.warning("consume_error", error=error.str(), code=error.code())
                    continue
                raise RetriableError(f"consumer error: {error.str()}")
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                raise RetriableError("consumed a message without topic, partition or offset")
            if topic == collections_topic:
                if read_fast is not None:
                    collection = read_fast(message.value(), message.key())
                    if collection is not None:
                        collections.append(collection)
                        positions.append(index)
                        next_offsets[(topic, partition)] = offset + 1
                        continue
            elif read_registration_fast is not None:
                value = message.value()
                registration = read_registration_fast(value, message.key())
                if registration is not None:  # its bytes are the current schema's: kept
                    registry.append(
                        RegistryUpdate(registration.uan, registration, _timestamp(message), value)
                    )
                    next_offsets[(topic, partition)] = offset + 1
                    continue
            headers = message.headers()
            raw = RawMessage(
                topic,
                partition,
                offset,
                message.key(),
                message.value(),
                tuple((k, v or b"") for k, v in headers) if headers else (),
            )
            try:
                if topic == collections_topic:
                    collections.append(read_collection(codec, raw))
                    positions.append(index)
                else:
                    key = (raw.key or b"").decode("utf-8", errors="replace")
                    registration = read_registration(codec, raw)
                    value = raw.value
                    registry.append(
                        RegistryUpdate(
                            key,
                            registration,
                            _timestamp(message),
                            value if value and value.startswith(current_registration) else None,
                        )
                    )
            except PermanentRecordError as problem:
                rejected.append(dead_letter(raw, problem))
                by_error[problem.error_class] = by_error.get(problem.error_class, 0) + 1
                log.warning(
                    "dead_lettered",
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    error_class=problem.error_class,
                )
            next_offsets[(topic, partition)] = offset + 1
        return _Read(registry, collections, positions, rejected, by_error)

    def _commit(self, batch: _Batch) -> dict[tuple[str, int], int]:
        """Apply a batch in one transaction, then publish its outbox (committer thread).
        Returns the offsets it committed."""

        def commit(store: LocatorStore) -> tuple[int, int]:
            with store.unit_of_work():
                outcome, outbox = self._locator.apply_batch(
                    store, batch.registry, batch.collections, datetime.now(UTC)
                )
                store.enqueue(batch.rejected + outbox)
                store.save_offsets(self._config.group_id, batch.next_offsets)
            return len(outcome.changes), outcome.address_requests

        changes, requests = self._with_store(commit)
        self._publish_pending()
        totals = self.totals
        totals.batches += 1
        totals.consumed += batch.messages
        totals.collections += batch.collection_count
        totals.registry += len(batch.registry)
        totals.dead_lettered += len(batch.rejected)
        totals.changes += changes
        totals.address_requests += requests
        for error_class, count in batch.by_error.items():
            totals.by_error[error_class] = totals.by_error.get(error_class, 0) + count
        log.info(
            "batch_committed",
            messages=batch.messages,
            changes=changes,
            dead_lettered=len(batch.rejected),
            address_requests=requests,
        )
        if self._on_batch is not None:
            self._on_batch(totals)
        return batch.next_offsets

    def _caught_up(self) -> bool:
        """Every assigned partition consumed up to its high watermark (none assigned: no)."""
        if not self._positions:
            return False
        for (topic, partition), position in self._positions.items():
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10, cached=False
                )
            except KafkaException as problem:  # the broker is away: not known to be caught up
                log.warning("watermarks_unavailable", error=str(problem))
                return False
            if position < high:
                return False
        return True

    # --- retries: the database or broker being away is not a reason to lose anything ----------

    def _with_store(self, work: Callable[[LocatorStore], _T]) -> _T:
        delay = 0.2
        while True:
            try:
                if self._store is None or self._store.closed:
                    self._store = LocatorStore.connect(self._conninfo)
                return work(self._store)
            except _RETRIABLE_DB as problem:
                # _CONFLICTS: waiting would only idle the process, and the redo waits for the
                # other transaction's locks anyway. The server or the connection away: backoff.
                conflict = isinstance(problem, _CONFLICTS)
                log.warning(
                    "database_retry", error=type(problem).__name__, delay_s=0 if conflict else delay
                )
                # A fresh session for the redo (the failed transaction rolled back; the session
                # may be broken).
                if self._store is not None:
                    self._store.close()
                    self._store = None
                if conflict:
                    continue
                if self._stop.wait(delay):
                    raise RetriableError("stopped while waiting for the database") from problem
                delay = min(delay * 2, 5.0)

    def _publish_pending(self) -> None:
        delay = 0.2
        while True:
            try:
                self._relay.drain()
                return
            except (RetriableError, *_RETRIABLE_DB) as problem:
                log.warning("relay_retry", error=str(problem), delay_s=delay)
                if self._stop.wait(delay):
                    return  # the rows stay in the outbox for the next start
                delay = min(delay * 2, 5.0)

    def _purge(self) -> None:
        self._settle()  # the store is the committer's while a batch is in flight
        cutoff = datetime.now(UTC) - self._config.grace

        def purge(store: LocatorStore) -> int:
            with store.unit_of_work():
                return store.purge_unregistered(cutoff)

        purged = self._with_store(purge)
        if purged:
            log.info("unregistered_purged", members=purged)


# Errors a broker restart or a network blip cause; librdkafka recovers from them. Anything else
# (authorisation, a fatal error) ends the process.
_TRANSIENT_CODES = frozenset(
    {
        KafkaError._PARTITION_EOF,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
    }
)


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    """The topic's partition numbers (KafkaException when the broker cannot tell)."""
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None:
        raise KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC, f"no metadata for {topic}"))
    if metadata.error is not None:
        raise KafkaException(metadata.error)
    return sorted(metadata.partitions)


def _transient(error: KafkaError) -> bool:
    return not error.fatal() and (error.retriable() or error.code() in _TRANSIENT_CODES)


def _in_arrival_order(
    compiled: list[RationCollection], left: list[int], each: _Read, messages: int
) -> list[RationCollection]:
    """The collections read in C (``compiled``, of the messages not in ``left``, in order) and
    in Python (``each``), in the order of their messages."""
    at = dict(zip(each.positions, each.collections, strict=True))
    left_set = set(left)
    taken = iter(compiled)
    ordered: list[RationCollection] = []
    for index in range(messages):
        collection = at.get(index)
        if collection is not None:
            ordered.append(collection)
        elif index not in left_set:
            ordered.append(next(taken))
    return ordered


def _timestamp(message: Message) -> datetime:
    """The record's timestamp (producer create time or broker append time)."""
    kind, millis = message.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE:
        return datetime.now(UTC)
    return datetime.fromtimestamp(millis / 1000, UTC)
