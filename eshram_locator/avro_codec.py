"""Avro on the wire: schema fingerprints, the catalog of every schema version, the codec.

Pure: no Kafka. The only I/O is reading ``avro/`` at start-up and, when a Confluent Schema
Registry is configured, its REST API (``SchemaRegistryClient``).

Wire formats (contract.md):

- single-object encoding: ``C3 01`` + the writer schema's CRC-64-AVRO fingerprint as 8
  little-endian bytes + the Avro binary body;
- Confluent framing: ``00`` + the registry's schema id as 4 big-endian bytes + the body.

``decode`` detects the framing, finds the writer schema (fingerprint in the ``SchemaCatalog``, or
the id at the registry) and reads the body with the *current* schema of the same record, so
records written by older and newer versions both decode (Avro schema resolution). Every failure
is a typed ``DecodeError`` whose message is a short reason without payload bytes.
"""

from __future__ import annotations

import base64
import io
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException
from fastavro.schema import fingerprint as _fastavro_fingerprint

from eshram_locator.avro_writer import Writer, compile_writer
from eshram_locator.errors import (
    ConfigError,
    DecodeError,
    LocatorError,
    RetriableError,
    TruncatedRecordError,
    UnknownSchemaError,
    ValidationError,
    WrongMagicError,
)

SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"
SINGLE_OBJECT_HEADER_SIZE: Final = 10
CONFLUENT_MAGIC: Final = b"\x00"
CONFLUENT_HEADER_SIZE: Final = 5
SCHEMA_TOPIC_SOURCE: Final = "locator.schemas"

JsonSchema = str | list[Any] | dict[str, Any]
"""A schema as parsed JSON: a type name, a union (list) or an object."""

_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_NAMED: Final = frozenset({"record", "error", "enum", "fixed"})
_UNSIGNED_64: Final = 0xFFFF_FFFF_FFFF_FFFF
_HISTORY_FILE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.(?P<version>[1-9][0-9]*)\.avsc$")
_LOGICAL_KEYS: Final = ("logicalType", "precision", "scale")

# What fastavro raises on a malformed body (besides EOFError, which means "ends early"):
# bad UTF-8 (UnicodeDecodeError is a ValueError), a bad uuid string (ValueError), an enum or
# union index out of range (IndexError; also a varint cut off by the end of the payload), a
# varint longer than 64 bits or a timestamp out of datetime's range (OverflowError), a writer
# enum symbol the reader lacks and has no default for (SchemaResolutionError).
_MALFORMED_BODY: Final = (ValueError, IndexError, OverflowError, SchemaResolutionError)
_TRUNCATED_BODY: Final = (EOFError, StopIteration)
# What fastavro raises when a datum does not fit the schema on write.
_BAD_DATUM: Final = (TypeError, ValueError, KeyError, AttributeError, OverflowError)
# What fastavro raises on a schema it cannot parse.
_BAD_SCHEMA: Final = (
    SchemaParseException,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    RecursionError,
)


# fastavro types its result as any Avro value; a record schema reads to a dict.
_read_record: Callable[[IO[bytes], dict[str, Any], dict[str, Any] | None], dict[str, Any]] = (
    schemaless_reader  # type: ignore[assignment]
)


class SchemaRegistryError(LocatorError):
    """The schema registry refused a request for good (bad credentials, incompatible schema)."""


# --------------------------------------------------------------------------------------------
# Parsing Canonical Form and fingerprints
# --------------------------------------------------------------------------------------------


def canonical_form(schema_json: str | JsonSchema) -> str:
    """The Parsing Canonical Form of a schema (Avro spec), given as JSON text or parsed JSON.

    A string is read as JSON text; a bare type name (``int``, ``a.b.Rec``) is accepted too.
    Raises ``ValueError`` on something that is not a schema.
    """
    schema: Any = schema_json
    if isinstance(schema_json, str):
        try:
            schema = json.loads(schema_json)
        except json.JSONDecodeError:
            schema = schema_json.strip()
    try:
        return _canonical(schema, "", set())
    except (KeyError, TypeError, AttributeError, RecursionError) as error:
        raise ValueError(f"not an Avro schema: {type(error).__name__} {error}") from error


def _fullname(name: str, namespace: str) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _canonical(schema: Any, namespace: str, seen: set[str]) -> str:
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _dumps(schema)
        return _dumps(_fullname(schema, namespace))
    if isinstance(schema, list):
        return "[" + ",".join(_canonical(branch, namespace, seen) for branch in schema) + "]"
    if not isinstance(schema, Mapping):
        raise ValueError(f"not an Avro schema: a JSON {type(schema).__name__}")
    kind = schema["type"]
    if isinstance(kind, list | Mapping):
        return _canonical(kind, namespace, seen)
    if not isinstance(kind, str):
        raise ValueError(f"not an Avro schema: type is a JSON {type(kind).__name__}")
    if kind in _PRIMITIVES:
        return _dumps(kind)
    if kind == "array":
        return '{"type":"array","items":' + _canonical(schema["items"], namespace, seen) + "}"
    if kind == "map":
        return '{"type":"map","values":' + _canonical(schema["values"], namespace, seen) + "}"
    if kind not in _NAMED:
        return _dumps(_fullname(kind, namespace))  # {"type": "SomeNamedType"}
    name = str(schema["name"])
    full = name if "." in name else _fullname(name, str(schema.get("namespace", namespace) or ""))
    if full in seen:
        return _dumps(full)
    seen.add(full)
    inner = full.rpartition(".")[0]
    out = '{"name":' + _dumps(full) + ',"type":' + _dumps(kind)
    if kind == "fixed":
        return out + ',"size":' + str(int(schema["size"])) + "}"
    if kind == "enum":
        return out + ',"symbols":' + _dumps([str(symbol) for symbol in schema["symbols"]]) + "}"
    fields = ",".join(
        '{"name":'
        + _dumps(str(field["name"]))
        + ',"type":'
        + _canonical(field["type"], inner, seen)
        + "}"
        for field in schema["fields"]
    )
    return out + ',"fields":[' + fields + "]}"


def fingerprint(schema: str | JsonSchema) -> int:
    """CRC-64-AVRO of the Parsing Canonical Form, as a signed 64-bit integer (Avro's ``long``)."""
    digest = _fastavro_fingerprint(canonical_form(schema), "CRC-64-AVRO")
    # fastavro renders the CRC as its 8 little-endian bytes in hex: the single-object header.
    return int.from_bytes(bytes.fromhex(digest), "little", signed=True)


def fingerprint_hex(value: int) -> str:
    """The ``locator.schemas`` key: 16 lowercase hex digits of the unsigned 64-bit value."""
    return f"{value & _UNSIGNED_64:016x}"


def fingerprint_from_hex(text: str) -> int:
    """Inverse of ``fingerprint_hex``; raises ``ValueError`` on anything else."""
    if len(text) != 16:
        raise ValueError("a fingerprint key has 16 hex digits")
    unsigned = int(text, 16)
    return unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned


# --------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchemaEntry:
    """One schema version of one record."""

    record_name: str  # short name, e.g. "RationCollection"
    full_name: str  # e.g. "in.gov.eshram.locator.v1.RationCollection"
    version: int | None  # shipped version number; None for one learned at run time
    fingerprint: int
    schema: dict[str, Any]  # the JSON as written (docs, defaults, logical types)
    parsed: dict[str, Any]  # fastavro's parsed form
    canonical: str  # Parsing Canonical Form
    source: str  # file path, "locator.schemas" or "registry id <n>"

    @property
    def schema_text(self) -> str:
        """The full schema as compact JSON (what a schema registry is given)."""
        return _dumps(self.schema)


def _build_entry(schema: Any, version: int | None, source: str) -> SchemaEntry:
    """Parse, check and fingerprint a record schema; ``ValueError`` with a reason if it is bad."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise ValueError("the top-level type must be an Avro record")
    try:
        parsed = cast("dict[str, Any]", parse_schema(schema))  # a record schema parses to a dict
        canonical = canonical_form(schema)
    except _BAD_SCHEMA as error:
        raise ValueError(f"invalid Avro schema ({type(error).__name__}: {error})") from error
    full_name = json.loads(canonical)["name"]
    return SchemaEntry(
        record_name=full_name.rpartition(".")[2],
        full_name=full_name,
        version=version,
        fingerprint=fingerprint(canonical),
        schema=schema,
        parsed=parsed,
        canonical=canonical,
        source=source,
    )


class SchemaCatalog:
    """Every schema version the service knows, by fingerprint, and the current one per record.

    ``load(avro_dir)`` reads ``avro/<Record>.avsc`` (current) and ``avro/history/<Record>.<n>.avsc``
    (older shipped versions; the current one's number is the highest of these plus one).
    ``register`` adds a version learned at run time (``locator.schemas``, the registry).
    """

    def __init__(self) -> None:
        self._by_fingerprint: dict[int, SchemaEntry] = {}
        self._current: dict[str, SchemaEntry] = {}  # by short and by full name
        self.generation = 0  # bumped whenever a current version changes (codec caches key on it)

    @classmethod
    def load(cls, avro_dir: Path) -> SchemaCatalog:
        """Load the contract; ``ConfigError`` naming the file if any of it is unusable."""
        catalog = cls()
        current_files = sorted(avro_dir.glob("*.avsc"))
        if not current_files:
            raise ConfigError(f"{avro_dir}: no .avsc files")
        history: dict[str, list[tuple[int, Path]]] = {}
        for path in sorted((avro_dir / "history").glob("*.avsc")):
            match = _HISTORY_FILE.match(path.name)
            if match is None:
                raise ConfigError(f"{path}: history files are named <Record>.<n>.avsc, n >= 1")
            history.setdefault(match["name"], []).append((int(match["version"]), path))
        for path in current_files:
            name = path.name.removesuffix(".avsc")
            versions = [number for number, _ in history.get(name, [])]
            catalog._load_file(path, name, max(versions, default=0) + 1, current=True)
        for name, files in sorted(history.items()):
            if name not in catalog._current:
                raise ConfigError(f"{avro_dir}/history: {name} has old versions but no {name}.avsc")
            for number, path in sorted(files):
                catalog._load_file(path, name, number, current=False)
        return catalog

    def _load_file(self, path: Path, name: str, version: int, *, current: bool) -> None:
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
            entry = _build_entry(schema, version, str(path))
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path}: {error}") from error
        if entry.record_name != name:
            raise ConfigError(f"{path}: defines record {entry.record_name}, expected {name}")
        self._add(entry, current=current)

    def add(
        self,
        schema: str | dict[str, Any],
        *,
        version: int | None = None,
        current: bool = False,
        source: str = "added",
    ) -> SchemaEntry:
        """Add a version (JSON text or parsed JSON); ``current=True`` makes it the reader schema.

        Raises ``ValueError`` if the schema is not a valid Avro record schema.
        """
        parsed_json = json.loads(schema) if isinstance(schema, str) else schema
        return self._add(_build_entry(parsed_json, version, source), current=current)

    def _add(self, entry: SchemaEntry, *, current: bool) -> SchemaEntry:
        known = self._by_fingerprint.get(entry.fingerprint)
        if current or known is None:
            self._by_fingerprint[entry.fingerprint] = entry
        if current:
            self._current[entry.record_name] = entry
            self._current[entry.full_name] = entry
            self.generation += 1
            return entry
        return known if known is not None else entry

    def register(
        self,
        schema_json: str | bytes,
        *,
        expected_fingerprint: int | None = None,
        source: str = SCHEMA_TOPIC_SOURCE,
    ) -> SchemaEntry:
        """Add a version learned at run time (e.g. the value of a ``locator.schemas`` record).

        Parsing Canonical Form has no logical types, so they are taken from the current version
        of the same record (``timestamp-millis`` fields still decode to datetimes). A known
        fingerprint returns the known entry. ``DecodeError`` if the text is not a record schema
        or its fingerprint is not ``expected_fingerprint`` (the topic key).
        """
        try:
            schema = json.loads(schema_json)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise DecodeError(f"schema from {source} is not JSON") from error
        try:
            entry_fingerprint = fingerprint(schema)
        except ValueError as error:
            raise DecodeError(f"schema from {source} is not an Avro schema") from error
        if expected_fingerprint is not None and entry_fingerprint != expected_fingerprint:
            raise DecodeError(
                f"schema from {source} has fingerprint {fingerprint_hex(entry_fingerprint)}, "
                f"keyed as {fingerprint_hex(expected_fingerprint)}"
            )
        known = self._by_fingerprint.get(entry_fingerprint)
        if known is not None:
            return known
        try:
            if isinstance(schema, dict) and isinstance(schema.get("name"), str):
                reader = self._current.get(schema["name"]) or self._current.get(
                    _short(schema["name"])
                )
                if reader is not None:
                    schema = _borrow_logical_types(schema, reader.schema)
            entry = _build_entry(schema, None, source)
        except _BAD_SCHEMA as error:
            raise DecodeError(f"schema from {source}: {error}") from error
        return self._add(entry, current=False)

    def current(self, record_name: str) -> SchemaEntry:
        """The current (reader) version of a record, by short or full name."""
        entry = self._current.get(record_name)
        if entry is None:
            raise UnknownSchemaError(f"no schema for record {record_name}")
        return entry

    def current_or_none(self, record_name: str) -> SchemaEntry | None:
        return self._current.get(record_name)

    def get(self, fingerprint_value: int) -> SchemaEntry | None:
        return self._by_fingerprint.get(fingerprint_value)

    def record_names(self) -> list[str]:
        """Short names of the records with a current version, sorted."""
        return sorted({entry.record_name for entry in self._current.values()})

    def entries(self) -> list[SchemaEntry]:
        """Every known version, by record name then version (learned ones last)."""
        return sorted(
            self._by_fingerprint.values(),
            key=lambda e: (e.record_name, e.version is None, e.version or 0, e.fingerprint),
        )

    def __iter__(self) -> Iterator[SchemaEntry]:
        return iter(self.entries())

    def __len__(self) -> int:
        return len(self._by_fingerprint)

    def __contains__(self, fingerprint_value: object) -> bool:
        return fingerprint_value in self._by_fingerprint


def schema_topic_records(catalog: SchemaCatalog) -> list[tuple[str, bytes]]:
    """(key, value) records for the compacted topic ``locator.schemas``: every shipped version.

    Key: ``fingerprint_hex`` of the fingerprint; value: the Parsing Canonical Form, UTF-8.
    """
    return [
        (fingerprint_hex(entry.fingerprint), entry.canonical.encode("utf-8"))
        for entry in catalog.entries()
        if entry.version is not None
    ]


def _short(name: Any) -> str:
    return str(name).rpartition(".")[2]


def _named_types(schema: Any, out: dict[str, Any]) -> dict[str, Any]:
    """Every named type defined in ``schema``, by full and by short name (short: first wins)."""
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, out)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in _NAMED:
            name = str(schema.get("name", ""))
            namespace = schema.get("namespace")
            out.setdefault(f"{namespace}.{name}" if namespace and "." not in name else name, schema)
            out.setdefault(_short(name), schema)
            for field in schema.get("fields", ()):
                _named_types(field.get("type"), out)
        elif kind == "array":
            _named_types(schema.get("items"), out)
        elif kind == "map":
            _named_types(schema.get("values"), out)
        elif isinstance(kind, list | dict):
            _named_types(kind, out)
    return out


def _candidates(reader: Any, named: dict[str, Any]) -> list[Any]:
    branches = reader if isinstance(reader, list) else [reader]
    resolved = []
    for branch in branches:
        if isinstance(branch, str) and branch not in _PRIMITIVES:
            branch = named.get(branch) or named.get(_short(branch))
        resolved.append(branch)
    return resolved


def _borrow_logical_types(writer: Any, reader: Any) -> Any:
    """A copy of ``writer`` with the logical-type annotations of the matching parts of ``reader``.

    Logical types do not change the binary encoding or the fingerprint, but fastavro converts
    values (millis -> datetime, str -> UUID) by the *writer's* annotations.
    """
    return _borrow(writer, reader, _named_types(reader, {}))


def _borrow(writer: Any, reader: Any, named: dict[str, Any]) -> Any:
    if isinstance(writer, list):
        return [_borrow(branch, reader, named) for branch in writer]
    if isinstance(writer, str):
        if writer in _PRIMITIVES:
            for candidate in _candidates(reader, named):
                if (
                    isinstance(candidate, dict)
                    and candidate.get("type") == writer
                    and "logicalType" in candidate
                ):
                    return {"type": writer} | {
                        key: candidate[key] for key in _LOGICAL_KEYS if key in candidate
                    }
        return writer
    if not isinstance(writer, dict):
        return writer
    kind = writer.get("type")
    if kind in _PRIMITIVES and "logicalType" not in writer:
        return _borrow(kind, reader, named)
    if kind in ("array", "map"):
        part = "items" if kind == "array" else "values"
        for candidate in _candidates(reader, named):
            if isinstance(candidate, dict) and candidate.get("type") == kind:
                return writer | {part: _borrow(writer[part], candidate[part], named)}
        return writer
    if kind == "record":
        for candidate in _candidates(reader, named):
            if (
                isinstance(candidate, dict)
                and candidate.get("type") == "record"
                and _short(candidate.get("name")) == _short(writer.get("name"))
            ):
                reader_fields: dict[str, Any] = {}
                for field in candidate.get("fields", ()):
                    reader_fields.setdefault(field["name"], field["type"])
                    for alias in field.get("aliases", ()):
                        reader_fields.setdefault(alias, field["type"])
                fields = [
                    field | {"type": _borrow(field["type"], reader_fields[field["name"]], named)}
                    if field["name"] in reader_fields
                    else field
                    for field in writer["fields"]
                ]
                return writer | {"fields": fields}
    return writer


# --------------------------------------------------------------------------------------------
# Schema registry
# --------------------------------------------------------------------------------------------


class SchemaRegistryClient:
    """A minimal Confluent Schema Registry client: register a schema, fetch one by id.

    Both answers are cached for the life of the client (ids are immutable in a registry).
    Unreachable or failing registry (network, 5xx, 429): ``RetriableError``. Unknown id:
    ``UnknownSchemaError``. A refusal (incompatible schema, bad credentials):
    ``SchemaRegistryError``.
    """

    _CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        """``url``: ``http(s)://[user:password@]host[:port][/path]``; credentials go to HTTP
        basic auth and never into ``url`` or an error message."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("schema registry URL must be http(s)://[user:password@]host[:port]")
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        if ":" in parts.hostname:  # IPv6 literal
            netloc = f"[{parts.hostname}]" + ("" if parts.port is None else f":{parts.port}")
        self._base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._authorization: str | None = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._authorization = f"Basic {token}"
        self._timeout_s = timeout_s
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, str] = {}

    @property
    def url(self) -> str:
        return self._base

    def register(self, subject: str, schema_json: str) -> int:
        """Register ``schema_json`` under ``subject`` (e.g. ``<topic>-value``); its global id."""
        key = (subject, schema_json)
        cached = self._ids.get(key)
        if cached is not None:
            return cached
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        answer = self._request("POST", path, {"schema": schema_json})
        schema_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(schema_id, int):
            raise SchemaRegistryError(f"registry answered {path} without an id")
        self._ids[key] = schema_id
        self._schemas.setdefault(schema_id, schema_json)
        return schema_id

    def get_schema(self, schema_id: int) -> str:
        """The schema JSON text with this global id."""
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        answer = self._request("GET", f"/schemas/ids/{int(schema_id)}", None)
        schema = answer.get("schema") if isinstance(answer, dict) else None
        if not isinstance(schema, str):
            raise SchemaRegistryError(f"registry answered schema id {schema_id} without a schema")
        if answer.get("schemaType", "AVRO") != "AVRO":
            raise UnknownSchemaError(f"schema id {schema_id} is not an Avro schema")
        self._schemas[schema_id] = schema
        return schema

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": f"{self._CONTENT_TYPE}, application/json"}
        if data is not None:
            headers["Content-Type"] = self._CONTENT_TYPE
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        # The scheme is checked to be http(s) in __init__.
        request = urllib.request.Request(  # noqa: S310
            self._base + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as error:
            status = error.code
            error.close()
            if status == 404 and method == "GET":
                raise UnknownSchemaError(f"the schema registry does not know {path}") from None
            if status >= 500 or status == 429:
                raise RetriableError(f"schema registry {method} {path}: HTTP {status}") from None
            raise SchemaRegistryError(f"schema registry {method} {path}: HTTP {status}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise RetriableError(f"schema registry {self._base} unreachable: {error}") from error
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SchemaRegistryError(f"schema registry {method} {path}: not JSON") from error


# --------------------------------------------------------------------------------------------
# Codec
# --------------------------------------------------------------------------------------------

# (record short name, fastavro writer schema, fastavro reader schema or None when identical)
_Plan = tuple[str, dict[str, Any], dict[str, Any] | None]


#: A record's framing header, parsed schema and, when it has one, its own writer.
_Header = tuple[bytes, dict[str, Any], Writer | None]


class AvroCodec:
    """Encodes the current version of a record; decodes any known version to the current one."""

    def __init__(
        self, catalog: SchemaCatalog, registry: SchemaRegistryClient | None = None
    ) -> None:
        self._catalog = catalog
        self._registry = registry
        self._generation = catalog.generation
        self._plans: dict[int, _Plan] = {}  # by fingerprint
        self._id_plans: dict[int, _Plan] = {}  # by registry id
        self._headers: dict[tuple[str, str | None], _Header] = {}
        self._writers: dict[int, Writer | None] = {}  # by fingerprint: one per schema, not topic

    @property
    def catalog(self) -> SchemaCatalog:
        return self._catalog

    @property
    def registry(self) -> SchemaRegistryClient | None:
        return self._registry

    def _refresh(self) -> None:
        if self._generation != self._catalog.generation:
            self._plans.clear()
            self._id_plans.clear()
            self._headers.clear()
            self._writers.clear()
            self._generation = self._catalog.generation

    # --- encode ------------------------------------------------------------------------------

    def encode(
        self, record_name: str, datum: Mapping[str, Any], *, topic: str | None = None
    ) -> bytes:
        """``datum`` (a fastavro dict) as the current version of ``record_name``.

        Single-object encoding, or Confluent framing when a registry is configured: the schema
        is registered under ``<topic>-value`` (or the record's full name without a topic).
        A datum that does not fit the schema raises ``ValidationError``.
        """
        self._refresh()
        cached = self._headers.get((record_name, topic))
        if cached is None:
            cached = self._header(record_name, topic)
            self._headers[(record_name, topic)] = cached
        header, parsed, write = cached
        try:
            if write is not None:  # the schema's own writer (avro_writer): fastavro's bytes
                body = bytearray(header)
                write(datum, body)
                return bytes(body)
            out = io.BytesIO()
            out.write(header)
            schemaless_writer(out, parsed, datum)
            return out.getvalue()
        except _BAD_DATUM as error:
            raise ValidationError(
                f"{record_name} datum does not match its schema ({type(error).__name__})"
            ) from error

    def _header(self, record_name: str, topic: str | None) -> _Header:
        entry = self._catalog.current(record_name)
        if entry.fingerprint not in self._writers:
            self._writers[entry.fingerprint] = compile_writer(entry.parsed)
        write = self._writers[entry.fingerprint]
        if self._registry is None:
            return single_object_header(entry.fingerprint), entry.parsed, write
        subject = f"{topic}-value" if topic else entry.full_name
        schema_id = self._registry.register(subject, entry.schema_text)
        self._id_plans.setdefault(schema_id, (entry.record_name, entry.parsed, None))
        return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big"), entry.parsed, write

    # --- decode ------------------------------------------------------------------------------

    def decode(
        self, payload: bytes, expected_record: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """(record short name, fastavro dict read with the current schema of that record).

        Raises ``WrongMagicError``, ``UnknownSchemaError``, ``TruncatedRecordError`` or
        ``DecodeError`` (malformed body, trailing bytes, a record other than ``expected_record``);
        ``RetriableError`` only if a configured registry is unreachable.
        """
        if self._generation != self._catalog.generation:
            self._refresh()
        size = len(payload)
        if size >= SINGLE_OBJECT_HEADER_SIZE and payload[0] == 0xC3 and payload[1] == 0x01:
            fingerprint_value = int.from_bytes(payload[2:10], "little", signed=True)
            plan = self._plans.get(fingerprint_value)
            if plan is None:
                plan = self._plan_for_fingerprint(fingerprint_value)
            start = SINGLE_OBJECT_HEADER_SIZE
        elif size >= CONFLUENT_HEADER_SIZE and payload[0] == 0:
            schema_id = int.from_bytes(payload[1:5], "big")
            plan = self._id_plans.get(schema_id)
            if plan is None:
                plan = self._plan_for_id(schema_id)
            start = CONFLUENT_HEADER_SIZE
        else:
            raise _framing_error(payload)
        name, writer, reader = plan
        if expected_record is not None and name != expected_record:
            raise DecodeError(f"expected a {expected_record} record, got {name}")
        body = io.BytesIO(payload)
        body.seek(start)
        try:
            datum = _read_record(body, writer, reader)
        except _TRUNCATED_BODY:
            raise TruncatedRecordError(
                f"{name} body ends early (or declares a length past its end)"
            ) from None
        except _MALFORMED_BODY as error:
            if isinstance(error, IndexError) and body.tell() >= size:
                # fastavro's varint reader indexes the byte it could not read
                raise TruncatedRecordError(f"{name} body ends early") from None
            raise DecodeError(f"malformed {name} body ({type(error).__name__})") from None
        trailing = size - body.tell()
        if trailing:
            raise DecodeError(f"{trailing} trailing bytes after the {name} body")
        return name, datum

    def _plan_for_fingerprint(self, fingerprint_value: int) -> _Plan:
        entry = self._catalog.get(fingerprint_value)
        if entry is None:
            raise UnknownSchemaError(
                f"writer schema fingerprint {fingerprint_hex(fingerprint_value)} is not known"
            )
        plan = self._plan(entry)
        self._plans[fingerprint_value] = plan
        return plan

    def _plan_for_id(self, schema_id: int) -> _Plan:
        if self._registry is None:
            raise UnknownSchemaError(
                f"Confluent-framed record (schema id {schema_id}) but no schema registry configured"
            )
        schema_json = self._registry.get_schema(schema_id)
        entry = self._catalog.register(schema_json, source=f"registry id {schema_id}")
        plan = self._plan(entry)
        self._id_plans[schema_id] = plan
        return plan

    def _plan(self, entry: SchemaEntry) -> _Plan:
        reader = self._catalog.current_or_none(entry.record_name)
        if reader is None:  # a schema learned only from the schema topic: read as written
            return entry.record_name, entry.parsed, None
        if reader.fingerprint == entry.fingerprint:
            return entry.record_name, reader.parsed, None
        return entry.record_name, entry.parsed, reader.parsed


def single_object_header(fingerprint_value: int) -> bytes:
    """The first 10 bytes of a single-object encoded record of the schema with this fingerprint."""
    return SINGLE_OBJECT_MAGIC + fingerprint_value.to_bytes(8, "little", signed=True)


def _framing_error(payload: bytes) -> DecodeError:
    if not payload:
        return WrongMagicError("empty payload: no single-object or Confluent header")
    first = payload[0]
    if first == 0xC3 and (len(payload) == 1 or payload[1] == 0x01):
        return TruncatedRecordError("payload ends inside the single-object header")
    if first == 0:
        return TruncatedRecordError("payload ends inside the Confluent header")
    return WrongMagicError("payload starts with neither C3 01 (single-object) nor 00 (Confluent)")


def load_codec(avro_dir: Path, schema_registry_url: str | None = None) -> AvroCodec:
    """The codec of a process: the catalog of ``avro_dir`` and, if a URL is given, a registry."""
    registry = SchemaRegistryClient(schema_registry_url) if schema_registry_url else None
    return AvroCodec(SchemaCatalog.load(avro_dir), registry)
