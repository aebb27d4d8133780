"""avro_codec.py and the .avsc contract: canonical form, fingerprints, catalog, codec, registry."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import socket
import threading
import types
import typing
from collections.abc import Iterator
from datetime import datetime
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fastavro.schema import to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st

from eshram_locator import records
from eshram_locator.avro_codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    SchemaCatalog,
    SchemaRegistryClient,
    SchemaRegistryError,
    canonical_form,
    fingerprint,
    fingerprint_from_hex,
    fingerprint_hex,
    schema_topic_records,
)
from eshram_locator.domain import model
from eshram_locator.errors import (
    ConfigError,
    DecodeError,
    RetriableError,
    TruncatedRecordError,
    UnknownSchemaError,
    ValidationError,
    WrongMagicError,
)
from tests.unit.test_records import CHANGE, COLLECTION, REGISTRATION, SAMPLES

REPO = Path(__file__).resolve().parents[2]
AVRO_DIR = REPO / "avro"
VECTORS_FILE = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "avro-schema-tests.txt"
RECORDS = [
    "AddressUpdateRequested",
    "LocationChanged",
    "MigrationFlow",
    "RationCollection",
    "WorkerRegistration",
]
NAMED_TYPES = {
    "Location",
    "CollectionItem",
    "Evidence",
    "AuthMode",
    "Portability",
    "ChangeType",
    "Migration",
}

CATALOG = SchemaCatalog.load(AVRO_DIR)
CODEC = AvroCodec(CATALOG)


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((AVRO_DIR / f"{name}.avsc").read_text(encoding="utf-8"))
    return schema


def _payload(record: Any = COLLECTION, codec: AvroCodec = CODEC) -> bytes:
    return codec.encode(*records.to_avro(record))


# --- Avro's canonical form and fingerprint vectors ------------------------------------------


def _load_vectors() -> list[Any]:
    if not VECTORS_FILE.is_file():
        return [
            pytest.param(
                None,
                marks=pytest.mark.skip(
                    reason=f"Avro test vectors not found at {VECTORS_FILE} (../shared/testdata)"
                ),
            )
        ]
    vectors: list[Any] = []
    lines = VECTORS_FILE.read_text(encoding="utf-8").splitlines()
    number = "?"
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("// ") and line[3:].strip().isdigit():
            number = line[3:].strip()
        elif line.startswith("<<INPUT"):
            rest = line[len("<<INPUT") :].strip()
            if not rest or rest.startswith("<<"):  # multi-line input, up to the terminator line
                terminator = rest[2:] or "INPUT"
                body = []
                index += 1
                while lines[index].strip() != terminator:
                    body.append(lines[index])
                    index += 1
                rest = "\n".join(body)
            vectors.append({"id": number, "input": rest})
        elif line.startswith("<<canonical"):
            vectors[-1]["canonical"] = line[len("<<canonical") :].strip()
        elif line.startswith("<<fingerprint"):
            vectors[-1]["fingerprint"] = int(line[len("<<fingerprint") :].strip())
        index += 1
    return [pytest.param(vector, id=vector["id"]) for vector in vectors]


VECTORS = _load_vectors()
FINGERPRINT_VECTORS = [v for v in VECTORS if v.values[0] is None or "fingerprint" in v.values[0]]


def test_vectors_file_parsed() -> None:
    if not VECTORS_FILE.is_file():
        pytest.skip(f"Avro test vectors not found at {VECTORS_FILE}")
    assert len(VECTORS) == 34
    assert len(FINGERPRINT_VECTORS) == 26


@pytest.mark.parametrize("vector", VECTORS)
def test_canonical_form_vector(vector: dict[str, Any]) -> None:
    assert canonical_form(vector["input"]) == vector["canonical"]


@pytest.mark.parametrize("vector", FINGERPRINT_VECTORS)
def test_fingerprint_vector(vector: dict[str, Any]) -> None:
    assert fingerprint(vector["input"]) == vector["fingerprint"]
    assert fingerprint(vector["canonical"]) == vector["fingerprint"]
    assert _crc64_avro(vector["canonical"].encode()) == vector["fingerprint"]


def _crc64_avro(data: bytes) -> int:
    """The Avro spec's reference algorithm, to cross-check the fingerprint of our own schemas."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp - (1 << 64) if fp >= 1 << 63 else fp


@pytest.mark.parametrize("name", RECORDS)
def test_our_schemas_canonical_form_and_fingerprint(name: str) -> None:
    schema = _schema(name)
    canonical = canonical_form(schema)
    assert canonical == to_parsing_canonical_form(schema)  # fastavro agrees on our schemas
    assert canonical == canonical_form(json.dumps(schema, indent=4))
    assert "doc" not in canonical
    assert "logicalType" not in canonical
    assert "default" not in canonical
    assert json.loads(canonical)["name"] == f"in.gov.eshram.locator.v1.{name}"
    assert (
        fingerprint(schema) == _crc64_avro(canonical.encode()) == CATALOG.current(name).fingerprint
    )


def test_fingerprint_hex_round_trip() -> None:
    for value in (0, 1, -1, 2**63 - 1, -(2**63), CATALOG.current("RationCollection").fingerprint):
        text = fingerprint_hex(value)
        assert len(text) == 16
        assert text == text.lower()
        assert fingerprint_from_hex(text) == value
    assert fingerprint_hex(-1) == "ffffffffffffffff"
    with pytest.raises(ValueError, match="16 hex digits"):
        fingerprint_from_hex("abc")


def test_canonical_form_rejects_non_schemas() -> None:
    with pytest.raises(ValueError, match="not an Avro schema"):
        canonical_form({"type": "record", "name": "x"})  # no fields
    with pytest.raises(ValueError, match="not an Avro schema"):
        canonical_form("42")


# --- the .avsc files ------------------------------------------------------------------------


def _walk_named(schema: Any, namespace: str, out: list[tuple[str, dict[str, Any]]]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _walk_named(branch, namespace, out)
    elif isinstance(schema, dict):
        kind = schema["type"]
        if kind in ("record", "enum", "fixed"):
            name = schema["name"]
            ns = schema.get("namespace", namespace)
            full = name if "." in name else f"{ns}.{name}"
            out.append((full, schema))
            for field in schema.get("fields", []):
                _walk_named(field["type"], full.rpartition(".")[0], out)
        elif kind == "array":
            _walk_named(schema["items"], namespace, out)
        elif kind == "map":
            _walk_named(schema["values"], namespace, out)


def _definitions() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Full name -> [(file, definition)] over every .avsc file (current and history)."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for path in sorted(AVRO_DIR.rglob("*.avsc")):
        named: list[tuple[str, dict[str, Any]]] = []
        _walk_named(json.loads(path.read_text(encoding="utf-8")), "", named)
        names = [full for full, _ in named]
        assert len(names) == len(set(names)), f"{path.name} defines a named type twice"
        for full, definition in named:
            found.setdefault(full, []).append((path.name, definition))
    return found


def test_one_file_per_record() -> None:
    assert sorted(p.stem for p in AVRO_DIR.glob("*.avsc")) == RECORDS
    assert CATALOG.record_names() == RECORDS
    assert (AVRO_DIR / "README.md").is_file()


def test_shared_named_types_are_identical_in_every_file() -> None:
    definitions = _definitions()
    shared = {full.rpartition(".")[2] for full in definitions} - set(RECORDS)
    assert shared == NAMED_TYPES
    assert len(definitions["in.gov.eshram.locator.v1.Location"]) == 4
    for full, where in definitions.items():
        first_file, first = where[0]
        for file, definition in where[1:]:
            assert definition == first, f"{full} differs between {first_file} and {file}"


def test_every_record_enum_and_field_is_documented() -> None:
    for full, where in _definitions().items():
        for file, definition in where:
            assert definition.get("doc"), f"{full} in {file} has no doc"
            for field in definition.get("fields", []):
                assert field.get("doc"), f"{full}.{field['name']} in {file} has no doc"


def test_optional_fields_default_to_null() -> None:
    for full, where in _definitions().items():
        for _, definition in where:
            for field in definition.get("fields", []):
                if isinstance(field["type"], list):
                    assert field["type"][0] == "null", f"{full}.{field['name']}"
                    assert field.get("default", "missing") is None, f"{full}.{field['name']}"


def test_same_namespace_everywhere() -> None:
    assert all(full.startswith("in.gov.eshram.locator.v1.") for full in _definitions())


_MODEL_RECORDS: dict[str, type[Any]] = {
    "RationCollection": model.RationCollection,
    "WorkerRegistration": model.WorkerRegistration,
    "LocationChanged": model.LocationChanged,
    "AddressUpdateRequested": model.AddressUpdateRequested,
    "MigrationFlow": model.MigrationFlow,
    "Location": model.Location,
    "CollectionItem": model.CollectionItem,
    "Evidence": model.Evidence,
}
_MODEL_ENUMS: dict[str, type[StrEnum]] = {
    "AuthMode": model.AuthMode,
    "Portability": model.Portability,
    "ChangeType": model.ChangeType,
    "Migration": model.Migration,
}


def _unwrap(avro_type: Any) -> tuple[Any, bool]:
    if isinstance(avro_type, list):
        rest = [branch for branch in avro_type if branch != "null"]
        assert len(rest) == 1
        return rest[0], True
    return avro_type, False


def test_model_fields_match_the_schemas_both_ways() -> None:
    definitions = {full.rpartition(".")[2]: where[0][1] for full, where in _definitions().items()}
    assert set(definitions) == set(_MODEL_RECORDS) | set(_MODEL_ENUMS)
    for name, cls in _MODEL_RECORDS.items():
        avro_fields = {field["name"]: field["type"] for field in definitions[name]["fields"]}
        model_fields = [field.name for field in dataclasses.fields(cls)]
        assert model_fields == list(avro_fields), f"{name}: model.py and {name} schema differ"
        hints = typing.get_type_hints(cls)
        for field_name, avro_type in avro_fields.items():
            hint = hints[field_name]
            inner, nullable = _unwrap(avro_type)
            model_nullable = isinstance(hint, types.UnionType) and type(None) in hint.__args__
            assert nullable == model_nullable, f"{name}.{field_name}: nullability differs"
            if hint is datetime:
                assert inner == {"type": "long", "logicalType": "timestamp-millis"}
    for name, enum in _MODEL_ENUMS.items():
        assert definitions[name]["symbols"] == [member.value for member in enum], name


def test_lgd_codes_are_ints_and_pincode_a_string() -> None:
    location = _definitions()["in.gov.eshram.locator.v1.Location"][0][1]
    types_by_field = {field["name"]: _unwrap(field["type"])[0] for field in location["fields"]}
    assert types_by_field == {
        "state_lgd": "int",
        "district_lgd": "int",
        "subdistrict_lgd": "int",
        "village_town_lgd": "int",
        "pincode": "string",
    }


# --- catalog --------------------------------------------------------------------------------


def test_catalog_loads_every_record_as_version_1() -> None:
    assert len(CATALOG) == len(RECORDS)
    for name in RECORDS:
        entry = CATALOG.current(name)
        assert entry.version == 1
        assert entry.record_name == name
        assert CATALOG.current(entry.full_name) is entry
        assert CATALOG.get(entry.fingerprint) is entry
        assert entry.fingerprint in CATALOG
    with pytest.raises(UnknownSchemaError):
        CATALOG.current("NoSuchRecord")


def test_schema_topic_records() -> None:
    published = schema_topic_records(CATALOG)
    assert len(published) == len(RECORDS)
    for key, value in published:
        assert len(key) == 16
        assert all(c in "0123456789abcdef" for c in key)
        assert fingerprint(value.decode()) == fingerprint_from_hex(key)
        assert CATALOG.get(fingerprint_from_hex(key)) is not None
        assert value.decode() == canonical_form(value.decode())


def _copy_contract(tmp_path: Path) -> Path:
    target = tmp_path / "avro"
    target.mkdir()
    for path in AVRO_DIR.glob("*.avsc"):
        shutil.copy(path, target / path.name)
    return target


def test_catalog_rejects_a_misnamed_file(tmp_path: Path) -> None:
    avro_dir = _copy_contract(tmp_path)
    (avro_dir / "Other.avsc").write_text(json.dumps(_schema("MigrationFlow")), encoding="utf-8")
    with pytest.raises(ConfigError, match="expected Other"):
        SchemaCatalog.load(avro_dir)


def test_catalog_rejects_bad_json_and_bad_schemas(tmp_path: Path) -> None:
    avro_dir = _copy_contract(tmp_path)
    (avro_dir / "MigrationFlow.avsc").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"MigrationFlow\.avsc"):
        SchemaCatalog.load(avro_dir)
    bad = _schema("MigrationFlow")
    bad["fields"][0]["type"] = "no.such.Type"
    (avro_dir / "MigrationFlow.avsc").write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"MigrationFlow\.avsc"):
        SchemaCatalog.load(avro_dir)


def test_catalog_rejects_orphan_or_misnamed_history(tmp_path: Path) -> None:
    avro_dir = _copy_contract(tmp_path)
    (avro_dir / "history").mkdir()
    (avro_dir / "history" / "Gone.1.avsc").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"no Gone\.avsc"):
        SchemaCatalog.load(avro_dir)
    (avro_dir / "history" / "Gone.1.avsc").unlink()
    (avro_dir / "history" / "MigrationFlow.avsc").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"<Record>\.<n>\.avsc"):
        SchemaCatalog.load(avro_dir)


def test_catalog_rejects_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no \.avsc"):
        SchemaCatalog.load(tmp_path)


def test_register_checks_the_topic_key() -> None:
    catalog = SchemaCatalog.load(AVRO_DIR)
    key, value = schema_topic_records(catalog)[0]
    assert catalog.register(value, expected_fingerprint=fingerprint_from_hex(key)).version == 1
    with pytest.raises(DecodeError, match="keyed as"):
        catalog.register(value, expected_fingerprint=fingerprint_from_hex(key) ^ 1)
    with pytest.raises(DecodeError, match="not JSON"):
        catalog.register(b"\xff{")
    with pytest.raises(DecodeError, match="not an Avro"):
        catalog.register(b'{"type": "record", "name": "X"}')
    with pytest.raises(DecodeError):
        catalog.register(b'"int"')  # a schema, but not a record


# --- evolution ------------------------------------------------------------------------------


def _v2_collection_schema(*, extra_symbol: str | None = None) -> dict[str, Any]:
    schema = _schema("RationCollection")
    schema["fields"].append(
        {
            "name": "channel",
            "type": "string",
            "default": "EPOS",
            "doc": "How the transaction was captured (added in v2).",
        }
    )
    schema["fields"].append(
        {
            "name": "remarks",
            "type": ["null", "string"],
            "default": None,
            "doc": "Free text (v2).",
        }
    )
    if extra_symbol is not None:
        auth = next(f for f in schema["fields"] if f["name"] == "auth_mode")["type"]
        auth["symbols"].append(extra_symbol)
    return schema


def _v2_catalog(schema: dict[str, Any]) -> SchemaCatalog:
    catalog = SchemaCatalog.load(AVRO_DIR)
    catalog.add(schema, version=2, current=True, source="test v2")
    return catalog


def test_newer_writer_is_read_by_the_current_reader() -> None:
    v2 = _v2_catalog(_v2_collection_schema())
    datum = records.ration_collection_to_avro(COLLECTION) | {"channel": "SCO", "remarks": "x"}
    payload = AvroCodec(v2).encode("RationCollection", datum)

    v1 = SchemaCatalog.load(AVRO_DIR)
    v1_codec = AvroCodec(v1)
    with pytest.raises(UnknownSchemaError, match="not known"):
        v1_codec.decode(payload)
    # Learn v2 as a consumer of locator.schemas would: canonical form, no logical types.
    for key, value in schema_topic_records(v2):
        v1.register(value, expected_fingerprint=fingerprint_from_hex(key))
    _name, decoded = v1_codec.decode(payload, expected_record="RationCollection")
    assert "channel" not in decoded
    assert "remarks" not in decoded
    assert records.ration_collection_from_avro(decoded) == COLLECTION  # datetime, not millis


def test_older_writer_is_read_by_a_newer_reader_with_defaults() -> None:
    payload = _payload(COLLECTION)
    v2_codec = AvroCodec(_v2_catalog(_v2_collection_schema()))
    _name, decoded = v2_codec.decode(payload, expected_record="RationCollection")
    assert decoded["channel"] == "EPOS"
    assert decoded["remarks"] is None
    assert decoded["transacted_at"] == COLLECTION.transacted_at


def test_unknown_enum_symbol_reads_as_the_enum_default() -> None:
    v2 = _v2_catalog(_v2_collection_schema(extra_symbol="PALM"))
    datum = records.ration_collection_to_avro(COLLECTION) | {"auth_mode": "PALM"}
    payload = AvroCodec(v2).encode("RationCollection", datum)
    v1 = SchemaCatalog.load(AVRO_DIR)
    v1.register(v2.current("RationCollection").canonical)
    _, decoded = AvroCodec(v1).decode(payload)
    assert records.ration_collection_from_avro(decoded).auth_mode is model.AuthMode.MANUAL


def test_history_layout(tmp_path: Path) -> None:
    avro_dir = _copy_contract(tmp_path)
    (avro_dir / "history").mkdir()
    shutil.move(
        avro_dir / "RationCollection.avsc", avro_dir / "history" / "RationCollection.1.avsc"
    )
    (avro_dir / "RationCollection.avsc").write_text(
        json.dumps(_v2_collection_schema(), indent=2), encoding="utf-8"
    )
    catalog = SchemaCatalog.load(avro_dir)
    versions = [e.version for e in catalog.entries() if e.record_name == "RationCollection"]
    assert versions == [1, 2]
    assert catalog.current("RationCollection").version == 2
    assert len(schema_topic_records(catalog)) == len(RECORDS) + 1
    codec = AvroCodec(catalog)
    _, old = codec.decode(_payload(COLLECTION))  # written by v1
    assert old["channel"] == "EPOS"
    new_payload = codec.encode(
        "RationCollection", records.ration_collection_to_avro(COLLECTION) | {"channel": "SCO"}
    )
    assert new_payload[2:10] == catalog.current("RationCollection").fingerprint.to_bytes(
        8, "little", signed=True
    )
    assert codec.decode(new_payload)[1]["channel"] == "SCO"


def test_changing_the_current_version_invalidates_the_codec_caches() -> None:
    catalog = SchemaCatalog.load(AVRO_DIR)
    codec = AvroCodec(catalog)
    payload = _payload(COLLECTION, codec)
    assert "channel" not in codec.decode(payload)[1]
    catalog.add(_v2_collection_schema(), version=2, current=True)
    assert codec.decode(payload)[1]["channel"] == "EPOS"
    assert codec.encode("RationCollection", codec.decode(payload)[1])[2:10] != payload[2:10]


# --- framing and errors ---------------------------------------------------------------------


def test_single_object_header() -> None:
    payload = _payload(COLLECTION)
    entry = CATALOG.current("RationCollection")
    assert payload[:2] == SINGLE_OBJECT_MAGIC
    assert int.from_bytes(payload[2:10], "little", signed=True) == entry.fingerprint


def test_wrong_magic() -> None:
    payload = _payload(COLLECTION)
    for bad in (b"\x01" + payload[1:], b"\xc3\x02" + payload[2:], b'{"json": true}'):
        with pytest.raises(WrongMagicError, match="neither"):
            CODEC.decode(bad)


def test_empty_payload() -> None:
    with pytest.raises(WrongMagicError, match="empty"):
        CODEC.decode(b"")


@pytest.mark.parametrize(
    "header", [b"\xc3", b"\xc3\x01", b"\xc3\x01\x00\x00\x00", b"\x00", b"\x00\x00\x00"]
)
def test_cut_header(header: bytes) -> None:
    with pytest.raises(TruncatedRecordError, match="header"):
        CODEC.decode(header)


def test_unknown_fingerprint() -> None:
    payload = _payload(COLLECTION)
    with pytest.raises(UnknownSchemaError, match=r"fingerprint [0-9a-f]{16} is not known"):
        CODEC.decode(payload[:2] + bytes(8) + payload[10:])


def test_every_cut_of_the_body_is_truncated() -> None:
    for record in SAMPLES:
        payload = _payload(record)
        for end in range(10, len(payload)):
            with pytest.raises(TruncatedRecordError):
                CODEC.decode(payload[:end])


def test_trailing_bytes() -> None:
    with pytest.raises(DecodeError, match="3 trailing bytes") as caught:
        CODEC.decode(_payload(COLLECTION) + b"\x00\x00\x00")
    assert type(caught.value) is DecodeError


def test_malformed_body() -> None:
    payload = bytearray(_payload(COLLECTION))
    start = payload.index(COLLECTION.transaction_id.encode())
    payload[start] = 0xFF  # invalid UTF-8 inside a string
    with pytest.raises(DecodeError, match="malformed RationCollection body") as caught:
        CODEC.decode(bytes(payload))
    assert type(caught.value) is DecodeError


def test_enum_index_out_of_range() -> None:
    header = _payload(CHANGE)[:10]
    # event_id, then change_type index 4 (of 3), then more bytes
    body = b"\x48" + CHANGE.event_id.encode() + b"\x08" + bytes(30)
    with pytest.raises(DecodeError, match="malformed LocationChanged"):
        CODEC.decode(header + body)


def test_expected_record() -> None:
    payload = _payload(REGISTRATION)
    with pytest.raises(
        DecodeError, match="expected a RationCollection record, got WorkerRegistration"
    ):
        CODEC.decode(payload, expected_record="RationCollection")
    assert CODEC.decode(payload, expected_record="WorkerRegistration")[0] == "WorkerRegistration"


def test_error_reasons_carry_no_payload_content() -> None:
    secret = "adv:SECRET-REF-0001"
    payload = _payload(dataclasses.replace(COLLECTION, member_ref=secret))
    cut = payload.index(secret.encode()) + 5
    broken = [payload[:cut], payload + b"\x00", payload.replace(b"SECRET", b"SE\xffRET")]
    for bad in broken:
        with pytest.raises(DecodeError) as caught:
            CODEC.decode(bad)
        assert "SECRET" not in str(caught.value)
        error = caught.value
        assert error.__cause__ is None
        assert error.__context__ is None or error.__suppress_context__


def test_confluent_framing_without_a_registry() -> None:
    with pytest.raises(UnknownSchemaError, match="no schema registry"):
        CODEC.decode(b"\x00\x00\x00\x00\x07\x02")


def test_encode_rejects_a_datum_that_does_not_fit() -> None:
    datum = records.ration_collection_to_avro(COLLECTION)
    with pytest.raises(ValidationError, match="does not match its schema"):
        CODEC.encode("RationCollection", datum | {"card_state_lgd": "nine"})
    del datum["fps_id"]
    with pytest.raises(ValidationError, match="does not match its schema"):
        CODEC.encode("RationCollection", datum)
    with pytest.raises(UnknownSchemaError):
        CODEC.encode("NoSuchRecord", {})


_PREFIXES = [b"", SINGLE_OBJECT_MAGIC, b"\x00", b"\x00\x00\x00\x00\x01"] + [
    SINGLE_OBJECT_MAGIC + entry.fingerprint.to_bytes(8, "little", signed=True)
    for entry in CATALOG.entries()
]


@settings(max_examples=3000, deadline=None)
@given(prefix=st.sampled_from(_PREFIXES), body=st.binary(max_size=400))
def test_random_bytes_raise_only_decode_errors(prefix: bytes, body: bytes) -> None:
    try:
        name, datum = CODEC.decode(prefix + body)
    except DecodeError:
        return
    assert name in RECORDS
    assert isinstance(datum, dict)


# --- Confluent Schema Registry --------------------------------------------------------------


class _FakeRegistry(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RegistryHandler)
        self.schemas: list[str] = []
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_with: int | None = None
        self.authorization: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RegistryHandler(BaseHTTPRequestHandler):
    server: _FakeRegistry
    CONTENT_TYPE: ClassVar[str] = "application/vnd.schemaregistry.v1+json"

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", self.CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.server.requests.append(("POST", self.path))
        self.server.authorization = self.headers.get("Authorization")
        parts = self.path.split("/")
        if self.server.fail_with:
            self._answer(self.server.fail_with, {"error_code": self.server.fail_with})
            return
        if len(parts) != 4 or parts[1] != "subjects" or parts[3] != "versions":
            self._answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
            return
        length = int(self.headers["Content-Length"])
        schema = json.loads(self.rfile.read(length))["schema"]
        json.loads(schema)  # the client sends the schema as a JSON string
        if schema not in self.server.schemas:
            self.server.schemas.append(schema)
        schema_id = self.server.schemas.index(schema) + 1
        self.server.subjects.setdefault(parts[2], []).append(schema_id)
        self._answer(200, {"id": schema_id})

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))
        if self.server.fail_with:
            self._answer(self.server.fail_with, {"error_code": self.server.fail_with})
            return
        prefix = "/schemas/ids/"
        if self.path.startswith(prefix) and self.path[len(prefix) :].isdigit():
            schema_id = int(self.path[len(prefix) :])
            if 1 <= schema_id <= len(self.server.schemas):
                self._answer(200, {"schema": self.server.schemas[schema_id - 1]})
                return
        self._answer(404, {"error_code": 40403, "message": "Schema not found"})

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def registry() -> Iterator[_FakeRegistry]:
    server = _FakeRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_confluent_round_trip(registry: _FakeRegistry) -> None:
    writer = AvroCodec(CATALOG, SchemaRegistryClient(registry.url))
    payloads = [writer.encode(*records.to_avro(r), topic="t.v1") for r in SAMPLES]
    assert all(p[:1] == CONFLUENT_MAGIC for p in payloads)
    assert set(registry.subjects) == {"t.v1-value"}
    assert len(registry.schemas) == len(RECORDS)
    # A fresh process: its client fetches the schemas by id (once each).
    reader = AvroCodec(SchemaCatalog.load(AVRO_DIR), SchemaRegistryClient(registry.url))
    for record, payload in zip(SAMPLES, payloads, strict=True):
        name, datum = reader.decode(payload)
        assert records.FROM_AVRO[name](datum) == record
        assert reader.decode(payload)[0] == name
    gets = [path for method, path in registry.requests if method == "GET"]
    assert sorted(gets) == sorted(
        {f"/schemas/ids/{int.from_bytes(p[1:5], 'big')}" for p in payloads}
    )
    # Single-object records are still read by a codec that writes Confluent framing.
    assert records.FROM_AVRO["RationCollection"](reader.decode(_payload())[1]) == COLLECTION


def test_registry_registration_is_cached(registry: _FakeRegistry) -> None:
    codec = AvroCodec(CATALOG, SchemaRegistryClient(registry.url))
    for _ in range(3):
        codec.encode(*records.to_avro(COLLECTION), topic="a")
    codec.encode(*records.to_avro(COLLECTION), topic="b")
    codec.encode(*records.to_avro(COLLECTION))  # no topic: the record's full name
    assert [path for _, path in registry.requests] == [
        "/subjects/a-value/versions",
        "/subjects/b-value/versions",
        "/subjects/in.gov.eshram.locator.v1.RationCollection/versions",
    ]
    assert registry.subjects["a-value"] == registry.subjects["b-value"] == [1]


def test_registry_unknown_id(registry: _FakeRegistry) -> None:
    codec = AvroCodec(CATALOG, SchemaRegistryClient(registry.url))
    with pytest.raises(UnknownSchemaError, match="does not know"):
        codec.decode(b"\x00\x00\x00\x00\x63" + b"\x00")


def test_registry_failures(registry: _FakeRegistry) -> None:
    client = SchemaRegistryClient(registry.url)
    registry.fail_with = 503
    with pytest.raises(RetriableError, match="HTTP 503"):
        client.get_schema(1)
    registry.fail_with = 409
    with pytest.raises(SchemaRegistryError, match="HTTP 409"):
        client.register("s-value", '"string"')


def test_registry_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    codec = AvroCodec(CATALOG, SchemaRegistryClient(f"http://127.0.0.1:{port}", timeout_s=2))
    with pytest.raises(RetriableError, match="unreachable"):
        codec.decode(b"\x00\x00\x00\x00\x01\x00")
    with pytest.raises(RetriableError, match="unreachable"):
        codec.encode(*records.to_avro(COLLECTION), topic="t")


@pytest.mark.parametrize(
    "url", ["ftp://registry:8081", "registry:8081", "file:///etc/passwd", "", "http://:8081"]
)
def test_registry_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigError, match="http"):
        SchemaRegistryClient(url)


def test_registry_basic_auth_from_the_url(registry: _FakeRegistry) -> None:
    port = registry.server_address[1]
    client = SchemaRegistryClient(f"http://svc%40acct:s3cr%3At@127.0.0.1:{port}/")
    assert client.url == f"http://127.0.0.1:{port}"
    assert client.register("s-value", '"string"') == 1
    assert registry.authorization == "Basic " + base64.b64encode(b"svc@acct:s3cr:t").decode()
    registry.fail_with = 401
    with pytest.raises(SchemaRegistryError) as caught:
        client.register("other-value", '"int"')
    assert "s3cr" not in str(caught.value)
