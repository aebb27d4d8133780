"""The compiled readers (``intake.fast_collection_reader``, ``fast_registration_reader``)
against the general path.

Their contract: for any bytes, they return None, or a record equal to what ``read_collection``
(``read_registration``) returns for the same message (which then must not raise). They must
also take the common case: a plain record of the current schema, such as every record the
simulator writes. The fuzz tests (test_intake_fuzz.py) check the same contract on their
hostile inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eshram_locator.avro_codec import SINGLE_OBJECT_MAGIC, SchemaCatalog, load_codec
from eshram_locator.domain.aadhaar import verhoeff_check_digit
from eshram_locator.domain.model import (
    AuthMode,
    Portability,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.errors import PermanentRecordError
from eshram_locator.intake import (
    COMPILED_SCHEMAS,
    FastCollectionRead,
    FastRegistrationRead,
    RawMessage,
    fast_collection_reader,
    fast_registration_reader,
    read_collection,
    read_registration,
)
from eshram_locator.records import ration_collection_to_avro, worker_registration_to_avro
from eshram_locator.simulator.config import SimulationConfig
from eshram_locator.simulator.population import simulate
from tests.fuzz_inputs import COLLECTION, REGISTRATION

AVRO_DIR = Path(__file__).resolve().parents[2] / "avro"
CODEC = load_codec(AVRO_DIR)
NUMBER = "23456789012" + verhoeff_check_digit("23456789012")


def compiled() -> FastCollectionRead:
    read = fast_collection_reader(CODEC)
    assert read is not None, "the C extension eshram_locator._collection_reader is not built"
    return read


def general(value: bytes, key: bytes | None) -> RationCollection:
    return read_collection(CODEC, RawMessage("pds.ration-collections.v1", 0, 0, key, value))


def agrees(value: bytes, key: bytes | None) -> RationCollection | None:
    """The contract, for one message: None, or what the general path returns."""
    fast = compiled()(value, key)
    if fast is not None:
        assert fast == general(value, key)
        assert type(fast.transacted_at) is datetime
        assert fast.transacted_at.tzinfo is UTC
    return fast


def encode(datum: dict[str, Any]) -> bytes:
    return CODEC.encode("RationCollection", datum)


def test_the_compiled_readers_read_the_current_schemas() -> None:
    catalog = SchemaCatalog.load(AVRO_DIR)
    for record, fingerprint in COMPILED_SCHEMAS.items():
        assert catalog.current(record).fingerprint == fingerprint, (
            f"avro/{record}.avsc changed: update eshram_locator/_collection_reader.c to read "
            "it, then intake.COMPILED_SCHEMAS"
        )
    compiled()
    compiled_registration()


def test_every_simulated_collection_takes_the_compiled_path() -> None:
    simulation = simulate(SimulationConfig(workers=300, months=4, seed=11))
    collections = [m.value for m in simulation.messages() if isinstance(m.value, RationCollection)]
    assert len(collections) > 500
    for collection in collections:
        value = encode(ration_collection_to_avro(collection))
        fast = agrees(value, collection.member_ref.encode())
        assert fast == collection


# Printable ASCII without the digits that could make an Aadhaar-like shape.
PLAIN = st.text(st.sampled_from("ABCXYZ-_ /.:abc0123"), min_size=1, max_size=30).filter(
    lambda text: not text.isspace()
)
ANY_TEXT = st.text(max_size=40)
INT32 = st.integers(-(2**31), 2**31 - 1)
STATE = st.sampled_from([1, 9, 10, 27, 99, 0, -3, 300])


def location(text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "state_lgd": STATE,
            "district_lgd": st.integers(-5, 2**31 - 1),
            "subdistrict_lgd": st.none() | INT32,
            "village_town_lgd": st.none() | INT32,
            "pincode": st.none() | text,
        }
    )


def collection_datum(text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "transaction_id": text,
            "source": text,
            "ration_card_id": text,
            "member_ref": text,
            "auth_mode": st.sampled_from([mode.value for mode in AuthMode]),
            "fps_id": text,
            "fps_location": location(text),
            "card_state_lgd": STATE,
            "portability": st.sampled_from([value.value for value in Portability]),
            "allocation_month": st.sampled_from(["2025-04", "2099-12", "2000-01", "2025-13"])
            | text,
            "transacted_at": st.datetimes(
                min_value=datetime(1960, 1, 1),
                max_value=datetime(2200, 1, 1),
                timezones=st.just(UTC),
            ).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000)),
            "items": st.lists(
                st.fixed_dictionaries(
                    {
                        "commodity": text,
                        "scheme": text,
                        "quantity_grams": st.integers(-3, 2**31 - 1),
                    }
                ),
                max_size=4,
            ),
        }
    )


PROPERTY = settings(
    max_examples=1_500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


@PROPERTY
@given(datum=collection_datum(PLAIN | ANY_TEXT), right_key=st.booleans())
def test_any_record_reads_as_the_general_path_reads_it_or_is_left_to_it(
    datum: dict[str, Any], right_key: bool
) -> None:
    key = datum["member_ref"].encode("utf-8", "surrogatepass") if right_key else b"MR-other"
    agrees(encode(datum), key)


@PROPERTY
@given(datum=collection_datum(PLAIN))
def test_a_plain_valid_record_takes_the_compiled_path(datum: dict[str, Any]) -> None:
    datum["fps_location"]["state_lgd"] = datum["card_state_lgd"] = 9
    datum["fps_location"]["district_lgd"] = max(1, datum["fps_location"]["district_lgd"])
    datum["allocation_month"] = "2025-04"
    datum["transacted_at"] = max(datum["transacted_at"], datetime(1970, 1, 1, tzinfo=UTC))
    datum["transacted_at"] = min(datum["transacted_at"], datetime(2100, 1, 1, tzinfo=UTC))
    for item in datum["items"]:
        item["quantity_grams"] = abs(item["quantity_grams"])
    assert agrees(encode(datum), datum["member_ref"].encode()) is not None


@PROPERTY
@given(
    datum=collection_datum(PLAIN),
    at=st.integers(0, 400),
    replacement=st.binary(min_size=1, max_size=3),
    cut=st.booleans(),
)
def test_damaged_bytes_are_read_as_the_general_path_reads_them_or_left_to_it(
    datum: dict[str, Any], at: int, replacement: bytes, cut: bool
) -> None:
    damaged = damage(encode(datum), at, replacement, cut)
    key = datum["member_ref"].encode()
    if compiled()(damaged, key) is not None:
        agrees(damaged, key)
    else:  # what it leaves, the general path reads or rejects with a reason, as always
        with contextlib.suppress(PermanentRecordError):
            general(damaged, key)


def damage(value: bytes, at: int, replacement: bytes, cut: bool) -> bytes:
    """The record cut short, or with bytes overwritten, somewhere after its 10-byte header."""
    at = 10 + at % max(1, len(value) - 10)
    return value[:at] if cut else value[:at] + replacement + value[at + len(replacement) :]


def without_items(collection: RationCollection) -> bytes:
    """The record with an empty items array: the array is the last field, one 0x00 byte."""
    value = encode({**ration_collection_to_avro(collection), "items": []})
    assert value[-1] == 0
    return value[:-1]


def item_bytes(commodity: str, scheme: str, grams: int) -> bytes:
    return (
        zigzag(len(commodity))
        + commodity.encode()
        + zigzag(len(scheme))
        + scheme.encode()
        + (zigzag(grams))
    )


def zigzag(value: int) -> bytes:
    bits = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = bits & 0x7F
        bits >>= 7
        if bits:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def test_arrays_in_several_blocks_and_with_block_sizes() -> None:
    """Avro writers may split an array into blocks, and give a block's byte size with a
    negative count; fastavro's writer does neither, other producers' writers may."""
    rice, wheat = item_bytes("RICE", "NFSA", 5000), item_bytes("WHEAT", "PMGKAY", 1)
    head = without_items(COLLECTION)
    key = COLLECTION.member_ref.encode()
    for body in (
        zigzag(1) + rice + zigzag(1) + wheat + zigzag(0),
        zigzag(-2) + zigzag(len(rice + wheat)) + rice + wheat + zigzag(0),
        zigzag(-1) + zigzag(len(rice)) + rice + zigzag(1) + wheat + zigzag(0),
    ):
        fast = agrees(head + body, key)
        assert fast is not None
        assert [item.commodity for item in fast.items] == ["RICE", "WHEAT"]


def test_what_the_general_path_must_decide_is_left_to_it() -> None:
    datum = ration_collection_to_avro(COLLECTION)
    key = COLLECTION.member_ref.encode()
    grouped = f"{NUMBER[:4]}-{NUMBER[4:8]} {NUMBER[8:]}"
    cases: dict[str, tuple[bytes, bytes | None]] = {
        "aadhaar in fps_id": (encode({**datum, "fps_id": f"FPS{NUMBER}"}), key),
        "grouped aadhaar in a commodity": (
            encode(
                {**datum, "items": [{"commodity": grouped, "scheme": "S", "quantity_grams": 1}]}
            ),
            key,
        ),
        "devanagari": (encode({**datum, "ration_card_id": "UP-१२३"}), key),
        "control character": (encode({**datum, "source": "IM\tPDS"}), key),
        "nul": (encode({**datum, "fps_id": "F\x00"}), key),
        "blank transaction id": (encode({**datum, "transaction_id": "  "}), key),
        "another key": (encode(datum), b"MR-other"),
        "no key": (encode(datum), None),
        "month 13": (encode({**datum, "allocation_month": "2025-13"}), key),
        "month 1999": (encode({**datum, "allocation_month": "1999-12"}), key),
        "unknown card state": (encode({**datum, "card_state_lgd": 99}), key),
        "district 0": (
            encode({**datum, "fps_location": {**datum["fps_location"], "district_lgd": 0}}),
            key,
        ),
        "negative quantity": (
            encode({**datum, "items": [{"commodity": "R", "scheme": "S", "quantity_grams": -1}]}),
            key,
        ),
        "101 items": (
            encode(
                {**datum, "items": [{"commodity": "R", "scheme": "S", "quantity_grams": 1}] * 101}
            ),
            key,
        ),
        "before 1970": (
            encode({**datum, "transacted_at": datetime(1969, 12, 31, tzinfo=UTC)}),
            key,
        ),
        "trailing byte": (encode(datum) + b"\x00", key),
        "truncated": (encode(datum)[:-3], key),
        "another schema": (
            SINGLE_OBJECT_MAGIC
            + (COMPILED_SCHEMAS["RationCollection"] + 1).to_bytes(8, "little")
            + encode(datum)[10:],
            key,
        ),
        "confluent framing": (b"\x00\x00\x00\x00\x07" + encode(datum)[10:], key),
    }
    read = compiled()
    for name, (value, message_key) in cases.items():
        assert read(value, message_key) is None, name
    assert read(None, key) is None


def test_an_int_past_32_bits_is_left_to_the_general_path() -> None:
    head = without_items(COLLECTION)
    key = COLLECTION.member_ref.encode()
    assert compiled()(head + zigzag(1) + item_bytes("R", "S", 2**31) + zigzag(0), key) is None
    with pytest.raises(PermanentRecordError):
        general(head + zigzag(1) + item_bytes("R", "S", 2**31) + zigzag(0), key)


def test_millisecond_timestamps_convert_as_fastavro_converts_them() -> None:
    key = COLLECTION.member_ref.encode()
    for instant in (
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
        datetime(2109, 5, 1, tzinfo=UTC),
    ):
        value = encode({**ration_collection_to_avro(COLLECTION), "transacted_at": instant})
        fast = agrees(value, key)
        assert fast is not None
        assert fast.transacted_at == instant


def test_reading_leaks_no_reference() -> None:
    """Shared objects (None, the enum members, cached locations) keep their reference counts
    over many reads that take or leave the compiled path."""
    read = compiled()
    key = COLLECTION.member_ref.encode()
    good = encode(ration_collection_to_avro(COLLECTION))
    bad_item = without_items(COLLECTION) + zigzag(1) + item_bytes("R", "S", -1) + zigzag(0)
    first = read(good, key)
    assert first is not None
    shared = (
        None,
        AuthMode.FINGERPRINT,
        Portability.NONE,
        first.fps_location,
        first.items,
        first.source,
        first.fps_id,
        first.allocation_month,
    )
    before = [sys.getrefcount(value) for value in shared]
    for _ in range(2_000):
        read(good, key)
        read(bad_item, key)
        read(good[:-1], key)
        read(good, b"other")
    assert [sys.getrefcount(value) for value in shared] == before


def test_equal_parts_are_shared() -> None:
    read = compiled()
    key = COLLECTION.member_ref.encode()
    one = read(encode(ration_collection_to_avro(COLLECTION)), key)
    later = dataclasses.replace(COLLECTION, transacted_at=COLLECTION.transacted_at + timedelta(1))
    two = read(encode(ration_collection_to_avro(later)), key)
    assert one is not None
    assert two is not None
    assert one.fps_location is two.fps_location
    assert one.items is two.items
    # the fields with few distinct values
    assert one.source is two.source
    assert one.fps_id is two.fps_id
    assert one.allocation_month is two.allocation_month


# --- registrations ---------------------------------------------------------------------------


def compiled_registration() -> FastRegistrationRead:
    read = fast_registration_reader(CODEC)
    assert read is not None, "the C extension eshram_locator._collection_reader is not built"
    return read


def registration_agrees(value: bytes, key: bytes | None) -> WorkerRegistration | None:
    fast = compiled_registration()(value, key)
    if fast is not None:
        message = RawMessage("eshram.worker-registry.v1", 0, 0, key, value)
        assert fast == read_registration(CODEC, message)
        assert fast.updated_at.tzinfo is UTC
    return fast


def encode_registration(datum: dict[str, Any]) -> bytes:
    return CODEC.encode("WorkerRegistration", datum)


def registration_datum(text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "uan": st.sampled_from(["100000000009", "234567890123", "12345678901", "1000000000x9"]),
            "member_ref": text,
            "permanent_address": location(text),
            "present_address": st.none() | location(text),
            "occupation_nco": st.none() | text,
            "consent_state_sharing": st.booleans(),
            "sms_reachable": st.booleans(),
            "updated_at": st.datetimes(
                min_value=datetime(1960, 1, 1),
                max_value=datetime(2200, 1, 1),
                timezones=st.just(UTC),
            ).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000)),
        }
    )


@PROPERTY
@given(datum=registration_datum(PLAIN | ANY_TEXT), right_key=st.booleans())
def test_any_registration_reads_as_the_general_path_reads_it_or_is_left_to_it(
    datum: dict[str, Any], right_key: bool
) -> None:
    key = datum["uan"].encode() if right_key else b"100000000001"
    registration_agrees(encode_registration(datum), key)


@PROPERTY
@given(datum=registration_datum(PLAIN))
def test_a_plain_valid_registration_takes_the_compiled_path(datum: dict[str, Any]) -> None:
    datum["uan"] = "100000000009"
    for address in (datum["permanent_address"], datum["present_address"]):
        if address is not None:
            address["state_lgd"] = 9
            address["district_lgd"] = max(1, address["district_lgd"])
    datum["updated_at"] = max(datum["updated_at"], datetime(1970, 1, 1, tzinfo=UTC))
    datum["updated_at"] = min(datum["updated_at"], datetime(2100, 1, 1, tzinfo=UTC))
    assert registration_agrees(encode_registration(datum), b"100000000009") is not None


@PROPERTY
@given(
    datum=registration_datum(PLAIN),
    at=st.integers(0, 300),
    replacement=st.binary(min_size=1, max_size=3),
    cut=st.booleans(),
)
def test_damaged_registrations_are_read_as_the_general_path_reads_them_or_left_to_it(
    datum: dict[str, Any], at: int, replacement: bytes, cut: bool
) -> None:
    damaged = damage(encode_registration(datum), at, replacement, cut)
    key = datum["uan"].encode()
    if compiled_registration()(damaged, key) is not None:
        registration_agrees(damaged, key)


def test_every_simulated_registration_takes_the_compiled_path() -> None:
    simulation = simulate(SimulationConfig(workers=300, months=4, seed=11))
    registrations = [
        m.value for m in simulation.messages() if isinstance(m.value, WorkerRegistration)
    ]
    assert len(registrations) >= 300
    for registration in registrations:
        value = encode_registration(worker_registration_to_avro(registration))
        assert registration_agrees(value, registration.uan.encode()) == registration


def test_what_the_general_path_must_decide_about_a_registration_is_left_to_it() -> None:
    datum = worker_registration_to_avro(REGISTRATION)
    key = REGISTRATION.uan.encode()
    home = datum["permanent_address"]
    cases: dict[str, tuple[bytes | None, bytes | None]] = {
        "aadhaar in member_ref": (encode_registration({**datum, "member_ref": NUMBER}), key),
        "aadhaar in occupation": (
            encode_registration(
                {**datum, "occupation_nco": f"{NUMBER[:4]} {NUMBER[4:8]} {NUMBER[8:]}"}
            ),
            key,
        ),
        "uan of 11 digits": (encode_registration({**datum, "uan": "10000000009"}), b"10000000009"),
        "another key": (encode_registration(datum), b"100000000001"),
        "no key": (encode_registration(datum), None),
        "tombstone": (None, key),
        "unknown state": (
            encode_registration({**datum, "present_address": {**home, "state_lgd": 99}}),
            key,
        ),
        "district 0": (
            encode_registration({**datum, "permanent_address": {**home, "district_lgd": 0}}),
            key,
        ),
        "control character": (encode_registration({**datum, "occupation_nco": "93\n13"}), key),
        "blank member_ref": (encode_registration({**datum, "member_ref": " "}), key),
        "trailing byte": (encode_registration(datum) + b"\x00", key),
        "collection header": (
            encode(ration_collection_to_avro(COLLECTION))[:10] + encode_registration(datum)[10:],
            key,
        ),
    }
    read = compiled_registration()
    for name, (value, message_key) in cases.items():
        assert read(value, message_key) is None, name
    boolean_at = len(encode_registration(datum)) - 1 - len(zigzag(epoch_millis(REGISTRATION)))
    broken = bytearray(encode_registration(datum))
    assert broken[boolean_at] in (0, 1)
    broken[boolean_at] = 2  # a boolean byte other than 0 or 1
    assert read(bytes(broken), key) is None


def epoch_millis(registration: WorkerRegistration) -> int:
    return (registration.updated_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


# --- the word-at-a-time checks, the timestamps and the caches -------------------------------


def with_text(field: str, text: str) -> tuple[bytes, int]:
    """The record with ``text`` in ``field`` (fps_id, or an item's scheme: the record's last
    bytes), and where the text starts in it."""
    datum = ration_collection_to_avro(COLLECTION)
    if field == "scheme":
        datum["items"] = [{"commodity": "R", "scheme": text, "quantity_grams": 1}]
    else:
        datum[field] = text
    value = encode(datum)
    return value, value.rindex(text.encode())


@pytest.mark.parametrize("field", ["fps_id", "scheme"])
def test_each_byte_anywhere_in_a_string_is_checked(field: str) -> None:
    """Printable ASCII (0x20-0x7e) is read; any other byte leaves the record to the general
    path, at any place in strings of any length (eight bytes are checked at once)."""
    read = compiled()
    key = COLLECTION.member_ref.encode()
    for length in range(1, 26):
        value, at = with_text(field, "Q" * length)
        for position in range(length):
            patched = bytearray(value)
            for byte in range(256):
                patched[at + position] = byte
                made = read(bytes(patched), key)
                if 0x20 <= byte <= 0x7E:
                    assert made is not None
                    text = made.fps_id if field == "fps_id" else made.items[0].scheme
                    assert text == "Q" * position + chr(byte) + "Q" * (length - position - 1)
                else:
                    assert made is None, (length, position, byte)


NUMBER_SHAPE = re.compile(r"\d{12}|\d{4}[ -]\d{4}[ -]\d{4}")


@settings(max_examples=3_000, deadline=None, database=None)
@given(
    text=st.text(st.sampled_from("0123456789 -A"), min_size=1, max_size=80).filter(
        lambda text: not text.isspace()
    ),
    field=st.sampled_from(["fps_id", "scheme"]),
)
def test_number_shapes_are_found_wherever_they_are(text: str, field: str) -> None:
    value, _ = with_text(field, text)
    made = compiled()(value, COLLECTION.member_ref.encode())
    assert (made is None) == bool(NUMBER_SHAPE.search(text))


def test_timestamps_of_any_day_convert_as_fastavro_converts_them() -> None:
    rng = random.Random(5)
    key = COLLECTION.member_ref.encode()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    edges = [0, 1, 86_399_999, 86_400_000, (1 << 42) - 1]
    edges += [
        (datetime(year, month, day, tzinfo=UTC) - epoch) // timedelta(milliseconds=1) + delta
        for year in (1972, 2000, 2024, 2100)
        for month, day in ((1, 1), (2, 28), (3, 1), (12, 31))
        for delta in (-1, 0, 1)
    ]
    for millis in edges + [rng.randrange(1 << 42) for _ in range(3_000)]:
        instant = epoch + timedelta(milliseconds=millis)
        value = encode({**ration_collection_to_avro(COLLECTION), "transacted_at": instant})
        made = compiled()(value, key)
        assert made is not None
        assert made.transacted_at == instant
        assert type(made.transacted_at) is datetime
        assert made.transacted_at.tzinfo is UTC


def test_thousands_of_distinct_parts_are_cached_and_shared() -> None:
    """More locations and item lists than a cache first holds: each read as the general path
    reads it, and equal ones shared."""
    read = compiled()
    key = COLLECTION.member_ref.encode()
    datum = ration_collection_to_avro(COLLECTION)
    values = [
        encode(
            {
                **datum,
                "fps_location": {**datum["fps_location"], "district_lgd": 1 + i},
                "items": [{"commodity": "RICE", "scheme": "NFSA", "quantity_grams": i}],
            }
        )
        for i in range(3_000)
    ]
    first = [read(value, key) for value in values]
    again = [read(value, key) for value in values]
    for i, (one, other) in enumerate(zip(first, again, strict=True)):
        assert one is not None
        assert other is not None
        assert one.fps_location is other.fps_location
        assert one.items is other.items
        assert one.fps_location.district_lgd == 1 + i
        assert one.items[0].quantity_grams == i
    for i in range(0, 3_000, 97):
        assert first[i] == general(values[i], key)
