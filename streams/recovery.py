"""Faust's end of table recovery, reordered so that no input message is dropped after a restart.

faust-streaming 0.15.3 ends recovery (``Recovery.on_recovery_completed``) by resuming the input
partitions, then seeking them to the committed offsets, then resuming flow control, which
clears the stream queues. Messages fetched between the resume and the seek move the consumer's
read offset forward and are then cleared from the queues; the re-fetch after the seek is below
that read offset, so ``Consumer._drain_messages`` drops it ("DROPPED MESSAGE ROFF"), and the
next commit goes past it: the event is never processed (faust-streaming issues #216, #221,
#253).

``SeekBeforeResumeRecovery`` does the same steps in an order that cannot lose a message: stop
the flow, seek the input partitions to the committed offsets (still paused), then in one step
without yielding to the event loop set their read offsets to the committed ones, clear the
queues, resume the partitions and resume the flow. Nothing of the input partitions can be
fetched before the seek, and nothing fetched after it is cleared.

The override copies the rest of the upstream method as it is in ``FAUST_STREAMING_VERSION``;
``pyproject.toml`` pins that version and ``tests/unit/test_streams_recovery_order.py`` fails
when another one is installed, so that the override is reviewed against the new release.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final, cast

import structlog
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.types import TP

log = structlog.get_logger(__name__)

FAUST_STREAMING_VERSION: Final = "0.15.3"
"""The faust-streaming release whose ``Recovery.on_recovery_completed`` this module replaces."""


class SeekBeforeResumeRecovery(Recovery):
    """``Recovery`` that seeks the input partitions before it resumes them (see the module)."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        consumer = cast(Consumer, self.app.consumer)
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning(
                f"Recovery rebalancing again app id {self.app.consumer_generation_id}"
                f" param {generation_id}"
            )
            return
        inputs = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        # Until the seek is done, nothing may reach the stream queues.
        consumer.stop_flow()
        consumer.pause_partitions(inputs)
        committed: dict[TP, int] = {}
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(
                _seek_to_committed(consumer, committed),
                timeout=self.app.conf.broker_request_timeout,
            )
        # From here to the resumed flow, no await: the fetcher cannot run in between.
        _restart_reading_at(consumer, inputs, committed)
        self.completed.set()
        self.app.flow_control.resume()  # clears the queues: nothing of the inputs is in them
        consumer.resume_partitions(inputs)
        consumer.resume_flow()
        log.info("stream_partitions_resumed", partitions=len(inputs))
        await cast(Any, self.app)._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")


async def _seek_to_committed(consumer: Consumer, into: dict[TP, int]) -> None:
    into.update(await consumer.seek_to_committed())


def _restart_reading_at(consumer: Consumer, inputs: set[TP], committed: Mapping[TP, int]) -> None:
    """Forget what was read of ``inputs`` beyond the committed offsets (upstream's
    ``perform_seek`` bookkeeping, with every input partition reset, not only committed ones)."""
    for tp in inputs:
        offset = committed.get(tp)
        consumer._read_offset[tp] = offset if offset is not None and offset >= 0 else None
    consumer._committed_offset.update(
        {tp: offset or None for tp, offset in committed.items() if offset is not None}
    )


class StreamsTableManager(TableManager):
    """The table manager of the streams worker: ``SeekBeforeResumeRecovery`` as its recovery."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekBeforeResumeRecovery(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self._recovery
