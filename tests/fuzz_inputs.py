"""Hostile input for the intake: what a broken or malicious producer can put on an input topic.

``fuzz_message(rng, codec, names)`` draws one message of a random kind (every kind is a
function of a ``random.Random``, so hypothesis drives it through ``st.randoms()`` and the
integration test through a seeded generator):

- random bytes; a known single-object header or a Confluent header followed by random bytes;
- a valid record cut short; a valid record with random bytes overwritten;
- a record of another schema of the contract (LocationChanged on the collections topic...);
- a record whose fields break the contract, written with a *wider* copy of its schema (the same
  fingerprint in the header): ``int`` fields as ``long`` (codes past 32 bits), enums with
  symbols the contract does not have, timestamps as raw longs; with out-of-range months and
  codes, negative quantities, huge item arrays, NUL characters, Aadhaar-like numbers, empty
  strings;
- an array whose block claims 2**60 items, a string whose length runs past the end.

Keys are mostly the right ones (the record's member_ref or uan), so that the record gets past
the key check to the content checks; sometimes random.
"""

from __future__ import annotations

import copy
import io
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_writer

from eshram_locator.avro_codec import AvroCodec
from eshram_locator.domain.aadhaar import verhoeff_check_digit
from eshram_locator.domain.model import (
    AddressUpdateRequested,
    AuthMode,
    CollectionItem,
    Location,
    LocationChanged,
    MigrationFlow,
    Portability,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.intake import RawMessage
from eshram_locator.records import to_avro
from eshram_locator.topics import TopicNames

AVRO_DIR = Path(__file__).resolve().parents[1] / "avro"
UNKNOWN_SYMBOLS = ("BIOMETRIC_V2", "ZZZ")

HOME = Location(9, 901, 90101, None, "221001")
COLLECTION = RationCollection(
    transaction_id="T-1",
    source="IM-PDS",
    ration_card_id="UP-1234",
    member_ref="MR-FUZZ-1",
    auth_mode=AuthMode.FINGERPRINT,
    fps_id="FPS-901",
    fps_location=HOME,
    card_state_lgd=9,
    portability=Portability.NONE,
    allocation_month="2025-04",
    transacted_at=datetime(2025, 4, 10, 6, tzinfo=UTC),
    items=(CollectionItem("RICE", "NFSA", 5000),),
)
REGISTRATION = WorkerRegistration(
    uan="100000000009",
    member_ref="MR-FUZZ-1",
    permanent_address=HOME,
    present_address=None,
    occupation_nco="9313",
    consent_state_sharing=True,
    sms_reachable=True,
    updated_at=COLLECTION.transacted_at,
)
OTHER_RECORDS: list[Any] = []  # filled lazily from the unit samples (see _other_records)


def _widen(schema: Any) -> Any:
    """int -> long, enums with extra symbols, logical types dropped: the same wire format for
    every value the contract allows, and more."""
    if isinstance(schema, list):
        return [_widen(branch) for branch in schema]
    if isinstance(schema, str):
        return "long" if schema == "int" else schema
    if isinstance(schema, dict):
        kind = schema.get("type")
        widened = {k: v for k, v in schema.items() if k != "logicalType"}
        if kind == "enum":
            widened["symbols"] = [*schema["symbols"], *UNKNOWN_SYMBOLS]
        elif kind == "record":
            widened["fields"] = [
                {**field, "type": _widen(field["type"])} for field in schema["fields"]
            ]
        elif kind == "array":
            widened["items"] = _widen(schema["items"])
        elif kind == "map":
            widened["values"] = _widen(schema["values"])
        elif kind in ("int", "long"):
            widened["type"] = "long"
        return widened
    return schema


_WIDE: dict[str, Any] = {}


def _wide_schema(name: str) -> Any:
    if name not in _WIDE:
        schema = json.loads((AVRO_DIR / f"{name}.avsc").read_text())
        _WIDE[name] = parse_schema(_widen(schema))
    return _WIDE[name]


def _aadhaar_like(rng: random.Random) -> str:
    payload = str(rng.randint(2, 9)) + f"{rng.randrange(10**10):010d}"
    return payload + verhoeff_check_digit(payload)


def _text(rng: random.Random) -> str:
    kind = rng.randrange(9)
    if kind == 0:
        return ""
    if kind == 1:
        return "A\x00B"
    if kind == 2:
        return _aadhaar_like(rng)
    if kind == 3:
        return "x" * rng.randint(1000, 20_000)
    if kind == 4:
        return "".join(chr(rng.randint(1, 0xD7FF)) for _ in range(rng.randint(1, 30)))
    if kind == 5:
        return " \t "
    return f"T-{rng.randrange(10**9)}"


def _month(rng: random.Random) -> str:
    return rng.choice(
        [
            "2025-13",
            "2025-00",
            "1999-12",
            "2100-01",
            "2025-4",
            "abcd-ef",
            "",
            "\uff12\uff10\uff12\uff15-\uff10\uff14",  # full-width digits
            "2025-04\x00",
            f"{rng.randint(1990, 2110)}-{rng.randint(0, 14):02d}",
            "2025-05",
        ]
    )


def _code(rng: random.Random) -> int:
    return rng.choice(
        [
            0,
            -1,
            9,
            27,
            99,
            100,
            2**31 - 1,
            2**31,
            -(2**31) - 1,
            2**40,
            -(2**62),
            rng.randint(-9, 40),
        ]
    )


def _location(rng: random.Random) -> dict[str, Any]:
    return {
        "state_lgd": _code(rng) if rng.random() < 0.5 else 9,
        "district_lgd": _code(rng) if rng.random() < 0.5 else 901,
        "subdistrict_lgd": rng.choice([None, _code(rng)]),
        "village_town_lgd": rng.choice([None, _code(rng)]),
        "pincode": rng.choice([None, _text(rng)]),
    }


def _symbol(rng: random.Random, symbols: list[str]) -> str:
    return rng.choice([*symbols, *UNKNOWN_SYMBOLS])


def mutated_collection(rng: random.Random) -> tuple[bytes, str]:
    """(value, member_ref) of a collection with some fields broken."""
    datum = copy.deepcopy(to_avro(COLLECTION)[1])
    datum["transacted_at"] = int(COLLECTION.transacted_at.timestamp() * 1000)
    for _ in range(rng.randint(1, 4)):
        field = rng.choice(
            [
                "transaction_id",
                "source",
                "ration_card_id",
                "member_ref",
                "fps_id",
                "auth_mode",
                "portability",
                "allocation_month",
                "card_state_lgd",
                "fps_location",
                "transacted_at",
                "items",
            ]
        )
        if field == "auth_mode":
            datum[field] = _symbol(rng, [m.value for m in AuthMode])
        elif field == "portability":
            datum[field] = _symbol(rng, [p.value for p in Portability])
        elif field == "allocation_month":
            datum[field] = _month(rng)
        elif field == "card_state_lgd":
            datum[field] = _code(rng)
        elif field == "fps_location":
            datum[field] = _location(rng)
        elif field == "transacted_at":
            datum[field] = rng.choice(
                [0, -1, -(2**62), 2**62, 253_402_300_800_000, -62_135_596_800_001]
            )
        elif field == "items":
            count = rng.choice([0, 1, 2, 100, 101, rng.randint(102, 3000)])
            datum[field] = [
                {
                    "commodity": rng.choice(["RICE", "", "A\x00B", _aadhaar_like(rng), "WHEAT"]),
                    "scheme": "NFSA",
                    "quantity_grams": rng.choice([-1, 0, 5000, -(2**40), 2**33]),
                }
                for _ in range(count)
            ]
        else:
            datum[field] = _text(rng)
    return encode_wide_cached(datum, "RationCollection"), datum["member_ref"]


def mutated_registration(rng: random.Random) -> tuple[bytes, str]:
    """(value, uan) of a registration with some fields broken."""
    datum = copy.deepcopy(to_avro(REGISTRATION)[1])
    datum["updated_at"] = int(REGISTRATION.updated_at.timestamp() * 1000)
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(
            [
                "uan",
                "member_ref",
                "permanent_address",
                "present_address",
                "occupation_nco",
                "updated_at",
            ]
        )
        if field == "uan":
            datum[field] = rng.choice(
                ["", "12345", "1000000000091", "10000000000x", _aadhaar_like(rng), "100000000009"]
            )
        elif field in ("permanent_address", "present_address"):
            datum[field] = _location(rng)
        elif field == "updated_at":
            datum[field] = rng.choice([0, -1, 2**62, -(2**62)])
        else:
            datum[field] = _text(rng)
    return encode_wide_cached(datum, "WorkerRegistration"), datum["uan"]


_HEADERS: dict[str, bytes] = {}  # the contract schema's single-object header, by record


def encode_wide_cached(datum: dict[str, Any], name: str) -> bytes:
    """``datum`` written with the wide schema behind the contract schema's header."""
    body = io.BytesIO()
    schemaless_writer(body, _wide_schema(name), datum)
    return _HEADERS[name] + body.getvalue()


def _valid(codec: AvroCodec, rng: random.Random) -> tuple[str, bytes, str]:
    """(record name, value, key) of a valid collection or registration."""
    if rng.random() < 0.5:
        return (
            "RationCollection",
            codec.encode("RationCollection", to_avro(COLLECTION)[1]),
            COLLECTION.member_ref,
        )
    return (
        "WorkerRegistration",
        codec.encode("WorkerRegistration", to_avro(REGISTRATION)[1]),
        REGISTRATION.uan,
    )


def _varint(value: int) -> bytes:
    value = (value << 1) ^ (value >> 63)  # zigzag
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def fuzz_message(
    rng: random.Random, codec: AvroCodec, names: TopicNames, offset: int = 0
) -> RawMessage:
    """One hostile message for one of the two input topics."""
    if not _HEADERS:
        for name, record in (
            ("RationCollection", COLLECTION),
            ("WorkerRegistration", REGISTRATION),
        ):
            _HEADERS[name] = codec.encode(name, to_avro(record)[1])[:10]
    collections = rng.random() < 0.6
    topic = names.collections if collections else names.registry
    key: bytes | None = (COLLECTION.member_ref if collections else REGISTRATION.uan).encode()
    kind = rng.randrange(10)
    value: bytes | None
    if kind == 0:
        value = rng.randbytes(rng.randint(0, 300))
    elif kind == 1:
        header = rng.choice([*list(_HEADERS.values()), b"\xc3\x01" + rng.randbytes(8)])
        value = header + rng.randbytes(rng.randint(0, 200))
    elif kind == 2:
        value = b"\x00" + rng.randbytes(4) + rng.randbytes(rng.randint(0, 100))
    elif kind == 3:
        _, valid, key_text = _valid(codec, rng)
        value = valid[: rng.randint(0, len(valid) - 1)]
        key = key_text.encode()
    elif kind == 4:
        _, valid, key_text = _valid(codec, rng)
        flipped = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            flipped[rng.randrange(10, len(flipped))] = rng.randrange(256)
        value = bytes(flipped)
        key = key_text.encode()
    elif kind == 5:
        value = codec.encode(*to_avro(rng.choice(other_records())))
    elif kind == 6:
        # An items array whose block claims 2**60 entries, or a string running past the end.
        body = codec.encode("RationCollection", {**to_avro(COLLECTION)[1], "items": []})
        value = body[:-1] + rng.choice(
            [_varint(2**60), _varint(-(2**60)) + _varint(8), _varint(10**6)]
        )
        topic, key = names.collections, COLLECTION.member_ref.encode()
    else:
        if collections:
            value, key_text = mutated_collection(rng)
        else:
            value, key_text = mutated_registration(rng)
        key = key_text.encode("utf-8", errors="surrogatepass")
    if rng.random() < 0.05:
        key = rng.choice([None, b"", rng.randbytes(rng.randint(1, 30))])
    if key is None and topic == names.registry:
        key = b""  # a compacted topic refuses a null key (the broker fails the whole batch)
    if rng.random() < 0.02 and topic == names.registry:
        value = None  # a tombstone, maybe with a bad key
    headers: tuple[tuple[str, bytes], ...] = ()
    if rng.random() < 0.1:
        headers = (
            ("trace", rng.randbytes(rng.randint(0, 20))),
            ("aadhaar", _aadhaar_like(rng).encode()),
        )
    return RawMessage(topic, rng.randrange(3), offset, key, value, headers)


def other_records() -> list[Any]:
    """A record of each output schema of the contract."""
    if not OTHER_RECORDS:
        from tests.unit.test_records import CHANGE, FLOW, REQUEST

        OTHER_RECORDS.extend([CHANGE, REQUEST, FLOW])
    assert all(
        isinstance(r, LocationChanged | AddressUpdateRequested | MigrationFlow)
        for r in OTHER_RECORDS
    )
    return OTHER_RECORDS
