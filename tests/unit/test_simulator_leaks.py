"""The simulator's identities never look like Aadhaar numbers; its injected leaks always do."""

from __future__ import annotations

import random

from eshram_locator.domain.aadhaar import find_aadhaar_like, is_aadhaar_like, scan_record
from eshram_locator.records import to_avro
from eshram_locator.simulator.config import SimulationConfig
from eshram_locator.simulator.leaks import aadhaar_like_number, written
from eshram_locator.simulator.population import simulate
from eshram_locator.topics import COLLECTIONS


def test_simulated_records_hold_no_aadhaar_like_number_anywhere() -> None:
    """Not even in ``uan``, which the guard exempts: simulated UANs start with "10"."""
    simulation = simulate(SimulationConfig(seed=3, workers=2_000, months=6))
    uans = set()
    for message in simulation.messages():
        assert not find_aadhaar_like(message.key)
        if message.value is None:
            continue
        _, datum = to_avro(message.value)
        assert scan_record(datum, exempt_fields=frozenset()) == [], message
        if message.topic != COLLECTIONS:
            uans.add(datum["uan"])
    assert uans
    assert not any(is_aadhaar_like(uan) for uan in uans)
    assert all(uan.startswith("10") and len(uan) == 12 for uan in uans)


def test_leaked_numbers_are_aadhaar_like_in_every_written_form() -> None:
    rng = random.Random(1)
    for _ in range(2_000):
        number = aadhaar_like_number(rng)
        assert is_aadhaar_like(number)
        assert find_aadhaar_like(f"x {written(number, rng)} y") == [number]


def test_injection_leaks_the_configured_share_into_token_and_free_text_fields() -> None:
    clean = list(simulate(SimulationConfig(seed=5, workers=500, months=6)).messages())
    leaky = list(
        simulate(
            SimulationConfig(seed=5, workers=500, months=6, aadhaar_injection_rate=0.1)
        ).messages()
    )
    assert len(leaky) == len(clean)
    fields: set[str] = set()
    leaked = 0
    for before, after in zip(clean, leaky, strict=True):
        assert after.topic == before.topic
        if after.value is None:
            assert after == before
            continue
        _, datum = to_avro(after.value)
        hits = scan_record(datum)
        if after == before:
            assert hits == []
            continue
        leaked += 1
        assert len({number for _, number in hits}) == 1
        fields.update(path.split("[")[0].split(".")[0] for path, _ in hits)
        if after.topic == COLLECTIONS:
            assert after.key == after.value.member_ref  # a leaked token leaks into the key
    assert 0.07 * len(clean) < leaked < 0.13 * len(clean)
    assert {"member_ref", "ration_card_id", "fps_id", "transaction_id", "items"} <= fields
    assert "occupation_nco" in fields
    assert "uan" not in fields
