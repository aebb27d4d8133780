"""Avro binary writers made for one schema: Python code generated from the schema once.

fastavro's ``schemaless_writer`` interprets the schema for every datum: a ``LocationChanged``
takes it about 22 µs, most of it choosing union branches (a record branch is validated
against the datum) and dispatching on each field's type. The locator encodes every change and
address request it derives, so ``compile_writer`` turns a record schema (fastavro's parsed
form) into straight-line code for it: one function per named record, each field written in
schema order with the checks its type needs. It covers the types this contract uses:
primitives, records, enums, arrays, unions of ``null`` and one other type, and the logical
types fastavro knows (their conversion is fastavro's own, ``LOGICAL_WRITERS``). For any other
schema it returns None and the codec keeps fastavro. Its output is fastavro's, byte for byte
(``tests/unit/test_avro_writer.py`` checks every schema in ``avro/`` against it); it is stricter
on bad data: a value of the wrong type, an int out of its 32 or 64 bits, an unknown enum
symbol or a missing field raises (``TypeError``, ``OverflowError``, ``KeyError``,
``ValueError``) where fastavro may write something.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from fastavro.write import LOGICAL_WRITERS

Writer = Callable[[Mapping[str, Any], bytearray], None]
"""Appends a datum's Avro binary body to the buffer."""

_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)


class _Unsupported(Exception):
    """A schema construct the generator does not handle: fastavro writes it."""


def _varint(value: int, out: bytearray) -> None:
    """An unsigned (already zigzagged) value as an Avro variable-length integer."""
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _zigzag_bytes(value: int) -> bytes:
    out = bytearray()
    _varint((value << 1) if value >= 0 else ((-value) << 1) - 1, out)
    return bytes(out)


def _bad(kind: str, value: object) -> TypeError:
    return TypeError(f"expected {kind}, got {type(value).__name__}")


class _Generator:
    def __init__(self, named: Mapping[str, Any]) -> None:
        self.named = named
        self.functions: dict[str, str] = {}  # record full name -> its function's name
        self.sources: list[str] = []
        self.constants: dict[str, Any] = {
            "_varint": _varint,
            "_bad": _bad,
            "_pack_double": struct.Struct("<d").pack,
            "_pack_float": struct.Struct("<f").pack,
        }

    def constant(self, value: Any) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name

    def record(self, schema: Mapping[str, Any]) -> str:
        """The name of the function that writes this record (generated on first use)."""
        full_name = str(schema["name"])
        function = self.functions.get(full_name)
        if function is not None:
            return function
        function = self.functions[full_name] = f"_record{len(self.functions)}"
        lines = [f"def {function}(d, b):  # {full_name}"]
        for field in schema["fields"]:
            name = field["name"]
            if "default" in field:
                if field["default"] is not None:
                    raise _Unsupported("a field default other than null")
                lines.append(f"    v = d.get({name!r})")
            else:
                lines.append(f"    v = d[{name!r}]")
            lines.extend(self.value(field["type"], "v", "    "))
        if len(lines) == 1:
            lines.append("    pass")
        self.sources.append("\n".join(lines))
        return function

    def value(self, schema: Any, var: str, indent: str) -> list[str]:
        """Lines that append ``var`` written as ``schema``."""
        if isinstance(schema, str):
            if schema in self.named:
                return self.value(self.named[schema], var, indent)
            return self.primitive(schema, var, indent)
        if isinstance(schema, list):
            return self.union(schema, var, indent)
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical is not None:
            prepare = LOGICAL_WRITERS.get(f"{kind}-{logical}")
            if prepare is not None:
                call = f"{self.constant(prepare)}({var}, {self.constant(schema)})"
                return [f"{indent}{var} = {call}", *self.value(kind, var, indent)]
        if kind == "record":
            return [f"{indent}{self.record(schema)}({var}, b)"]
        if kind == "enum":
            codes = {symbol: _zigzag_bytes(i) for i, symbol in enumerate(schema["symbols"])}
            return [f"{indent}b += {self.constant(codes)}[{var}]"]
        if kind == "array":
            item = f"i{len(indent)}"
            body = self.value(schema["items"], item, indent + "        ")
            return [
                f"{indent}if not isinstance({var}, (list, tuple)): raise _bad('array', {var})",
                f"{indent}if {var}:",
                f"{indent}    _varint(len({var}) << 1, b)",
                f"{indent}    for {item} in {var}:",
                *body,
                f"{indent}b.append(0)",
            ]
        if isinstance(kind, str) and kind in (
            "null",
            "boolean",
            "int",
            "long",
            "float",
            "double",
            "bytes",
            "string",
        ):
            return self.primitive(kind, var, indent)
        raise _Unsupported(f"type {kind!r}")

    def union(self, branches: list[Any], var: str, indent: str) -> list[str]:
        if len(branches) != 2 or "null" not in branches:
            raise _Unsupported("a union other than null and one type")
        null_index = branches.index("null")
        other = branches[1 - null_index]
        return [
            f"{indent}if {var} is None:",
            f"{indent}    b.append({null_index << 1})",
            f"{indent}else:",
            f"{indent}    b.append({(1 - null_index) << 1})",
            *self.value(other, var, indent + "    "),
        ]

    def primitive(self, kind: str, var: str, indent: str) -> list[str]:
        if kind == "null":
            return [f"{indent}if {var} is not None: raise _bad('null', {var})"]
        if kind == "boolean":
            return [
                f"{indent}if {var} is True: b.append(1)",
                f"{indent}elif {var} is False: b.append(0)",
                f"{indent}else: raise _bad('boolean', {var})",
            ]
        if kind in ("int", "long"):
            low, high = _INT_RANGE if kind == "int" else _LONG_RANGE
            return [
                f"{indent}if {var}.__class__ is not int: raise _bad({kind!r}, {var})",
                f"{indent}if {var} >= 0:",
                f"{indent}    if {var} > {high}: raise OverflowError('{kind} out of range')",
                f"{indent}    _varint({var} << 1, b)",
                f"{indent}else:",
                f"{indent}    if {var} < {low}: raise OverflowError('{kind} out of range')",
                f"{indent}    _varint(((-{var}) << 1) - 1, b)",
            ]
        if kind in ("float", "double"):
            pack = "_pack_double" if kind == "double" else "_pack_float"
            return [
                f"{indent}if {var}.__class__ is not float and {var}.__class__ is not int:"
                f" raise _bad({kind!r}, {var})",
                f"{indent}b += {pack}({var})",
            ]
        if kind == "string":
            return [
                f"{indent}if not isinstance({var}, str): raise _bad('string', {var})",
                f"{indent}{var} = {var}.encode()",
                f"{indent}_varint(len({var}) << 1, b)",
                f"{indent}b += {var}",
            ]
        if kind == "bytes":
            return [
                f"{indent}if not isinstance({var}, bytes): raise _bad('bytes', {var})",
                f"{indent}_varint(len({var}) << 1, b)",
                f"{indent}b += {var}",
            ]
        raise _Unsupported(f"type {kind!r}")


def compile_writer(parsed: Mapping[str, Any]) -> Writer | None:
    """A writer for a record schema in fastavro's parsed form (``parse_schema``), or None when
    the schema uses something the generator does not handle."""
    if parsed.get("type") != "record":
        return None
    generator = _Generator(parsed.get("__named_schemas", {}))
    try:
        root = generator.record(parsed)
    except _Unsupported:
        return None
    namespace = dict(generator.constants)
    source = "\n\n".join(generator.sources)
    exec(compile(source, f"<avro writer {parsed['name']}>", "exec"), namespace)  # noqa: S102
    writer: Writer = namespace[root]
    return writer
