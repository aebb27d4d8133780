"""The locator's transactions against a real PostgreSQL: what it redoes, and when."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import psycopg

from consumers.locator import LocatorConfig, LocatorProcess
from eshram_locator.avro_codec import load_codec
from eshram_locator.postgres.migrate import apply_migrations
from eshram_locator.postgres.store import LocatorStore
from eshram_locator.topics import TopicNames

AVRO_DIR = Path(__file__).resolve().parents[2] / "avro"


def test_a_deadlocked_batch_is_redone_at_once(fresh_database: str) -> None:
    """Two locators' batches can lock the same members in opposite orders (a registration
    locks a member whose collections the other process reads). PostgreSQL rolls one back; it
    is redone at once, without the backoff of a server that is away: here, with a stop already
    requested, a backoff would give up instead of redoing."""
    apply_migrations(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as setup:
        setup.execute("INSERT INTO members (member_ref) VALUES ('MR-A'), ('MR-B')")
    process = LocatorProcess(
        consumer=None,  # type: ignore[arg-type]
        conninfo=fresh_database,
        codec=load_codec(AVRO_DIR),
        locator=None,  # type: ignore[arg-type]
        relay=None,  # type: ignore[arg-type]
        config=LocatorConfig("g", TopicNames(""), 10, 0.1, timedelta(days=1)),
    )
    a_locked, b_locked = threading.Event(), threading.Event()
    attempts: list[int] = []

    def batch(store: LocatorStore) -> str:
        attempts.append(1)
        with store.unit_of_work():
            store.lock_members(["MR-A"])
            a_locked.set()
            b_locked.wait(10)
            store.lock_members(["MR-B"])  # the other holds B and is about to wait for A
        return "committed"

    def other() -> None:
        with psycopg.connect(fresh_database, autocommit=False) as conn:
            a_locked.wait(10)
            conn.execute("SELECT 1 FROM members WHERE member_ref = 'MR-B' FOR UPDATE")
            b_locked.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until the batch waits for B
                (waiting,) = conn.execute(  # type: ignore[misc]
                    "SELECT count(*) FROM pg_locks WHERE NOT granted"
                ).fetchone()
                if waiting:
                    break
                time.sleep(0.01)
            # Waits later than the batch: the batch's deadlock check runs first and rolls it
            # back; then this one gets A.
            conn.execute("SELECT 1 FROM members WHERE member_ref = 'MR-A' FOR UPDATE")
            conn.commit()

    thread = threading.Thread(target=other)
    thread.start()
    process.request_stop()
    try:
        assert process._with_store(batch) == "committed"
    finally:
        thread.join(30)
        if process._store is not None:
            process._store.close()
    assert len(attempts) == 2
