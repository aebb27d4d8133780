"""SIGKILL the streams worker mid-stream and restart it on an empty data directory: the tables
are recovered from their changelogs, and the published migration flows equal the changes
(neither lost nor double counted)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eshram_locator.domain.model import ChangeType, District, Location, LocationChanged
from eshram_locator.domain.rules import retraction
from tests.integration.conftest import Pipeline
from tests.integration.test_streams_support import (
    TOKENS,
    StreamsWorker,
    TopicReader,
    api_get,
    moved,
    produce_changes,
    produce_registrations,
    registration,
    streams_topics,
    wait_until,
)

pytestmark = pytest.mark.integration
__all__ = ["streams_topics"]

HOMES = [Location(9, 901), Location(9, 902), Location(10, 1001)]
PLACES = [Location(27, 2701), Location(27, 2702), Location(7, 701), Location(24, 2401)]
Key = tuple[str, District, District]


def expected_flows(
    homes: dict[str, Location], changes: list[LocationChanged]
) -> tuple[dict[Key, tuple[int, int]], Counter[str]]:
    """Figures by the definitions, computed directly (not as the streams do)."""
    retracted = {c.supersedes_event_id for c in changes if c.change_type is ChangeType.RETRACTED}
    active: dict[str, list[LocationChanged]] = {}
    for change in changes:
        if change.change_type is not ChangeType.RETRACTED and change.event_id not in retracted:
            active.setdefault(change.uan, []).append(change)
    points: set[Key] = set()
    moves: Counter[Key] = Counter()
    per_month: Counter[str] = Counter()
    for uan, timeline in active.items():
        timeline.sort(key=lambda c: c.effective_month)
        origin = homes[uan].district
        for index, change in enumerate(timeline):
            key = (change.effective_month, origin, change.current_location.district)
            moves[key] += 1
            per_month[change.effective_month] += 1
            points.add(key)
            if index:
                left = timeline[index - 1].current_location.district
                points.add((change.effective_month, origin, left))

    def stock(month: str, origin: District, destination: District) -> int:
        count = 0
        for uan, timeline in active.items():
            if homes[uan].district != origin:
                continue
            before = [c for c in timeline if c.effective_month <= month]
            if before and before[-1].current_location.district == destination:
                count += 1
        return count

    figures = {key: (stock(*key), moves[key]) for key in points}
    return figures, per_month


def latest_flows(reader: TopicReader, pipeline: Pipeline) -> dict[Key, tuple[int, int]]:
    out: dict[Key, tuple[int, int]] = {}
    for topic, _, value, _ in reader.messages:
        if topic != pipeline.names.migration_flows or value is None:
            continue
        _, d = pipeline.codec.decode(value, "MigrationFlow")
        key = (
            d["month"],
            District(d["from_state_lgd"], d["from_district_lgd"]),
            District(d["to_state_lgd"], d["to_district_lgd"]),
        )
        out[key] = (d["workers"], d["moves_in"])
    return out


def wait_for_flows(
    reader: TopicReader, pipeline: Pipeline, figures: dict[Key, tuple[int, int]], what: str
) -> None:
    try:
        wait_until(
            lambda: matches(latest_flows(reader, pipeline), figures), 120, what, tick=reader.poll
        )
    except AssertionError:
        actual = latest_flows(reader, pipeline)
        assert {k: actual.get(k) for k in sorted({*actual, *figures})} == {
            k: figures.get(k) for k in sorted({*actual, *figures})
        }


def matches(actual: dict[Key, tuple[int, int]], figures: dict[Key, tuple[int, int]]) -> bool:
    """Every expected point is published with its figures; any other published point (one
    whose changes were all retracted) shows no moves."""
    if any(actual.get(key) != value for key, value in figures.items()):
        return False
    return all(value[1] == 0 for key, value in actual.items() if key not in figures)


def test_sigkill_then_restart_recovers_tables_and_counts_flows_once(
    pipeline: Pipeline, streams_topics: list[str], tmp_path: Path
) -> None:
    uans = [f"2000000000{n:02d}" for n in range(24)]
    homes = {uan: HOMES[n % len(HOMES)] for n, uan in enumerate(uans)}
    produce_registrations(pipeline, *(registration(uan, homes[uan], True) for uan in uans))
    phase_one = [
        moved(uan, homes[uan], homes[uan], PLACES[n % len(PLACES)], f"2025-0{1 + n % 3}")
        for n, uan in enumerate(uans)
    ]
    produce_changes(pipeline, *phase_one)
    reader = TopicReader(pipeline.endpoints.bootstrap_servers, [pipeline.names.migration_flows])
    worker = StreamsWorker(pipeline, tmp_path / "data-1", tmp_path / "streams.log")
    figures_one, _ = expected_flows(homes, phase_one)
    try:
        wait_for_flows(reader, pipeline, figures_one, "the first flows")
        # More changes while the worker runs, then SIGKILL in the middle of them.
        phase_two = [
            moved(
                uan, homes[uan], PLACES[n % len(PLACES)], PLACES[(n + 1) % len(PLACES)], "2025-05"
            )
            for n, uan in enumerate(uans[:12])
        ]
        retractions = [retraction(c, datetime(2025, 9, 1, tzinfo=UTC)) for c in phase_one[12:18]]
        produce_changes(pipeline, *phase_two[:6])
        worker.kill()
    finally:
        worker.stop()
    produce_changes(pipeline, *phase_two[6:], *retractions)
    everything = [*phase_one, *phase_two, *retractions]
    figures, per_month = expected_flows(homes, everything)

    # A new, empty data directory: everything must come back from the changelog topics.
    worker = StreamsWorker(pipeline, tmp_path / "data-2", tmp_path / "streams.log")
    try:
        wait_for_flows(reader, pipeline, figures, "the flows after the restart")
        reader.poll(3)
        actual = latest_flows(reader, pipeline)
        assert matches(actual, figures)
        published_moves: Counter[str] = Counter()
        for (month, _, _), (_, moves_in) in actual.items():
            published_moves[month] += moves_in
        assert published_moves == per_month  # flow totals equal the changes of each month

        # A worker only phase one touched: its view survived the SIGKILL and the new data dir.
        status, body = api_get(
            worker.port,
            f"/v1/workers/{uans[20]}",
            TOKENS["09" if homes[uans[20]].state_lgd == 9 else "10"],
        )
        assert status == 200
        assert [h["event_id"] for h in body["history"]] == [phase_one[20].event_id]
    finally:
        worker.stop()
        reader.close()
