"""The end of table recovery (``streams.recovery``): the input partitions are sought to their
committed offsets before they are resumed, so a restarted worker never drops re-fetched input.
Against a recording consumer; no broker."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import pytest
from faust.tables.recovery import Recovery
from faust.types import TP

from eshram_locator.avro_codec import load_codec
from eshram_locator.settings import REPO_ROOT
from eshram_locator.topics import TopicNames
from streams.app import StreamsApp, StreamsConfig
from streams.recovery import (
    FAUST_STREAMING_VERSION,
    SeekBeforeResumeRecovery,
    StreamsTableManager,
)

INPUT = TP("u.eshram.location-changes.v1", 0)
CHANGELOG = TP("unit-streams-workers-changelog", 0)
COMMITTED = 42


def test_the_installed_faust_is_the_one_the_override_was_written_for() -> None:
    """``SeekBeforeResumeRecovery`` replaces a faust method line by line. Another faust release
    may change that method (or fix it upstream): review the override, then move the pin in
    ``pyproject.toml`` and ``FAUST_STREAMING_VERSION`` together."""
    assert version("faust-streaming") == FAUST_STREAMING_VERSION
    assert (REPO_ROOT / "pyproject.toml").read_text().count(
        f'"faust-streaming=={FAUST_STREAMING_VERSION}"'
    ) == 1


class RecordingConsumer:
    """The part of faust's consumer that the end of recovery uses, with a journal of calls."""

    def __init__(self) -> None:
        self.journal: list[str] = []
        self.active: set[TP] = {CHANGELOG}
        self.flow_active = True
        # The worker read ahead of the committed offset before the restart's seek.
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._read_offset[INPUT] = 57
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self.inputs_fetchable_during_seek: bool | None = None

    def assignment(self) -> set[TP]:
        return {INPUT, CHANGELOG}

    def stop_flow(self) -> None:
        self.journal.append("stop_flow")
        self.flow_active = False

    def resume_flow(self) -> None:
        self.journal.append("resume_flow")
        self.flow_active = True

    def pause_partitions(self, tps: set[TP]) -> None:
        self.journal.append("pause_partitions")
        self.active -= set(tps)

    def resume_partitions(self, tps: set[TP]) -> None:
        self.journal.append("resume_partitions")
        self.active |= set(tps)

    async def seek_to_committed(self) -> Mapping[TP, int | None]:
        self.journal.append("seek_to_committed")
        self.inputs_fetchable_during_seek = self.flow_active and INPUT in self.active
        await asyncio.sleep(0)  # the fetcher could run here
        return {INPUT: COMMITTED, CHANGELOG: None}

    async def perform_seek(self) -> None:  # upstream's seek; the override must not need it
        self.journal.append("perform_seek")


class IdleFetcher:
    async def maybe_start(self) -> None:
        return None


@pytest.fixture
def streams(tmp_path: Path) -> StreamsApp:
    return StreamsApp(
        StreamsConfig(
            app_id="unit-streams",
            bootstrap_servers="127.0.0.1:1",
            names=TopicNames("u."),
            partitions=1,
            store="memory://",
            data_dir=tmp_path,
        ),
        load_codec(REPO_ROOT / "avro", None),
    )


def recovery_of(streams: StreamsApp) -> Recovery:
    tables = streams.app.tables
    assert isinstance(tables, StreamsTableManager)
    return tables.recovery


def test_the_streams_app_recovers_with_the_override(streams: StreamsApp) -> None:
    assert type(recovery_of(streams)) is SeekBeforeResumeRecovery


def test_inputs_are_sought_before_resumed_and_read_again_from_the_committed_offset(
    streams: StreamsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = streams.app
    consumer = RecordingConsumer()
    app.consumer = cast(Any, consumer)
    monkeypatch.setitem(app.__dict__, "_fetcher", IdleFetcher())
    monkeypatch.setattr(app.tables, "_changelogs", {CHANGELOG.topic: streams.workers})
    flow_control_resume = app.flow_control.resume

    def resume_and_clear() -> None:
        consumer.journal.append("flow_control.resume")
        flow_control_resume()

    monkeypatch.setattr(app.flow_control, "resume", resume_and_clear)

    async def end_of_recovery() -> None:  # the services bind to the loop that runs this
        await recovery_of(streams).on_recovery_completed(app.consumer_generation_id)

    asyncio.run(asyncio.wait_for(end_of_recovery(), timeout=10))

    assert consumer.journal == [
        "stop_flow",
        "pause_partitions",
        "seek_to_committed",
        "flow_control.resume",  # clears the queues before anything of the inputs can be fetched
        "resume_partitions",
        "resume_flow",
    ]
    assert consumer.inputs_fetchable_during_seek is False
    assert consumer._read_offset[INPUT] == COMMITTED  # the re-fetch is not dropped as read
    assert consumer._committed_offset[INPUT] == COMMITTED
    assert consumer.active == {CHANGELOG, INPUT}
    assert recovery_of(streams).completed.is_set()
