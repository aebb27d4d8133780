"""Fuzzing the intake: every input is processed or dead-lettered with a reason, nothing raises.

Properties, over >= 10,000 inputs in all (``FUZZ_EXAMPLES`` per test):

- ``AvroCodec.decode`` returns a record or raises a ``DecodeError``;
- ``read_collection`` / ``read_registration`` return a record or raise a
  ``PermanentRecordError``; never another exception;
- what they return is storable and carries no Aadhaar-like number (outside ``uan``);
- the compiled readers (``fast_collection_reader``, ``fast_registration_reader``) return None
  or what ``read_collection`` (``read_registration``) returns, never a record it rejects;
- what they reject, ``dead_letter`` turns into a DLQ row with the error class, a reason and the
  source coordinates, and no Aadhaar-like number anywhere in its key, value or headers.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eshram_locator.avro_codec import AvroCodec, load_codec
from eshram_locator.domain.aadhaar import find_aadhaar_like, scan_record, verhoeff_check_digit
from eshram_locator.domain.model import RationCollection, WorkerRegistration
from eshram_locator.errors import DecodeError, PermanentRecordError
from eshram_locator.intake import (
    RawMessage,
    RejectedRecord,
    dead_letter,
    fast_collection_reader,
    fast_registration_reader,
    read_collection,
    read_registration,
)
from eshram_locator.records import to_avro
from eshram_locator.topics import TopicNames, dlq
from tests.fuzz_inputs import AVRO_DIR, COLLECTION, REGISTRATION, fuzz_message

FUZZ_EXAMPLES = 2_500  # x 4 tests + the explicit cases: > 10,000 inputs
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
NAMES = TopicNames("fuzz.")
ERROR_CLASSES = {
    "decode_error",
    "wrong_magic",
    "unknown_schema",
    "truncated_record",
    "validation_error",
    "raw_aadhaar",
}
CODEC: AvroCodec = load_codec(AVRO_DIR)
READ_COMPILED = fast_collection_reader(CODEC)
READ_REGISTRATION_COMPILED = fast_registration_reader(CODEC)
OUTCOMES: Counter[str] = Counter()


def intake(message: RawMessage) -> str:
    """The locator's intake of one message: 'processed' or the DLQ error class."""
    compiled: RationCollection | WorkerRegistration | None = None
    if message.topic == NAMES.collections and READ_COMPILED is not None:
        compiled = READ_COMPILED(message.value, message.key)
    elif message.topic != NAMES.collections and READ_REGISTRATION_COMPILED is not None:
        compiled = READ_REGISTRATION_COMPILED(message.value, message.key)
    try:
        if message.topic == NAMES.collections:
            record: RationCollection | WorkerRegistration | None = read_collection(CODEC, message)
        else:
            record = read_registration(CODEC, message)
    except PermanentRecordError as error:
        assert compiled is None, "the compiled reader took a record the general path rejects"
        check_dead_letter(message, error)
        OUTCOMES[error.error_class] += 1
        return error.error_class
    if compiled is not None:
        assert compiled == record, "the compiled reader read another record"
        OUTCOMES[f"compiled {type(compiled).__name__}"] += 1
    if record is not None:
        _, datum = to_avro(record)
        assert scan_record(datum) == [], "an Aadhaar-like number got through"
    OUTCOMES["processed"] += 1
    return "processed"


def exempt_uan(message: RawMessage) -> set[str]:
    """A registration's uan, when its value decodes: exempt from the Aadhaar guard by contract
    (a uan may look like an Aadhaar number), so the dead letter keeps it as it came."""
    if message.topic != NAMES.registry or not message.value:
        return set()
    try:
        _, datum = CODEC.decode(message.value, "WorkerRegistration")
    except DecodeError:
        return set()
    uan = datum.get("uan")
    return {uan} if isinstance(uan, str) else set()


def check_dead_letter(message: RawMessage, error: PermanentRecordError) -> None:
    row = dead_letter(message, error)
    assert row.topic == dlq(message.topic)
    headers = dict(row.headers)
    assert headers["error.class"].decode() in ERROR_CLASSES
    assert headers["error.reason"].strip()
    assert headers["source.topic"] == message.topic.encode()
    assert headers["source.partition"] == str(message.partition).encode()
    assert headers["source.offset"] == str(message.offset).encode()
    for blob in (
        row.key or b"",
        row.value or b"",
        *(f"{k}={v!r}".encode() for k, v in headers.items()),
    ):
        found = set(find_aadhaar_like(blob.decode("latin-1"))) - exempt_uan(message)
        assert not found, "a raw Aadhaar number in the DLQ"
    if not isinstance(error, RejectedRecord):
        # Kept as they came, but for Aadhaar-like digit runs (same length: masked in place).
        assert len(row.value or b"") == len(message.value or b"")
        assert len(row.key or b"") == len(message.key or b"")


def raw(topic: str, value: bytes | None, key: bytes | None, offset: int = 7) -> RawMessage:
    return RawMessage(topic, 1, offset, key, value)


@FUZZ
@given(
    value=st.one_of(st.none(), st.binary(max_size=600)),
    key=st.one_of(st.none(), st.binary(max_size=40)),
    collections=st.booleans(),
)
def test_random_bytes_are_dead_lettered_never_raised(
    value: bytes | None, key: bytes | None, collections: bool
) -> None:
    topic = NAMES.collections if collections else NAMES.registry
    intake(raw(topic, value, key))


@FUZZ
@given(body=st.binary(max_size=400), header=st.sampled_from(["collection", "registration"]))
def test_the_codec_decodes_or_raises_decode_error(body: bytes, header: str) -> None:
    name = "RationCollection" if header == "collection" else "WorkerRegistration"
    valid = CODEC.encode(name, to_avro(COLLECTION)[1]) if header == "collection" else None
    prefix = (
        valid[:10]
        if valid is not None
        else b"\xc3\x01"
        + CODEC.catalog.current(name).fingerprint.to_bytes(8, "little", signed=True)
    )
    for payload in (prefix + body, body, b"\x00" + body):
        try:
            record_name, datum = CODEC.decode(payload)
        except DecodeError:
            continue
        assert isinstance(datum, dict)
        assert record_name in CODEC.catalog.record_names()


@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_hostile_messages_are_processed_or_dead_lettered(rng: random.Random) -> None:
    intake(fuzz_message(rng, CODEC, NAMES, offset=rng.randrange(10**6)))


@FUZZ
@given(data=st.data())
def test_valid_records_with_one_field_broken(data: st.DataObject) -> None:
    """Out-of-range months and codes, negative quantities, unknown enum symbols, strings."""
    datum = to_avro(COLLECTION)[1]
    field = data.draw(st.sampled_from(sorted(datum)))
    replacement = {
        "allocation_month": st.text(max_size=12),
        "card_state_lgd": st.integers(-(2**31), 2**31 - 1),
        "auth_mode": st.sampled_from(["FINGERPRINT", "OTP", "MANUAL"]),
        "portability": st.sampled_from(["NONE", "INTER_STATE"]),
        "transacted_at": st.datetimes(timezones=st.just(UTC)),
        "fps_location": st.fixed_dictionaries(
            {
                "state_lgd": st.integers(-(2**31), 2**31 - 1),
                "district_lgd": st.integers(-(2**31), 2**31 - 1),
                "subdistrict_lgd": st.none() | st.integers(-(2**31), 2**31 - 1),
                "village_town_lgd": st.none() | st.integers(-(2**31), 2**31 - 1),
                "pincode": st.none() | st.text(max_size=20),
            }
        ),
        "items": st.lists(
            st.fixed_dictionaries(
                {
                    "commodity": st.text(max_size=20),
                    "scheme": st.text(max_size=20),
                    "quantity_grams": st.integers(-(2**31), 2**31 - 1),
                }
            ),
            max_size=150,
        ),
    }.get(field, st.text(max_size=40))
    broken = {**datum, field: data.draw(replacement)}
    value = CODEC.encode("RationCollection", broken)
    key = broken["member_ref"].encode("utf-8", errors="surrogatepass")
    outcome = intake(raw(NAMES.collections, value, key))
    if field == "allocation_month" and outcome == "processed":
        assert broken["allocation_month"][:2] == "20"


def test_explicit_hostile_cases() -> None:
    number = "23456789012" + verhoeff_check_digit("23456789012")
    datum = to_avro(COLLECTION)[1]
    cases = {
        "month 13": {**datum, "allocation_month": "2025-13"},
        "negative quantity": {
            **datum,
            "items": [{"commodity": "RICE", "scheme": "NFSA", "quantity_grams": -1}],
        },
        "unknown state": {**datum, "card_state_lgd": 99},
        "101 items": {
            **datum,
            "items": [{"commodity": "RICE", "scheme": "NFSA", "quantity_grams": 1}] * 101,
        },
        "aadhaar in card": {**datum, "ration_card_id": f"UP {number}"},
        "nul in fps": {**datum, "fps_id": "F\x00"},
    }
    expected = {
        "month 13": "validation_error",
        "negative quantity": "validation_error",
        "unknown state": "validation_error",
        "101 items": "validation_error",
        "aadhaar in card": "raw_aadhaar",
        "nul in fps": "validation_error",
    }
    for name, broken in cases.items():
        value = CODEC.encode("RationCollection", broken)
        assert (
            intake(raw(NAMES.collections, value, COLLECTION.member_ref.encode())) == expected[name]
        ), name


def test_a_raw_aadhaar_record_is_dead_lettered_masked_with_reason_and_coordinates() -> None:
    number = "98765432101" + verhoeff_check_digit("98765432101")
    grouped = f"{number[:4]} {number[4:8]} {number[8:]}"
    datum = {**to_avro(COLLECTION)[1], "member_ref": grouped, "fps_id": f"FPS {number}"}
    message = RawMessage(
        NAMES.collections,
        4,
        1234,
        grouped.encode(),
        CODEC.encode("RationCollection", datum),
        (("origin", f"card {number}".encode()),),
    )
    with pytest.raises(RejectedRecord) as rejected:
        read_collection(CODEC, message)
    row = dead_letter(message, rejected.value)
    headers = dict(row.headers)
    assert headers["error.class"] == b"raw_aadhaar"
    assert headers["error.reason"] == b"Aadhaar-like number in fps_id, member_ref"
    assert (headers["source.topic"], headers["source.partition"], headers["source.offset"]) == (
        NAMES.collections.encode(),
        b"4",
        b"1234",
    )
    assert row.topic == NAMES.dlq(NAMES.collections)
    assert row.key == f"XXXX XXXX {number[-4:]}".encode()
    assert headers["origin"] == f"card XXXXXXXX{number[-4:]}".encode()
    _, masked = CODEC.decode(row.value or b"", "RationCollection")
    assert masked["member_ref"] == f"XXXX XXXX {number[-4:]}"
    assert masked["fps_id"] == f"FPS XXXXXXXX{number[-4:]}"
    assert {k: v for k, v in masked.items() if k not in ("member_ref", "fps_id")} == {
        k: v
        for k, v in CODEC.decode(message.value or b"")[1].items()
        if k not in ("member_ref", "fps_id")
    }


def test_a_uan_that_looks_like_an_aadhaar_number_stays_in_the_dead_letter() -> None:
    """Found by the fuzzer: the uan is exempt from the guard by contract, even when it looks
    like an Aadhaar number; the same digits in member_ref are masked."""
    number = "20000000000" + verhoeff_check_digit("20000000000")
    datum = {**to_avro(REGISTRATION)[1], "uan": number, "member_ref": number}
    message = raw(NAMES.registry, CODEC.encode("WorkerRegistration", datum), number.encode())
    assert intake(message) == "raw_aadhaar"
    with pytest.raises(RejectedRecord) as rejected:
        read_registration(CODEC, message)
    _, masked = CODEC.decode(dead_letter(message, rejected.value).value or b"")
    assert masked["uan"] == number
    assert masked["member_ref"] == f"XXXXXXXX{number[-4:]}"


def test_the_fuzzing_reached_every_outcome() -> None:
    """Run last in this module: the inputs above exercised processing and every DLQ class."""
    rng = random.Random(99)
    for offset in range(500):
        intake(fuzz_message(rng, CODEC, NAMES, offset=offset))
    assert OUTCOMES["processed"] > 0
    assert READ_COMPILED is not None
    assert READ_REGISTRATION_COMPILED is not None
    assert OUTCOMES["compiled RationCollection"] > 0
    assert OUTCOMES["compiled WorkerRegistration"] > 0
    assert {
        "decode_error",
        "wrong_magic",
        "unknown_schema",
        "truncated_record",
        "validation_error",
        "raw_aadhaar",
    } <= set(OUTCOMES)
