"""The locator's malloc setting: large blocks freed between live ones go back to the system."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A fresh interpreter each time (mallopt is process-wide): a freed 8 MB block raises glibc's
# mmap threshold, then 100 blocks of 1 MB come from the heap between smaller live blocks (20 KB:
# malloc's, not pymalloc's, and too large for the free fragments the imports left) and are
# freed. How much of them stays resident?
_SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    from consumers.locator import release_large_blocks

    def rss_mb():
        status = open("/proc/self/status").read()
        return int(re.search(r"VmRSS:\\s+(\\d+)", status).group(1)) / 1024

    released = release_large_blocks() if sys.argv[1] == "on" else None
    first = bytes(8 << 20)
    del first
    before = rss_mb()
    live, blocks = [], []
    for _ in range(100):
        blocks.append(bytes(1 << 20))
        live.append(bytes(20_000))
    del blocks
    print(json.dumps({"released": released, "retained_mb": rss_mb() - before}))
    """
)


def _run(mode: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_large_blocks_freed_between_live_ones_are_not_kept() -> None:
    default, released = _run("off"), _run("on")
    assert released["released"] is True
    assert isinstance(default["retained_mb"], float)
    assert isinstance(released["retained_mb"], float)
    # the default keeps a tenth or more of the 100 MB freed; with the setting, next to nothing
    assert default["retained_mb"] >= 8
    assert released["retained_mb"] < 4
