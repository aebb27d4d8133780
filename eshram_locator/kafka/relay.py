"""The outbox relay: publishes what the locator committed, then forgets it.

Rows are read in id order and produced with the idempotent producer; only after every delivery
is acknowledged are they deleted. One relay runs at a time (a transaction-scoped advisory lock),
so per-key order holds even with several locator processes. A crash between delivery and delete
publishes the same rows again: byte-identical duplicates, which consumers drop by ``event_id``.
"""

from __future__ import annotations

import psycopg
import structlog
from confluent_kafka import Producer

from eshram_locator.kafka.clients import DeliveryTracker, flush_all
from eshram_locator.postgres.store import LocatorStore

log = structlog.get_logger(__name__)

_RELAY_LOCK = 0x6F75_7462_6F78  # "outbox"


class OutboxRelay:
    def __init__(
        self, conninfo: str, producer: Producer, chunk: int = 20_000, flush_timeout_s: float = 30
    ) -> None:
        self._conninfo = conninfo
        self._producer = producer
        self._chunk = chunk
        self._flush_timeout_s = flush_timeout_s
        self._store: LocatorStore | None = None
        self._tracker = DeliveryTracker()

    def drain(self) -> int:
        """Publish every pending row; returns how many. 0 if another relay holds the lock."""
        published = 0
        while True:
            store = self._connected()
            with store.unit_of_work():
                if not store.try_relay_lock(_RELAY_LOCK):
                    return published
                pending = store.pending_outbox(self._chunk)
                if not pending:
                    return published
                for item in pending:
                    row = item.row
                    self._producer.produce(
                        row.topic,
                        row.value,
                        row.key,
                        headers=list(row.headers),
                        on_delivery=self._tracker,
                    )
                    self._producer.poll(0)
                flush_all(self._producer, self._flush_timeout_s)
                self._tracker.raise_if_failed()
                store.delete_outbox([item.id for item in pending])
            published += len(pending)
            log.debug("outbox_published", rows=len(pending))

    def _connected(self) -> LocatorStore:
        if self._store is None or self._store.closed:
            self._store = LocatorStore(psycopg.connect(self._conninfo, autocommit=False))
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
