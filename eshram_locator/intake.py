"""From Kafka bytes to typed records, or to a dead letter with the reason.

Shared by every consumer (the locator, the streams apps, the reference subscriber): decode
(either framing), guard against raw Aadhaar numbers, validate, convert to domain types. A
record that fails any step raises a ``PermanentRecordError``; ``dead_letter`` turns it into the
DLQ record contract.md describes. A raw Aadhaar number never reaches the DLQ: the record is
re-encoded with the number masked to its last four digits, and key and headers are masked too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from eshram_locator import topics
from eshram_locator.avro_codec import AvroCodec, single_object_header
from eshram_locator.domain.aadhaar import mask_record, mask_text, may_hold_aadhaar, scan_record
from eshram_locator.domain.model import (
    AuthMode,
    CollectionItem,
    Location,
    Portability,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.errors import PermanentRecordError, RawAadhaarError, ValidationError
from eshram_locator.geography import STATES_BY_LGD
from eshram_locator.postgres.store import OutboxRow
from eshram_locator.records import (
    RATION_COLLECTION,
    WORKER_REGISTRATION,
    ration_collection_from_avro,
    worker_registration_from_avro,
)

if TYPE_CHECKING:
    from confluent_kafka import Message

_UAN = re.compile(r"^\d{12}$")


@dataclass(slots=True)  # not frozen: created for every message, and frozen __init__ is 4x slower
class RawMessage:
    """A consumed message, with where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class RejectedRecord(PermanentRecordError):
    """Wraps the cause with the masked copies of key, value and headers the DLQ may keep."""

    def __init__(
        self,
        cause: PermanentRecordError,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[tuple[str, bytes], ...],
    ) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.error_class = cause.error_class
        self.key = key
        self.value = value
        self.headers = headers


def read_collection(codec: AvroCodec, message: RawMessage) -> RationCollection:
    datum = decode_guarded(codec, message, RATION_COLLECTION)
    collection = ration_collection_from_avro(datum)
    key = (message.key or b"").decode("utf-8", errors="replace")
    if key != collection.member_ref:
        raise ValidationError("message key is not the record's member_ref")
    _check_storable_collection(collection)
    return collection


# --- the input streams' fast path -----------------------------------------------------------

try:
    from eshram_locator import _collection_reader
except ImportError:  # installed where no C compiler was found: the extension is optional
    _collection_reader = None  # type: ignore[assignment]

COMPILED_SCHEMAS: Final = {
    RATION_COLLECTION: 0x011622E5C63BAD61,
    WORKER_REGISTRATION: 0x1C507CE545A05EE8,
}
"""The canonical-form fingerprints of the schemas _collection_reader.c reads."""

FastCollectionRead = Callable[[bytes | None, bytes | None], RationCollection | None]
FastRegistrationRead = Callable[[bytes | None, bytes | None], WorkerRegistration | None]
CompiledBatch = tuple[
    list[RationCollection],
    dict[str, list[RationCollection]] | None,
    dict[tuple[str, int], int],
    list[int],
]
FastBatchRead = Callable[["list[Message]", str], CompiledBatch | None]


def fast_collection_reader(codec: AvroCodec) -> FastCollectionRead | None:
    """``read(value, key)``: the compiled reader of single-object records written with the
    current RationCollection schema. It returns a collection equal to ``read_collection``'s for
    the same bytes, or None where that function must decide (another schema or framing, bad
    or unusual records, an Aadhaar-like digit shape: see ``_collection_reader.c``).

    None when the extension is not built, or the current schema is not the one it reads.
    """
    header = _compiled_header(codec, RATION_COLLECTION)
    return None if header is None else partial(_collection_reader.read, header)


def fast_registration_reader(codec: AvroCodec) -> FastRegistrationRead | None:
    """As ``fast_collection_reader``, for ``read_registration`` (None for a tombstone too)."""
    header = _compiled_header(codec, WORKER_REGISTRATION)
    return None if header is None else partial(_collection_reader.read_registration, header)


def fast_batch_reader(codec: AvroCodec) -> FastBatchRead | None:
    """``read(messages, collections_topic)``: the locator's per-message loop, compiled, for a
    consumed batch's collections that ``fast_collection_reader`` reads. It returns
    ``(collections, grouped, next_offsets, left)``:

    - ``collections``: those it read, in arrival order;
    - ``grouped``: the same as ``locating.by_member(collections)`` returns, or None where
      ``by_member`` must decide (a transaction id seen twice with different bytes);
    - ``next_offsets``: for every partition, the offset after its last message that has no
      error and has a topic, partition and offset (left ones too), keys in order of first
      arrival;
    - ``left``: the indices of the messages it left to the caller: errors, other topics, what
      ``fast_collection_reader`` leaves, messages without topic, partition or offset.

    Or None, for a batch with a message whose topic, partition or offset is of another type
    than Kafka gives: the caller reads it whole. None (the function) as for
    ``fast_collection_reader``.
    """
    header = _compiled_header(codec, RATION_COLLECTION)
    return None if header is None else partial(_collection_reader.read_collections, header)


def _compiled_header(codec: AvroCodec, record: str) -> bytes | None:
    """Configures the extension; the header of the current ``record`` schema if it reads it
    (None when the extension is not built or reads another version of the schema)."""
    current = codec.catalog.current(record)
    if _collection_reader is None or current.fingerprint != COMPILED_SCHEMAS[record]:
        return None
    collection = codec.catalog.current(RATION_COLLECTION).parsed
    by_name = {field["name"]: field["type"] for field in collection["fields"]}
    _collection_reader.configure(
        RationCollection,
        tuple(field.name for field in fields(RationCollection)),
        Location,
        tuple(field.name for field in fields(Location)),
        CollectionItem,
        tuple(field.name for field in fields(CollectionItem)),
        WorkerRegistration,
        tuple(field.name for field in fields(WorkerRegistration)),
        tuple(AuthMode(symbol) for symbol in by_name["auth_mode"]["symbols"]),
        tuple(Portability(symbol) for symbol in by_name["portability"]["symbols"]),
        datetime(1970, 1, 1, tzinfo=UTC),
        tuple(STATES_BY_LGD),
    )
    return single_object_header(current.fingerprint)


def read_registration(codec: AvroCodec, message: RawMessage) -> WorkerRegistration | None:
    """None is a tombstone: the worker deregistered."""
    key = (message.key or b"").decode("utf-8", errors="replace")
    if not _UAN.match(key):
        raise ValidationError("registry key is not a 12-digit uan")
    if message.value is None:
        return None
    registration = worker_registration_from_avro(
        decode_guarded(codec, message, WORKER_REGISTRATION)
    )
    if registration.uan != key:
        raise ValidationError("message key is not the record's uan")
    _check_storable_registration(registration)
    return registration


# --- what PostgreSQL can store: a record it would refuse must be dead-lettered here, or the
# batch holding it would fail at every retry (a poison pill) -------------------------------------

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _check_text(*values: str | None) -> None:
    """PostgreSQL text and jsonb cannot hold NUL (U+0000); Avro strings can."""
    for value in values:
        if value is not None and "\x00" in value:
            raise ValidationError("a text field contains a NUL character")


def _check_int32(value: int | None, field: str) -> None:
    """Avro ``int`` is 32-bit, but a reader accepts any varint; PostgreSQL integer does not."""
    if value is not None and not _INT32_MIN <= value <= _INT32_MAX:
        raise ValidationError(f"{field} is outside the 32-bit range of an Avro int")


def _check_location(location: Location, field: str) -> None:
    _check_int32(location.district_lgd, f"{field}.district_lgd")
    _check_int32(location.subdistrict_lgd, f"{field}.subdistrict_lgd")
    _check_int32(location.village_town_lgd, f"{field}.village_town_lgd")
    _check_text(location.pincode)


def _check_storable_collection(collection: RationCollection) -> None:
    _check_text(  # member_ref: records rejects any control character in it already
        collection.transaction_id,
        collection.source,
        collection.ration_card_id,
        collection.fps_id,
    )
    _check_location(collection.fps_location, "fps_location")
    for item in collection.items:
        _check_text(item.commodity, item.scheme)
        _check_int32(item.quantity_grams, "items.quantity_grams")


def _check_storable_registration(registration: WorkerRegistration) -> None:
    _check_text(registration.occupation_nco)  # member_ref: checked by records
    _check_location(registration.permanent_address, "permanent_address")
    if registration.present_address is not None:
        _check_location(registration.present_address, "present_address")


def decode_guarded(codec: AvroCodec, message: RawMessage, record: str) -> dict[str, Any]:
    if message.value is None:
        raise ValidationError(f"empty value where a {record} was expected")
    _, datum = codec.decode(message.value, record)
    if not may_hold_aadhaar(datum):
        return datum
    hits = scan_record(datum)
    if hits:
        fields = sorted({path for path, _ in hits})
        cause = RawAadhaarError(f"Aadhaar-like number in {', '.join(fields)}")
        masked = mask_record(datum, hits)
        numbers = {number for _, number in hits}
        raise RejectedRecord(
            cause,
            _mask_bytes(message.key, numbers),
            codec.encode(record, masked),
            tuple((name, _mask_bytes(value, numbers) or b"") for name, value in message.headers),
        )
    return datum


def _mask_bytes(payload: bytes | None, numbers: set[str] | None = None) -> bytes | None:
    """Mask Aadhaar-like digit runs in raw bytes, in place (lengths unchanged)."""
    if not payload:
        return payload
    return mask_text(payload.decode("latin-1"), frozenset(numbers or ())).encode("latin-1")


def dead_letter(message: RawMessage, error: PermanentRecordError) -> OutboxRow:
    """The DLQ record of contract.md: original bytes, key and headers, plus the reason."""
    if isinstance(error, RejectedRecord):
        key, value, headers = error.key, error.value, error.headers
        reason = str(error.cause)
    else:
        # Undecodable bytes are kept as they came, except any Aadhaar-like digit run.
        key = _mask_bytes(message.key)
        value = _mask_bytes(message.value)
        headers = tuple((name, _mask_bytes(v) or b"") for name, v in message.headers)
        reason = str(error)
    extra: Mapping[str, str] = {
        "error.class": error.error_class,
        "error.reason": mask_text(reason)[:1000],
        "source.topic": message.topic,
        "source.partition": str(message.partition),
        "source.offset": str(message.offset),
    }
    return OutboxRow(
        topics.dlq(message.topic),
        key,
        value,
        headers + tuple((name, text.encode()) for name, text in extra.items()),
    )
