"""Raw Aadhaar numbers where they must never be: test input for the Aadhaar guard.

A PDS system or the registry's CDC can leak an Aadhaar number into a record: the number sent
instead of the vault's ``member_ref`` token, or typed into a free-text field (a ration card
number, a shop id, an occupation). ``AadhaarInjector`` does that to a share of the simulated
records (``SimulationConfig.aadhaar_injection_rate``): each chosen record gets one fresh
Aadhaar-like number (12 digits, the first 2-9, Verhoeff-valid), written plain, in groups of
four with spaces or hyphens, or inside other text. A leak into ``member_ref`` leaks into the
message key too, which is the member_ref. Never into ``uan``: that field is exempt from the
guard by contract, and simulated UANs start with "10", so they never look like Aadhaar numbers.

Pure and deterministic: a ``random.Random`` seeded from the simulation's seed.
"""

from __future__ import annotations

import dataclasses
import random
from typing import NamedTuple

from eshram_locator.domain.aadhaar import verhoeff_check_digit
from eshram_locator.domain.model import RationCollection, WorkerRegistration

# The fields a leak can go into, by record (never uan).
COLLECTION_FIELDS = ("member_ref", "ration_card_id", "fps_id", "transaction_id", "commodity")
REGISTRATION_FIELDS = ("member_ref", "occupation_nco")


Record = RationCollection | WorkerRegistration


class Leak(NamedTuple):
    """One injected number and the field it went into."""

    field: str
    number: str


def aadhaar_like_number(rng: random.Random) -> str:
    """A fresh Aadhaar-like number: first digit 2-9, 10 random digits, the Verhoeff digit."""
    payload = str(rng.randint(2, 9)) + f"{rng.randrange(10**10):010d}"
    return payload + verhoeff_check_digit(payload)


def written(number: str, rng: random.Random) -> str:
    """The number as people write it: plain, grouped by spaces or hyphens."""
    style = rng.randrange(3)
    if style == 0:
        return number
    separator = " " if style == 1 else "-"
    return separator.join((number[:4], number[4:8], number[8:]))


class AadhaarInjector:
    """Decides, record by record, whether to leak a raw Aadhaar-like number into it."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self._rng = random.Random(f"eshram-locator/simulator/leaks/{seed}")

    def leak(self, record: Record) -> tuple[Record, Leak] | None:
        """``record`` with a leak, and where; None (most of the time): leave it alone."""
        rng = self._rng
        if rng.random() >= self.rate:
            return None
        number = aadhaar_like_number(rng)
        if isinstance(record, RationCollection):
            field = rng.choice(COLLECTION_FIELDS)
            leaked: Record = _leak_collection(record, field, number, rng)
        else:
            field = rng.choice(REGISTRATION_FIELDS)
            leaked = _leak_registration(record, field, number, rng)
        return leaked, Leak(field, number)


def _leak_collection(
    record: RationCollection, field: str, number: str, rng: random.Random
) -> RationCollection:
    text = written(number, rng)
    if field == "member_ref":  # the number sent instead of the vault's token
        return dataclasses.replace(record, member_ref=text)
    if field == "ration_card_id":
        return dataclasses.replace(record, ration_card_id=f"{record.ration_card_id} / {text}")
    if field == "fps_id":
        return dataclasses.replace(record, fps_id=f"{record.fps_id} {text}")
    if field == "transaction_id":
        return dataclasses.replace(record, transaction_id=f"{record.transaction_id}-{text}")
    first, *rest = record.items
    item = dataclasses.replace(first, commodity=f"{first.commodity} (aadhaar {text})")
    return dataclasses.replace(record, items=(item, *rest))


def _leak_registration(
    record: WorkerRegistration, field: str, number: str, rng: random.Random
) -> WorkerRegistration:
    text = written(number, rng)
    if field == "member_ref":
        return dataclasses.replace(record, member_ref=text)
    return dataclasses.replace(
        record, occupation_nco=f"{record.occupation_nco or 'worker'}, aadhaar no. {text}"
    )
