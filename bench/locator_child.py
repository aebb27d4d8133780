#!/usr/bin/env python3
"""The real locator (``bootstrap.locator_process``), timed: a child process of bench/run and
bench/batch_sweep. Not meant to be run by hand.

It runs until SIGTERM and writes a JSON status file after every batch (atomically):

* ``first_at``: wall time (``time.time()``) when the first non-empty ``consume()`` returned;
* ``reached``: the totals and the wall time of the ``on_batch`` call at which ``consumed`` first
  reached ``--expected``. ``on_batch`` runs after the batch's transaction (state, outbox,
  offsets) has committed and the relay has published the outbox and flushed the producer (every
  output delivered), so ``reached.at - first_at`` is "first message consumed to last output
  delivered and offsets committed";
* ``stages_s``: wall seconds spent in ``consume()``, ``Locator.apply_batch`` (rules and SQL)
  and ``OutboxRelay.drain`` (publishing); the rest of a batch is decode/validate, the outbox
  COPY, the offsets and the COMMIT;
* ``vm_hwm_kb``: this process's peak RSS (VmHWM of /proc/self/status), and ``rss_trace``:
  [consumed, VmRSS kB] every 10th batch; ``stage_trace``: [consumed, wall time, stages_s]
  every 10th batch (with --fine-timers, ``stages_s`` also splits a batch into decoding, each
  store method and the rules);
* ``cpu_s`` (in ``reached``): CPU seconds of the process (every thread, librdkafka's too) from
  the first message to ``reached.at``: compared with the wall time, how much the locator waited
  (on PostgreSQL, the broker) rather than computed.

The timers wrap the consumer that ``clients.batch_consumer`` builds and two public methods;
the locator's own code and wiring are used as they are.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, Message

from bench.harness import proc_status_kb, vm_hwm_kb, write_status
from consumers import locator as locator_module
from consumers.locator import Totals
from eshram_locator import bootstrap, locating
from eshram_locator.kafka import clients
from eshram_locator.kafka.relay import OutboxRelay
from eshram_locator.locating import Locator
from eshram_locator.logging_setup import configure_logging
from eshram_locator.postgres.store import LocatorStore

_F = TypeVar("_F", bound=Callable[..., Any])

STAGES: dict[str, float] = {"consume": 0.0, "apply_batch": 0.0, "relay_drain": 0.0}
FIRST: dict[str, float] = {}
#: Finer timers inside a batch, with --fine-timers: (owner, attribute, stage name). An attribute
#: that no longer exists is skipped (the service code changes; the bench must not break).
FINE_TIMERS: tuple[tuple[Any, str, str], ...] = (
    (locator_module, "read_collection", "decode_validate"),
    (locator_module, "read_registration", "decode_validate"),
    (LocatorStore, "lock_members", "sql_lock_members"),
    (LocatorStore, "save_histories", "sql_save_histories"),
    (LocatorStore, "workers", "sql_workers"),
    (LocatorStore, "changes", "sql_changes"),
    (LocatorStore, "record_changes", "sql_record_changes"),
    (LocatorStore, "save_workers", "sql_save_workers"),
    (LocatorStore, "update_derived", "sql_update_derived"),
    (LocatorStore, "enqueue", "sql_enqueue_outbox"),
    (LocatorStore, "save_offsets", "sql_save_offsets"),
    (locating.Locator, "_add_collections", "rules_add_collections"),
    (locating, "derive_from_history", "rules_derive_timeline"),
    (locating, "reconcile_published", "rules_reconcile"),
)


class TimedConsumer:
    """Delegates to the service's consumer; times ``consume`` and notes the first message."""

    def __init__(self, inner: Consumer) -> None:
        self._inner = inner

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        started = time.perf_counter()
        messages = self._inner.consume(num_messages, timeout)
        STAGES["consume"] += time.perf_counter() - started
        if messages and "first_at" not in FIRST:
            FIRST["first_at"] = time.time()
            FIRST["cpu_at_first"] = time.process_time()
        return messages

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _timed(stage: str, method: _F) -> _F:
    STAGES.setdefault(stage, 0.0)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            STAGES[stage] += time.perf_counter() - started

    return cast(_F, wrapper)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers.")
    parser.add_argument("--dsn", required=True, help="libpq DSN of the run's database.")
    parser.add_argument("--prefix", required=True, help="Topic prefix of the run.")
    parser.add_argument("--group", required=True, help="Consumer group.")
    parser.add_argument("--expected", type=int, required=True, help="Input messages to time.")
    parser.add_argument("--status", type=Path, required=True, help="JSON status file to write.")
    parser.add_argument("--batch-size", type=int, help="LOCATOR_BATCH_SIZE for this run.")
    parser.add_argument(
        "--start-when",
        type=Path,
        help="Join the consumer group only once this file exists (after ready_at): several"
        " children start together, not as fast as each one's imports and connections allow.",
    )
    parser.add_argument(
        "--fine-timers",
        action="store_true",
        help="Also time decoding, each store method and the rules (a few us per call).",
    )
    args = parser.parse_args()

    settings = bootstrap.load_settings()
    configure_logging(settings.log_level, settings.log_format)
    update: dict[str, Any] = {"topic_prefix": args.prefix, "consumer_group": args.group}
    if args.batch_size is not None:
        update["batch_size"] = args.batch_size
    settings = settings.model_copy(update=update)
    endpoints = bootstrap.Endpoints(args.bootstrap, args.dsn)

    build_consumer = clients.batch_consumer
    clients.batch_consumer = lambda *a, **k: cast(Consumer, TimedConsumer(build_consumer(*a, **k)))
    Locator.apply_batch = _timed("apply_batch", Locator.apply_batch)  # type: ignore[method-assign]
    OutboxRelay.drain = _timed("relay_drain", OutboxRelay.drain)  # type: ignore[method-assign]
    if args.fine_timers:
        for owner, attribute, stage in FINE_TIMERS:
            if hasattr(owner, attribute):
                setattr(owner, attribute, _timed(stage, getattr(owner, attribute)))

    status: dict[str, Any] = {
        "pid": os.getpid(),
        "batch_size": settings.batch_size,
        "expected": args.expected,
        "started_at": time.time(),
        "rss_trace": [],  # [consumed, VmRSS kB] every 10th batch
        "stage_trace": [],  # [consumed, wall time, {stage: cumulative s}] every 10th batch
    }

    def report(totals: Totals, *, exited: bool = False) -> None:
        now = time.time()
        status.update(
            consumed=totals.consumed,
            batches=totals.batches,
            changes=totals.changes,
            address_requests=totals.address_requests,
            dead_lettered=totals.dead_lettered,
            first_at=FIRST.get("first_at"),
            last_batch_at=now,
            stages_s=dict(STAGES),
            vm_hwm_kb=vm_hwm_kb(),
            exited=exited,
        )
        if totals.batches % 10 == 0:
            status["rss_trace"].append([totals.consumed, proc_status_kb("VmRSS")])
            status["stage_trace"].append([totals.consumed, now, dict(STAGES)])
        if "reached" not in status and totals.consumed >= args.expected:
            status["reached"] = {
                "at": now,
                "consumed": totals.consumed,
                "batches": totals.batches,
                "changes": totals.changes,
                "address_requests": totals.address_requests,
                "dead_lettered": totals.dead_lettered,
                "stages_s": dict(STAGES),
                "cpu_s": time.process_time() - FIRST.get("cpu_at_first", 0.0),
                "vm_hwm_kb": vm_hwm_kb(),
            }
        write_status(args.status, status)

    process = bootstrap.locator_process(settings, endpoints, on_batch=report)
    process.install_signal_handlers()
    status["ready_at"] = time.time()
    write_status(args.status, status)
    while args.start_when is not None and not args.start_when.exists():
        time.sleep(0.005)
    totals = process.run()
    report(totals, exited=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
