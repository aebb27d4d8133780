#!/usr/bin/env python3
"""Summarise a py-spy raw (collapsed stacks) profile: where the wall time goes.

    python bench/profile_summary.py PROFILE [--top 25] [--thread-filter TEXT]

``bench/run --profile PROFILE`` records the locator with ``py-spy record --idle --format raw``:
one line per distinct stack, ``frame;frame;...;frame count``, outermost first. Idle samples are
included, so waiting on PostgreSQL or the broker shows up as the frame that waits. Prints four
Markdown tables, as shares of all samples: the named stages of a batch (inclusive), the samples
spent waiting for PostgreSQL by stage, the frames with the most samples at the top of the stack
(self), and the project's own functions (``eshram_locator/``, ``consumers/``, inclusive).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

#: Stages of a locator batch, by a frame that marks them (first match from the leaf wins).
STAGES = (
    ("consume (librdkafka)", "TimedConsumer.consume"),
    ("decode + validate", "read_collection"),
    ("decode + validate", "read_registration"),
    ("relay: publish outbox", "OutboxRelay.drain"),
    ("store.lock_members (INSERT + SELECT .. FOR UPDATE, histories)", "LocatorStore.members"),
    ("store.lock_members (INSERT + SELECT .. FOR UPDATE, histories)", "LocatorStore.lock_members"),
    ("store.save_histories (UPDATE .. FROM unnest)", "LocatorStore.save_histories"),
    ("store.workers (SELECT)", "LocatorStore.workers"),
    ("store.changes (stale changes)", "LocatorStore.changes"),
    ("store.record_changes (INSERT .. FROM unnest)", "LocatorStore.record_changes"),
    ("store.save_workers (INSERT .. FROM unnest)", "LocatorStore.save_workers"),
    ("store.update_derived (UPDATE .. FROM unnest)", "LocatorStore.update_derived"),
    ("store.enqueue (COPY outbox)", "LocatorStore.enqueue"),
    ("store.save_offsets", "LocatorStore.save_offsets"),
    ("rules: add collections to histories", "Locator._add_collections"),
    ("rules: derive_timeline", "derive_from_history"),
    ("rules: reconcile", "reconcile_published"),
    ("encode outgoing Avro", "AvroCodec.encode"),
    ("decode stored Avro (registration, changes)", "Locator._registration"),
    ("decode stored Avro (registration, changes)", "Locator._change"),
    ("commit (unit_of_work exit)", "LocatorStore.unit_of_work"),
    ("purge unregistered", "LocatorProcess._purge"),
    ("batch: other (RawMessage, dead letters, bookkeeping)", "LocatorProcess._process"),
    ("loop: other", "LocatorProcess.run"),
)
_PROJECT_MARKERS = ("eshram_locator/", "consumers/")
_LINE = re.compile(r":\d+\)$")


def function_of(frame: str) -> str:
    """``name (file:line)`` -> ``name (file)``: py-spy's raw frames carry the line."""
    return _LINE.sub(")", frame)


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
    return stacks


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, marker in STAGES:
            if marker in frame:
                return name
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy raw output (bench/run --profile).")
    parser.add_argument("--top", type=int, default=25, help="Rows per table (default 25).")
    parser.add_argument(
        "--lines", action="store_true", help="Keep line numbers (default: per function)."
    )
    parser.add_argument(
        "--thread-filter",
        default="",
        help="Keep only stacks whose first frame contains this text (e.g. a thread name).",
    )
    args = parser.parse_args()
    stacks = [(f, n) for f, n in load(args.profile) if args.thread_filter in f[0]]
    total = sum(n for _, n in stacks)
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    leaf: Counter[str] = Counter()
    own: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    waits: Counter[str] = Counter()  # samples waiting on PostgreSQL's answer, by stage
    for frames, count in stacks:
        if not args.lines:
            frames = [function_of(frame) for frame in frames]
        leaf[frames[-1]] += count
        for frame in set(frames):
            if any(marker in frame for marker in _PROJECT_MARKERS):
                own[frame] += count
        stages[stage_of(frames)] += count
        if "psycopg" in frames[-1] and "wait" in frames[-1]:
            waits[stage_of(frames)] += count

    def table(title: str, counter: Counter[str], top: int) -> None:
        print(f"\n{title}\n\n| share | frame |\n|---:|---|")
        for frame, count in counter.most_common(top):
            print(f"| {count / total:.1%} | `{frame}` |")

    print(f"{total} samples in {args.profile}")
    table("Stages of a batch (inclusive, first marker from the leaf)", stages, len(STAGES) + 1)
    table("Waiting for PostgreSQL (psycopg Connection.wait), by stage", waits, len(STAGES) + 1)
    table("Top frames (self)", leaf, args.top)
    table("Project functions (inclusive)", own, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
