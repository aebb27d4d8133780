"""The local PostgreSQL's buffer cache is sized to the machine it runs on."""

from __future__ import annotations

import pytest

from eshram_locator.local.postgres_server import shared_buffers_mb

GB = 1 << 30


@pytest.mark.parametrize(
    ("memory", "expected_mb"),
    [
        (24 * GB, 4096),  # capped
        (16 * GB, 4096),
        (8 * GB, 2048),  # a quarter
        (2 * GB, 512),
        (256 << 20, 128),  # never below PostgreSQL's default
    ],
)
def test_a_quarter_of_the_memory_between_128_mb_and_4_gb(memory: int, expected_mb: int) -> None:
    assert shared_buffers_mb(memory) == expected_mb
