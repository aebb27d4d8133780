"""The Aadhaar guard: find, and mask, Aadhaar-like numbers in decoded records.

contract.md: no Aadhaar number may ever appear in a topic, a table or a log. A number is
*Aadhaar-like* when it is 12 digits, the first 2-9, and passes the Verhoeff check (UIDAI's
checksum). It is found in text

- as a run of exactly 12 digits not adjacent to another digit (``234567890124``), or
- as three groups of 4 digits joined by the same single separator, a space or a hyphen
  (``2345 6789 0124``, ``2345-6789-0124``), the first and last groups not adjacent to a digit.

Grouped candidates may overlap (``1111 2345 6789 0124``): every position is tried. Any Unicode
decimal digit counts as a digit (a number in Devanagari numerals is still an Aadhaar number);
hits are returned as ASCII digits.

Pure and fast on ordinary records: one precompiled regex, and strings shorter than 12
characters are never scanned.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from typing import Any

import orjson

_MIN_TEXT = 12  # a hit needs at least 12 characters

# Verhoeff tables: multiplication in the dihedral group D5, the position permutation, inverses.
_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)
_INV = (0, 4, 3, 2, 1, 5, 6, 7, 8, 9)

_ASCII_DIGITS = frozenset("0123456789")

# Zero-width so that overlapping grouped candidates are all tried; group 1 is the candidate.
_CANDIDATE = re.compile(r"(?<!\d)(?=(\d{4}([ -]?)\d{4}\2\d{4})(?!\d))")
# Every candidate contains this; one search over a string without it is all it costs.
_QUICK = re.compile(r"\d\d\d\d[ -]?\d\d\d\d")


def _ascii_digits(text: str) -> str:
    if all(char in _ASCII_DIGITS for char in text):
        return text
    return "".join(str(int(char)) for char in text)


def _verhoeff_checksum(digits: str) -> int:
    check = 0
    for position, char in enumerate(reversed(digits)):
        check = _D[check][_P[position % 8][int(char)]]
    return check


def verhoeff_valid(digits: str) -> bool:
    """True when ``digits`` (ASCII digits only, check digit last) passes the Verhoeff check."""
    if not digits or not all(char in _ASCII_DIGITS for char in digits):
        return False
    return _verhoeff_checksum(digits) == 0


def verhoeff_check_digit(payload: str) -> str:
    """The Verhoeff check digit to append to ``payload`` (ASCII digits)."""
    if not all(char in _ASCII_DIGITS for char in payload):
        raise ValueError(f"not a digit string: {payload!r}")
    return str(_INV[_verhoeff_checksum(payload + "0")])


def is_aadhaar_like(digits: str) -> bool:
    """12 ASCII digits, first 2-9, Verhoeff-valid."""
    return len(digits) == 12 and digits[0] in "23456789" and verhoeff_valid(digits)


def _may_hold(text: str) -> bool:
    return len(text) >= _MIN_TEXT and _QUICK.search(text) is not None


def _candidates(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, ASCII digits) of every Aadhaar-like number written in ``text``."""
    if not _may_hold(text):
        return
    for match in _CANDIDATE.finditer(text):
        written = match.group(1)
        separator = match.group(2)
        digits = _ascii_digits(written.replace(separator, "") if separator else written)
        if is_aadhaar_like(digits):
            yield match.start(1), match.end(1), digits


def find_aadhaar_like(text: str) -> list[str]:
    """The distinct Aadhaar-like numbers in ``text`` (ASCII digits), in order of appearance."""
    found: dict[str, None] = {}
    for _start, _end, digits in _candidates(text):
        found.setdefault(digits, None)
    return list(found)


def mask(number: str) -> str:
    """Every digit but the last four replaced by ``X``: ``XXXXXXXX1234``, ``XXXX XXXX 1234``."""
    positions = [index for index, char in enumerate(number) if char.isdecimal()]
    hidden = set(positions[:-4])
    return "".join("X" if index in hidden else char for index, char in enumerate(number))


def _mask_text(text: str, numbers: frozenset[str]) -> str:
    """Mask every occurrence of ``numbers`` and every Aadhaar-like number, to a fixpoint.

    Masking turns digits into ``X``, which can expose a new candidate next to them (in
    ``234123412346 1234 1234`` the grouped ``2346 1234 1234`` follows a digit until the number
    before it is masked); the loop stops when nothing is left to mask.
    """
    if not _may_hold(text):
        return text
    chars = list(text)
    current = text
    while True:
        hide: set[int] = set()
        for start, end, _digits in _candidates(current):
            positions = [i for i in range(start, end) if chars[i].isdecimal()]
            hide.update(positions[:-4])
        for number in numbers:  # plain occurrences, also inside longer digit runs
            start = current.find(number)
            while start != -1:
                hide.update(range(start, start + len(number) - 4))
                start = current.find(number, start + 1)
        hide = {i for i in hide if chars[i] != "X"}
        if not hide:
            return current
        for index in hide:
            chars[index] = "X"
        current = "".join(chars)


def mask_text(text: str, numbers: frozenset[str] = frozenset()) -> str:
    """``text`` with every Aadhaar-like number masked, grouped forms included (``2345 6789 0124``
    -> ``XXXX XXXX 0124``), and every plain occurrence of ``numbers`` (ASCII digits) too."""
    return _mask_text(text, numbers)


def _int_hit(value: int) -> str | None:
    if 200_000_000_000 <= value < 1_000_000_000_000:
        digits = str(value)
        return digits if is_aadhaar_like(digits) else None
    return None


_CLEAN_KEYS: set[str] = set()  # long dict keys (field names) known to hold no number
_CLEAN_KEYS_MAX = 10_000


def _key_name(key: object) -> str:
    """A dict key as written in a path: masked, so a path never carries a number."""
    if type(key) is not str:
        return _key_name(str(key)) if isinstance(key, str) else str(key)
    if len(key) < _MIN_TEXT or key in _CLEAN_KEYS:
        return key
    name = _mask_text(key, frozenset())
    if name == key and len(_CLEAN_KEYS) < _CLEAN_KEYS_MAX:
        _CLEAN_KEYS.add(key)
    return name


def _child_path(path: str, key: object) -> str:
    name = _key_name(key)
    return f"{path}.{name}" if path else name


def _exempt_under(path: str, exempt_fields: frozenset[str]) -> frozenset[str]:
    """The exempt names directly under ``path`` (a dict's own keys, as written in paths)."""
    if not exempt_fields:
        return exempt_fields
    if not path:
        return exempt_fields
    prefix = path + "."
    return frozenset(e[len(prefix) :] for e in exempt_fields if e.startswith(prefix))


_PLAIN_LEAVES = (type(None), bool, float)


def may_hold_aadhaar(datum: Any, exempt_keys: frozenset[str] = frozenset({"uan"})) -> bool:
    """A quick, conservative pre-check for ``scan_record``: False only when ``scan_record``
    (with ``exempt_keys`` as its top-level ``exempt_fields``) would find nothing.

    The hot path: first the datum's JSON text, checked in C for a 12-digit shape (without the
    top-level exempt keys); when that does not clear it, one type check per value and one
    regex search per string of 12 characters or more, no paths built. Anything unusual (a
    subclass, an unknown type) answers True, so that the full scan decides.
    """
    if type(datum) is dict and exempt_keys and not exempt_keys.isdisjoint(datum):
        # a registration: its uan is 12 digits, and exempt
        unexempt = {key: value for key, value in datum.items() if key not in exempt_keys}
        if _json_clears(unexempt):
            return False
    elif _json_clears(datum):
        return False
    if type(datum) is dict:
        return _may_hold_dict(datum, exempt_keys)
    return _may_hold_value(datum)


# Each byte's shape in JSON text: ASCII digits "0", the two separators as they are, else "x".
_SHAPES = bytes(
    ord("0") if 0x30 <= byte <= 0x39 else byte if byte in (0x20, 0x2D) else ord("x")
    for byte in range(256)
)
_PLAIN_RUN, _SPACED_RUN, _HYPHENED_RUN = b"0" * 12, b"0000 0000 0000", b"0000-0000-0000"


def _json_clears(datum: Any) -> bool:
    """True when the datum's JSON text (orjson, in C) is ASCII and has no run of 12 digits,
    plain or in three groups of 4: then no string, key or int of it holds a candidate (ints
    are written in decimal, datetimes as ISO text, and JSON escapes make no digit run). False
    decides nothing: non-ASCII text (other scripts' digits), bytes, or a 12-digit run
    anywhere in the text it is given."""
    try:
        text = orjson.dumps(datum)
    except orjson.JSONEncodeError:
        return False
    if not text.isascii():
        return False
    shapes = text.translate(_SHAPES)
    return not (_PLAIN_RUN in shapes or _SPACED_RUN in shapes or _HYPHENED_RUN in shapes)


def _may_hold_dict(datum: dict[Any, Any], exempt_keys: frozenset[str]) -> bool:
    quick = _QUICK.search
    for key, value in datum.items():
        if type(key) is not str:
            return True
        if len(key) >= _MIN_TEXT and key not in _CLEAN_KEYS:
            if _holds_number(key):
                return True
            if len(_CLEAN_KEYS) < _CLEAN_KEYS_MAX:
                _CLEAN_KEYS.add(key)
        kind = type(value)
        if kind is str:
            if len(value) >= _MIN_TEXT and quick(value) and _holds_number(value):
                return key not in exempt_keys or _may_hold_dict(
                    {k: v for k, v in datum.items() if k not in exempt_keys}, frozenset()
                )
        elif kind is int:
            if 200_000_000_000 <= value < 1_000_000_000_000 and key not in exempt_keys:
                return True
        elif (
            value is not None
            and kind is not bool
            and key not in exempt_keys
            and _may_hold_value(value)
        ):
            return True
    return False


def _may_hold_value(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return len(value) >= _MIN_TEXT and _holds_number(value)
    if kind is int:
        return _int_hit(value) is not None
    if kind is dict:
        return _may_hold_dict(value, frozenset())
    if kind is list or kind is tuple:
        return any(_may_hold_value(item) for item in value)
    # bytes, subclasses, anything else: True, and the full scan looks
    return not (kind in _PLAIN_LEAVES or isinstance(value, datetime | date))


def _holds_number(text: str) -> bool:
    return next(_candidates(text), None) is not None


def scan_record(
    datum: Any, exempt_fields: frozenset[str] = frozenset({"uan"})
) -> list[tuple[str, str]]:
    """(field path, number) for each distinct Aadhaar-like number in a decoded Avro datum.

    Walks dicts (values, and map keys), lists, strings, bytes (as Latin-1) and ints (a 12-digit
    int is a number). Paths are dotted with list indexes: ``items[0].commodity``; a map key is
    written masked in a path, and a hit in a map key is reported at the entry's (masked) path, so
    a path never carries the number. ``exempt_fields`` are full paths that are not scanned (the
    top-level ``uan`` by default). Each (path, number) is reported once, in walk order.

    Cost on an ordinary record: one type check per value, one length check per string and one
    regex search per string of 12 characters or more.
    """
    hits: dict[tuple[str, str], None] = {}
    quick = _QUICK.search

    def leaf(value: Any, path: str) -> None:
        """A value that is not a container; ``path`` is its full path."""
        kind = type(value)
        if kind is str:
            if len(value) >= _MIN_TEXT and quick(value) is not None:
                for _start, _end, digits in _candidates(value):
                    hits.setdefault((path, digits), None)
        elif kind is int:
            if 200_000_000_000 <= value < 1_000_000_000_000:
                number = _int_hit(value)
                if number is not None:
                    hits.setdefault((path, number), None)
        elif kind is bytes or kind is bytearray:
            leaf(bytes(value).decode("latin-1"), path)
        elif isinstance(value, str):  # str subclasses, e.g. StrEnum members
            leaf(str(value), path)
        elif isinstance(value, int) and not isinstance(value, bool):
            leaf(int(value), path)

    def walk(value: Any, path: str) -> None:
        kind = type(value)
        if kind is dict or (kind is not str and isinstance(value, Mapping)):
            exempt = _exempt_under(path, exempt_fields)
            for key, item in value.items():
                # Inlined fast paths: most keys are short or known field names, most values
                # short strings or small ints; a path is only built when needed.
                if type(key) is str and (len(key) < _MIN_TEXT or key in _CLEAN_KEYS):
                    name = key
                else:
                    name = _key_name(key)
                    if name != key:  # the key itself held a number
                        child = f"{path}.{name}" if path else name
                        for _start, _end, digits in _candidates(str(key)):
                            hits.setdefault((child, digits), None)
                if exempt and name in exempt:
                    continue
                item_kind = type(item)
                if item_kind is str:
                    if len(item) < _MIN_TEXT or quick(item) is None:
                        continue
                elif item_kind is int:
                    if not 200_000_000_000 <= item < 1_000_000_000_000:
                        continue
                elif item is None:
                    continue
                walk(item, f"{path}.{name}" if path else name)
        elif kind is list or kind is tuple:
            for index, item in enumerate(value):
                child = f"{path}[{index}]"
                if child not in exempt_fields:
                    walk(item, child)
        else:
            leaf(value, path)

    if "" not in exempt_fields:
        walk(datum, "")
    return list(hits)


def mask_record(
    datum: Any,
    hits: list[tuple[str, str]],
    exempt_fields: frozenset[str] = frozenset({"uan"}),
) -> Any:
    """A copy of ``datum`` with the hit numbers masked wherever they occur (all but the last 4
    digits replaced by ``X``), and any other Aadhaar-like number too, outside ``exempt_fields``.

    Strings keep their layout (``2345 6789 0124`` -> ``XXXX XXXX 0124``). A 12-digit int cannot
    hold an ``X`` and must stay an int to re-encode with its schema: it becomes the int of its
    last four digits (``234567890124`` -> ``124``). The input is not modified.
    """
    numbers = frozenset(number for _path, number in hits)

    def walk(value: Any, path: str) -> Any:
        kind = type(value)
        if kind is str:
            return _mask_text(value, numbers)
        if kind is int:
            if value >= 0 and (_int_hit(value) is not None or str(value) in numbers):
                return int(str(value)[-4:])
            return value
        if kind is dict or isinstance(value, Mapping):
            masked: dict[Any, Any] = {}
            for key, item in value.items():
                child = _child_path(path, key)
                if child in exempt_fields:
                    masked[key] = item
                else:
                    new_key = _mask_text(key, numbers) if type(key) is str else key
                    masked[new_key] = walk(item, child)
            return masked
        if kind is list or kind is tuple:
            items = [
                item if f"{path}[{index}]" in exempt_fields else walk(item, f"{path}[{index}]")
                for index, item in enumerate(value)
            ]
            return items if kind is list else tuple(items)
        if kind is bytes or kind is bytearray:
            return _mask_text(bytes(value).decode("latin-1"), numbers).encode("latin-1")
        if isinstance(value, str):
            masked_text = _mask_text(str(value), numbers)
            return value if masked_text == value else masked_text
        return value

    if "" in exempt_fields:
        return datum
    result: Any = walk(datum, "")
    return result
