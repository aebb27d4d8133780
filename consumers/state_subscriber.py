"""Reference subscriber for a state's labour department: its state topic into its own table.

What any state can build without this codebase's schemas: it reads only Kafka and its own
PostgreSQL.

- Schemas: at start, the compacted ``locator.schemas`` topic is read to its end and every
  schema is registered (``SchemaCatalog.register``, fingerprint checked against the key). A
  record's single-object header names its writer schema by fingerprint; an unknown fingerprint
  re-reads the schema topic once (a newer version may have been published since).
- Table ``state_subscriber_workers``: one row per worker, their current location as far as this
  state knows it. It is derived from ``state_subscriber_changes``, the state's copy of each
  change with its status: a MOVED/RETURNED_HOME record makes its change active, a RETRACTED
  record makes the change it supersedes retracted. The current location is that of the latest
  active change (effective month, then detection time); with none left, the location the
  earliest change left (RETRACTED restores the previous location).
- Dedupe on ``event_id`` (``state_subscriber_events``): a record whose ``event_id`` was applied
  before and whose effect is in place is skipped. Every step is an assignment, so applying the
  topic again, from its start, leaves the same table (replay-safe).
- Offsets are stored in the same transaction as the rows (``state_subscriber_offsets``): a
  crash resumes after the last committed batch. ``from_beginning`` ignores them (replay).
- Records that cannot be read go to ``state_subscriber_rejects`` (coordinates and reason, never
  the payload), and the subscriber goes on.

Only single-object encoded records are read (the contract's default framing).
"""

from __future__ import annotations

import io
import re
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Final, cast

import psycopg
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from fastavro import schemaless_reader
from psycopg.types.json import Jsonb

from eshram_locator.avro_codec import (
    SINGLE_OBJECT_HEADER_SIZE,
    SINGLE_OBJECT_MAGIC,
    SchemaCatalog,
    fingerprint_from_hex,
)
from eshram_locator.errors import DecodeError, RetriableError, UnknownSchemaError, ValidationError
from eshram_locator.postgres.migrate import grant_app_role
from eshram_locator.records import LOCATION_CHANGED

log = structlog.get_logger(__name__)

_UAN = re.compile(r"^[0-9]{12}$")
_CHANGE_TYPES: Final = frozenset({"MOVED", "RETURNED_HOME", "RETRACTED"})
_SCHEMA_READ_TIMEOUT_S: Final = 30.0

DDL: Final = """
CREATE TABLE IF NOT EXISTS state_subscriber_events (
    state_lgd int NOT NULL,
    event_id text NOT NULL,
    PRIMARY KEY (state_lgd, event_id)
);
CREATE TABLE IF NOT EXISTS state_subscriber_changes (
    state_lgd int NOT NULL,
    change_event_id text NOT NULL,
    uan text NOT NULL,
    effective_month text NOT NULL,
    detected_at_ms bigint NOT NULL,
    active boolean NOT NULL,
    current_location jsonb NOT NULL,
    previous_location jsonb,
    PRIMARY KEY (state_lgd, change_event_id)
);
CREATE INDEX IF NOT EXISTS state_subscriber_changes_uan
    ON state_subscriber_changes (state_lgd, uan);
CREATE TABLE IF NOT EXISTS state_subscriber_workers (
    state_lgd int NOT NULL,
    uan text NOT NULL,
    location_state_lgd int NOT NULL,
    location_district_lgd int NOT NULL,
    subdistrict_lgd int,
    village_town_lgd int,
    pincode text,
    effective_month text,
    source_event_id text,
    PRIMARY KEY (state_lgd, uan)
);
CREATE TABLE IF NOT EXISTS state_subscriber_offsets (
    state_lgd int NOT NULL,
    topic text NOT NULL,
    partition int NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (state_lgd, topic, partition)
);
CREATE TABLE IF NOT EXISTS state_subscriber_rejects (
    state_lgd int NOT NULL,
    topic text NOT NULL,
    partition int NOT NULL,
    "offset" bigint NOT NULL,
    error_class text NOT NULL,
    reason text NOT NULL,
    PRIMARY KEY (state_lgd, topic, partition, "offset")
);
"""


@dataclass(frozen=True, slots=True)
class SubscriberConfig:
    state_lgd: int
    topic: str  # the state's topic, eshram.location-changes.state.<SS>
    schemas_topic: str  # locator.schemas
    group_id: str
    batch_size: int = 1000
    batch_timeout_s: float = 0.5
    idle_exit_polls: int | None = None  # stop after this many empty polls in a row
    from_beginning: bool = False


@dataclass(slots=True)
class SubscriberTotals:
    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    by_error: dict[str, int] = field(default_factory=dict)


# --- schemas from the schema topic -------------------------------------------------------------


class SchemaTopicDecoder:
    """Decodes single-object encoded records with the schemas of the ``locator.schemas`` topic."""

    def __init__(self, load: Callable[[SchemaCatalog], int]) -> None:
        self._load = load
        self.catalog = SchemaCatalog()
        self.loaded = self._load(self.catalog)

    def decode(self, payload: bytes) -> tuple[str, dict[str, Any]]:
        """(record short name, datum read with its writer schema); ``DecodeError`` otherwise."""
        if len(payload) < SINGLE_OBJECT_HEADER_SIZE or payload[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError("not a single-object encoded Avro record")
        fingerprint = int.from_bytes(payload[2:SINGLE_OBJECT_HEADER_SIZE], "little", signed=True)
        entry = self.catalog.get(fingerprint)
        if entry is None:  # maybe published after we started
            self.loaded = self._load(self.catalog)
            entry = self.catalog.get(fingerprint)
        if entry is None:
            raise UnknownSchemaError("writer schema not found on the schema topic")
        body = io.BytesIO(payload)
        body.seek(SINGLE_OBJECT_HEADER_SIZE)
        try:
            datum = schemaless_reader(body, entry.parsed, None)
        except (EOFError, ValueError, IndexError, OverflowError, StopIteration) as error:
            raise DecodeError(f"malformed body ({type(error).__name__})") from error
        if body.tell() != len(payload):
            raise DecodeError("trailing bytes after the record")
        if not isinstance(datum, dict):
            raise DecodeError("not a record")
        return entry.record_name, datum


def schema_topic_loader(
    bootstrap: str,
    topic: str,
    security: Mapping[str, Any] | None = None,
    group_id: str = "schema-reader",
) -> Callable[[SchemaCatalog], int]:
    """A loader that reads ``topic`` from its start to its end into a catalog.

    ``security``: librdkafka settings that authenticate the reader (none: plaintext).
    ``group_id``: never joined nor committed to, but the client still looks up its coordinator,
    so with ACLs it must be a group the principal may use."""

    def load(catalog: SchemaCatalog) -> int:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,  # never commits: assign() without a group protocol
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                **(security or {}),
            }
        )
        registered = 0
        try:
            metadata = consumer.list_topics(topic, timeout=_SCHEMA_READ_TIMEOUT_S)
            described = metadata.topics.get(topic)
            if described is None or described.error is not None:
                raise RetriableError(f"schema topic {topic} not found")
            partitions = list(described.partitions)
            ends: dict[int, int] = {}
            for partition in partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=_SCHEMA_READ_TIMEOUT_S
                )
                if high > low:
                    ends[partition] = high
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
            while ends:
                message = consumer.poll(_SCHEMA_READ_TIMEOUT_S)
                if message is None:
                    raise RetriableError(f"schema topic {topic}: no message within the timeout")
                error = message.error()
                at = message.partition()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF and at is not None:
                        ends.pop(at, None)
                        continue
                    raise RetriableError(f"schema topic {topic}: {error.str()}")
                registered += _register(catalog, message)
                offset = message.offset()
                if (
                    partition is not None
                    and offset is not None
                    and offset + 1 >= ends.get(partition, 0)
                ):
                    ends.pop(partition, None)
        finally:
            consumer.close()
        log.info("schemas_loaded", registered=registered, known=len(catalog))
        return registered

    return load


def _register(catalog: SchemaCatalog, message: Message) -> int:
    key, value = message.key(), message.value()
    if key is None or value is None:
        return 0
    try:
        catalog.register(value, expected_fingerprint=fingerprint_from_hex(key.decode("ascii")))
    except (DecodeError, ValueError, UnicodeDecodeError) as error:
        log.warning("schema_skipped", offset=message.offset(), error=type(error).__name__)
        return 0
    return 1


# --- a decoded change --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateChange:
    event_id: str
    change_type: str
    uan: str
    effective_month: str
    detected_at_ms: int
    current_location: dict[str, Any]
    previous_location: dict[str, Any] | None
    supersedes_event_id: str | None

    @property
    def change_id(self) -> str:
        """The change this record is about: itself, or the one it retracts."""
        if self.change_type == "RETRACTED":
            return self.supersedes_event_id or ""
        return self.event_id


def read_change(record_name: str, datum: Mapping[str, Any], key: bytes | None) -> StateChange:
    if record_name != LOCATION_CHANGED:
        raise DecodeError(f"expected a LocationChanged record, got {record_name}")
    try:
        change = StateChange(
            event_id=str(datum["event_id"]),
            change_type=str(datum["change_type"]),
            uan=str(datum["uan"]),
            effective_month=str(datum["effective_month"]),
            detected_at_ms=_millis(datum["detected_at"]),
            current_location=_location(datum["current_location"]),
            previous_location=None
            if datum.get("previous_location") is None
            else _location(datum["previous_location"]),
            supersedes_event_id=None
            if datum.get("supersedes_event_id") is None
            else str(datum["supersedes_event_id"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValidationError(
            f"LocationChanged lacks a usable field ({type(error).__name__})"
        ) from error
    if not _UAN.match(change.uan) or (key or b"").decode("utf-8", "replace") != change.uan:
        raise ValidationError("uan must be 12 digits and equal the message key")
    if change.change_type not in _CHANGE_TYPES:
        raise ValidationError("unknown change_type")
    if change.change_type == "RETRACTED" and not change.supersedes_event_id:
        raise ValidationError("RETRACTED without supersedes_event_id")
    return change


def _millis(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)  # a datetime, if a logical type was applied


def _location(value: Any) -> dict[str, Any]:
    return {
        "state_lgd": int(value["state_lgd"]),
        "district_lgd": int(value["district_lgd"]),
        "subdistrict_lgd": value.get("subdistrict_lgd"),
        "village_town_lgd": value.get("village_town_lgd"),
        "pincode": value.get("pincode"),
    }


# --- the subscriber ----------------------------------------------------------------------------


class StateSubscriber:
    def __init__(
        self,
        consumer: Consumer,
        decoder: SchemaTopicDecoder,
        conninfo: str,
        config: SubscriberConfig,
        *,
        schema_conninfo: str | None = None,
        app_role: str | None = None,
    ) -> None:
        """``conninfo`` is what the subscriber runs as; its tables are created with
        ``schema_conninfo`` (the owner's; default ``conninfo``), which then grants ``app_role``
        rows-only access to them when the two roles differ."""
        self._consumer = consumer
        self._decoder = decoder
        self._conninfo = conninfo
        self._schema_conninfo = schema_conninfo or conninfo
        self._app_role = app_role
        self._config = config
        self._stop = threading.Event()
        self._ignore_stored_offsets = config.from_beginning
        self.totals = SubscriberTotals()

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        log.info("stop_requested", signal=signum)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> SubscriberTotals:
        with psycopg.connect(self._schema_conninfo, autocommit=True) as owner:
            owner.execute(DDL)
            if self._app_role is not None:
                grant_app_role(owner, self._app_role)
        with psycopg.connect(self._conninfo) as conn:
            self._conn = conn
            self._consumer.subscribe([self._config.topic], on_assign=self._on_assign)
            idle = 0
            try:
                while not self._stop.is_set():
                    messages = self._consumer.consume(
                        self._config.batch_size, self._config.batch_timeout_s
                    )
                    if not messages:
                        idle += 1
                        if self._config.idle_exit_polls and idle >= self._config.idle_exit_polls:
                            break
                        continue
                    idle = 0
                    self._process(conn, messages)
            finally:
                self._consumer.close()
        log.info(
            "subscriber_stopped",
            state=self._config.state_lgd,
            applied=self.totals.applied,
            duplicates=self.totals.duplicates,
            rejected=self.totals.rejected,
        )
        return self.totals

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stored: dict[tuple[str, int], int] = {}
        if not self._ignore_stored_offsets:
            rows = self._conn.execute(
                "SELECT topic, partition, next_offset FROM state_subscriber_offsets"
                " WHERE state_lgd = %s",
                (self._config.state_lgd,),
            ).fetchall()
            self._conn.commit()
            stored = {(topic, partition): offset for topic, partition, offset in rows}
        self._ignore_stored_offsets = False  # replay once, then resume as usual
        consumer.assign(
            [
                TopicPartition(
                    p.topic, p.partition, stored.get((p.topic, p.partition), OFFSET_BEGINNING)
                )
                for p in partitions
            ]
        )

    def _process(self, conn: psycopg.Connection[Any], messages: list[Message]) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        with conn.transaction():
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.retriable() or error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RetriableError(f"consumer error: {error.str()}")
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                if topic is None or partition is None or offset is None:
                    continue
                self.totals.consumed += 1
                next_offsets[(topic, partition)] = offset + 1
                try:
                    value = message.value()
                    if value is None:
                        raise ValidationError("empty value")
                    name, datum = self._decoder.decode(value)
                    change = read_change(name, datum, message.key())
                except (DecodeError, ValidationError) as problem:
                    self._reject(conn, topic, partition, offset, problem)
                    continue
                if self._apply(conn, change):
                    self.totals.applied += 1
                else:
                    self.totals.duplicates += 1
            for (topic, partition), next_offset in next_offsets.items():
                conn.execute(
                    "INSERT INTO state_subscriber_offsets AS o VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (state_lgd, topic, partition)"
                    " DO UPDATE SET next_offset = EXCLUDED.next_offset",
                    (self._config.state_lgd, topic, partition, next_offset),
                )
        self._consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()],
            asynchronous=True,
        )
        log.info("batch_committed", messages=len(messages), applied=self.totals.applied)

    def _apply(self, conn: psycopg.Connection[Any], change: StateChange) -> bool:
        """Apply one change; False when it was a duplicate (seen and already in effect)."""
        state = self._config.state_lgd
        active = change.change_type != "RETRACTED"
        seen = (
            conn.execute(
                "INSERT INTO state_subscriber_events VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (state, change.event_id),
            ).rowcount
            == 0
        )
        row = conn.execute(
            "SELECT active FROM state_subscriber_changes"
            " WHERE state_lgd = %s AND change_event_id = %s",
            (state, change.change_id),
        ).fetchone()
        if seen and row is not None and row[0] == active:
            return False
        conn.execute(
            "INSERT INTO state_subscriber_changes VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (state_lgd, change_event_id) DO UPDATE SET active = EXCLUDED.active",
            (
                state,
                change.change_id,
                change.uan,
                change.effective_month,
                change.detected_at_ms,
                active,
                Jsonb(change.current_location),
                None if change.previous_location is None else Jsonb(change.previous_location),
            ),
        )
        self._refresh_worker(conn, change.uan)
        return True

    def _refresh_worker(self, conn: psycopg.Connection[Any], uan: str) -> None:
        state = self._config.state_lgd
        latest = conn.execute(
            "SELECT current_location, effective_month, change_event_id"
            " FROM state_subscriber_changes WHERE state_lgd = %s AND uan = %s AND active"
            " ORDER BY effective_month DESC, detected_at_ms DESC, change_event_id DESC LIMIT 1",
            (state, uan),
        ).fetchone()
        location: dict[str, Any]
        month: str | None = None
        source: str | None = None
        if latest is not None:
            location, month, source = cast("tuple[dict[str, Any], str, str]", latest)
        else:
            first = conn.execute(
                "SELECT previous_location FROM state_subscriber_changes"
                " WHERE state_lgd = %s AND uan = %s"
                " ORDER BY effective_month, change_event_id LIMIT 1",
                (state, uan),
            ).fetchone()
            if first is None or first[0] is None:
                conn.execute(
                    "DELETE FROM state_subscriber_workers WHERE state_lgd = %s AND uan = %s",
                    (state, uan),
                )
                return
            location = first[0]
        conn.execute(
            "INSERT INTO state_subscriber_workers VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (state_lgd, uan) DO UPDATE SET"
            " location_state_lgd = EXCLUDED.location_state_lgd,"
            " location_district_lgd = EXCLUDED.location_district_lgd,"
            " subdistrict_lgd = EXCLUDED.subdistrict_lgd,"
            " village_town_lgd = EXCLUDED.village_town_lgd, pincode = EXCLUDED.pincode,"
            " effective_month = EXCLUDED.effective_month,"
            " source_event_id = EXCLUDED.source_event_id",
            (
                state,
                uan,
                location["state_lgd"],
                location["district_lgd"],
                location.get("subdistrict_lgd"),
                location.get("village_town_lgd"),
                location.get("pincode"),
                month,
                source,
            ),
        )

    def _reject(
        self,
        conn: psycopg.Connection[Any],
        topic: str,
        partition: int,
        offset: int,
        problem: DecodeError | ValidationError,
    ) -> None:
        self.totals.rejected += 1
        self.totals.by_error[problem.error_class] = (
            self.totals.by_error.get(problem.error_class, 0) + 1
        )
        conn.execute(
            "INSERT INTO state_subscriber_rejects VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (
                self._config.state_lgd,
                topic,
                partition,
                offset,
                problem.error_class,
                str(problem)[:500],
            ),
        )
        log.warning(
            "record_rejected",
            topic=topic,
            partition=partition,
            offset=offset,
            error_class=problem.error_class,
        )
