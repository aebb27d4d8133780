"""The command line as a user runs it: ``python -m eshram_locator ...`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "eshram_locator", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_services_status_prints_one_line_per_service() -> None:
    result = run_cli("services", "status", timeout_s=60)
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stdout)
    assert [line.split(":", 1)[0] for line in lines] == ["kafka", "postgres"], result.stdout


def test_a_bad_setting_exits_2_naming_the_variable() -> None:
    result = run_cli("services", "status", env={"LOCATOR_BATCH_SIZE": "abc"}, timeout_s=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = _lines(result.stderr)
    assert "LOCATOR_BATCH_SIZE" in line
    assert "Traceback" not in result.stderr


def test_an_unknown_setting_exits_2_naming_the_variable() -> None:
    result = run_cli("services", "status", env={"LOCATOR_BATCH_SIZ": "1"}, timeout_s=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = _lines(result.stderr)
    assert "LOCATOR_BATCH_SIZ" in line
    assert "LOCATOR_BATCH_SIZE" in line  # the suggestion


def test_demo_prints_the_summary(tmp_path: Path) -> None:
    result = run_cli(
        "demo", "--workers", "300", "--months", "6", "--out", str(tmp_path), timeout_s=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout
    for heading in (
        "events in",
        "changes out",
        "dead-lettered",
        "precision",
        "recall",
        "effective month",
        "top migration corridors, state -> state",
        "top migration corridors, district -> district",
    ):
        assert heading in summary, f"{heading!r} missing from:\n{summary}"
    assert (tmp_path / "ground-truth.jsonl").is_file()
