"""Allocation months (``YYYY-MM``) as plain strings, and the arithmetic the rules need.

Pure. A month string sorts like its month (``"2024-09" < "2024-10"``), so strings can be compared
directly; ``month_index`` turns one into a count of months for differences and gaps.

``month_of`` takes the calendar month of an instant in India Standard Time. IST is a fixed
UTC+05:30 (Asia/Kolkata has had no other offset and no daylight saving since 1945), so a fixed
offset gives the same answer as the tz database without depending on one being installed.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache

IST = timezone(timedelta(hours=5, minutes=30), "IST")

_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])", re.ASCII)


@lru_cache(maxsize=4096)
def is_month(text: str) -> bool:
    """True when ``text`` is a well-formed ``YYYY-MM`` month (year 0001..9999)."""
    match = _MONTH.fullmatch(text)
    return match is not None and int(match.group(1)) >= 1


@lru_cache(maxsize=4096)  # the rules ask about the same few months again and again
def month_index(month: str) -> int:
    """Months since year 0: ``month_index(b) - month_index(a)`` is the distance from a to b.

    Raises ``ValueError`` for anything but ``YYYY-MM``.
    """
    match = _MONTH.fullmatch(month)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"not a YYYY-MM month: {month!r}")
    return int(match.group(1)) * 12 + int(match.group(2)) - 1


def month_from_index(index: int) -> str:
    """Inverse of ``month_index``."""
    year, month0 = divmod(index, 12)
    if not 1 <= year <= 9999:
        raise ValueError(f"month index out of range: {index}")
    return f"{year:04d}-{month0 + 1:02d}"


def add_months(month: str, count: int) -> str:
    """``month`` shifted by ``count`` months (negative goes back)."""
    return month_from_index(month_index(month) + count)


def months_between(start: str, end: str) -> int:
    """Signed distance in months: ``months_between("2024-01", "2024-03") == 2``."""
    return month_index(end) - month_index(start)


def month_of(instant: datetime) -> str:
    """The ``YYYY-MM`` month containing ``instant`` in Asia/Kolkata (IST, UTC+05:30).

    Raises ``ValueError`` for a naive datetime: an instant without a zone has no month.
    """
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"naive datetime has no month: {instant!r}")
    local = instant.astimezone(IST)
    return f"{local.year:04d}-{local.month:02d}"


def month_start(month: str) -> datetime:
    """The first instant of an allocation month, in Asia/Kolkata."""
    year, number = divmod(month_index(month), 12)
    return datetime(year, number + 1, 1, tzinfo=IST)
