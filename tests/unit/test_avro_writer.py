"""avro_writer.py: the writers generated from a schema write fastavro's bytes, and refuse bad
data. fastavro is the reference: every record of the contract, with data drawn from its schema."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from eshram_locator.avro_codec import SchemaCatalog
from eshram_locator.avro_writer import Writer, compile_writer

AVRO_DIR = Path(__file__).resolve().parents[2] / "avro"
CATALOG = SchemaCatalog.load(AVRO_DIR)
RECORDS = CATALOG.record_names()

_INT = st.integers(-(2**31), 2**31 - 1)
_LONG = st.integers(-(2**63), 2**63 - 1)
_MILLIS = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda at: at - timedelta(microseconds=at.microsecond % 1000))


def _data(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Valid data for a schema in fastavro's parsed form."""
    if isinstance(schema, str):
        if schema in named:
            return _data(named[schema], named)
        return {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": _INT,
            "long": _LONG,
            "float": st.floats(width=32, allow_nan=False),
            "double": st.floats() | _INT,
            "bytes": st.binary(max_size=40),
            "string": st.text(max_size=40),
        }[schema]
    if isinstance(schema, list):
        return st.one_of([_data(branch, named) for branch in schema])
    logical = schema.get("logicalType")
    if logical == "uuid":
        return st.uuids().map(str) | st.uuids()
    if logical == "timestamp-millis":
        return _MILLIS | st.integers(0, 2**42)
    kind = schema["type"]
    if kind == "record":
        return st.fixed_dictionaries(
            {field["name"]: _data(field["type"], named) for field in schema["fields"]}
        )
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(_data(schema["items"], named), max_size=4)
    return _data(kind, named)


def _fastavro(parsed: dict[str, Any], datum: Any) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, parsed, datum)
    return out.getvalue()


def _written(write: Writer, datum: Any) -> bytes:
    out = bytearray()
    write(datum, out)
    return bytes(out)


@pytest.mark.parametrize("record", RECORDS)
def test_every_record_of_the_contract_has_a_writer(record: str) -> None:
    assert compile_writer(CATALOG.current(record).parsed) is not None


@pytest.mark.parametrize("record", RECORDS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_the_writer_writes_fastavros_bytes(record: str, data: st.DataObject) -> None:
    parsed = CATALOG.current(record).parsed
    write = compile_writer(parsed)
    assert write is not None
    datum = data.draw(_data(parsed, parsed["__named_schemas"]))
    body = _written(write, datum)
    assert body == _fastavro(parsed, datum)
    assert schemaless_reader(io.BytesIO(body), parsed, parsed) is not None


# Every type the generator handles, in both union orders, nested: beyond what the contract uses.
_EVERY_TYPE = parse_schema(
    {
        "type": "record",
        "name": "t.Every",
        "fields": [
            {"name": "n", "type": "null"},
            {"name": "b", "type": "boolean"},
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "y", "type": "bytes"},
            {"name": "s", "type": "string"},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
            {"name": "ol", "type": ["long", "null"]},
            {
                "name": "nested",
                "type": {"type": "array", "items": {"type": "array", "items": "int"}},
            },
            {
                "name": "inner",
                "type": [
                    "null",
                    {"type": "record", "name": "Inner", "fields": [{"name": "e", "type": "E"}]},
                ],
                "default": None,
            },
            {"name": "inners", "type": {"type": "array", "items": "Inner"}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "unknown_logical", "type": {"type": "int", "logicalType": "no-such-type"}},
        ],
    }
)


#: A valid datum of ``_EVERY_TYPE`` ("inner" left out: it defaults to null).
_SMALLEST: dict[str, Any] = {
    "n": None, "b": True, "i": 0, "l": 0, "f": 0.0, "d": 0.0, "y": b"", "s": "",
    "e": "A", "ol": None, "nested": [], "inners": [], "at": 0, "unknown_logical": 0,
}  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_handled_type_is_written_as_fastavro_writes_it(data: st.DataObject) -> None:
    write = compile_writer(_EVERY_TYPE)
    assert write is not None
    datum = data.draw(_data(_EVERY_TYPE, _EVERY_TYPE["__named_schemas"]))
    assert _written(write, datum) == _fastavro(_EVERY_TYPE, datum)


def test_the_numbers_at_their_limits() -> None:
    write = compile_writer(_EVERY_TYPE)
    assert write is not None
    for change in (
        {"i": 2**31 - 1, "l": 2**63 - 1},
        {"i": -(2**31), "l": -(2**63)},
        {"i": 63, "l": 64},
        {"i": -64, "l": -65},
        {"d": math.inf, "f": -math.inf},
        {"d": math.nan},  # the same bytes, though NaN equals nothing
        {"d": 7, "ol": 2**40},
        {"s": "प्रवासी श्रमिक", "y": bytes(range(256))},
    ):
        datum = _SMALLEST | change
        assert _written(write, datum) == _fastavro(_EVERY_TYPE, datum)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"i": 2**31}, OverflowError),
        ({"i": -(2**31) - 1}, OverflowError),
        ({"l": 2**63}, OverflowError),
        ({"i": "9"}, TypeError),
        ({"i": True}, TypeError),  # a bool is not taken for a number
        ({"d": "0.5"}, TypeError),
        ({"b": 1}, TypeError),
        ({"s": b"bytes"}, TypeError),
        ({"s": "\ud800"}, UnicodeEncodeError),
        ({"y": "text"}, TypeError),
        ({"e": "D"}, KeyError),
        ({"n": 0}, TypeError),
        ({"ol": "1"}, TypeError),
        ({"nested": "12"}, TypeError),
        ({"nested": [[1, "2"]]}, TypeError),
        ({"inner": {"e": "Z"}}, KeyError),
        ({"inner": "A"}, TypeError),
        ({"inners": [{}]}, KeyError),
    ],
)
def test_bad_data_raises(change: dict[str, Any], error: type[Exception]) -> None:
    write = compile_writer(_EVERY_TYPE)
    assert write is not None
    with pytest.raises(error):
        write(_SMALLEST | change, bytearray())


def test_a_missing_field_raises_unless_it_defaults_to_null() -> None:
    write = compile_writer(_EVERY_TYPE)
    assert write is not None
    datum = dict(_SMALLEST)
    assert _written(write, datum) == _fastavro(_EVERY_TYPE, datum)  # "inner" defaults to null
    del datum["s"]
    with pytest.raises(KeyError):
        write(datum, bytearray())


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "map", "values": "int"},
        ["null", "int", "string"],
        ["int", "string"],
        {"type": "fixed", "name": "F", "size": 4},
    ],
)
def test_what_it_does_not_handle_is_left_to_fastavro(field_type: Any) -> None:
    parsed = parse_schema(
        {"type": "record", "name": "U", "fields": [{"name": "x", "type": field_type}]}
    )
    assert compile_writer(parsed) is None


def test_a_default_other_than_null_is_left_to_fastavro() -> None:
    parsed = parse_schema(
        {"type": "record", "name": "D", "fields": [{"name": "x", "type": "int", "default": 3}]}
    )
    assert compile_writer(parsed) is None
