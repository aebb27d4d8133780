"""The local PostgreSQL's buffer cache is sized to the machine it runs on, and its clients
connect through its unix socket where they can."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from eshram_locator.local.postgres_server import shared_buffers_mb, socket_host

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


def test_clients_connect_through_the_socket_where_its_path_fits(tmp_path: Path) -> None:
    assert socket_host(tmp_path, 55432) == str(tmp_path)


def test_a_socket_path_too_long_for_an_address_falls_back_to_tcp(tmp_path: Path) -> None:
    # "/.s.PGSQL.55432" is 15 bytes: a directory of 93 leaves the path one byte over (108).
    deep = Path("/" + "d" * 92)
    assert len(os.fsencode(deep / ".s.PGSQL.55432")) == 108
    assert socket_host(deep, 55432) == "127.0.0.1"
    fits = Path("/" + "d" * 91)
    assert socket_host(fits, 55432) == str(fits)
