"""Helpers shared by the locator's process-level tests: the real locator process and the final
state that runs are compared by."""

from __future__ import annotations

import os
import sys
from collections import defaultdict

import psycopg

from eshram_locator.domain.model import ChangeType
from eshram_locator.records import location_changed_from_avro
from tests.integration.conftest import Pipeline


def locator_command(pipeline: Pipeline, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCATOR_")}
    env.update(
        {
            "LOCATOR_TOPIC_PREFIX": pipeline.names.prefix,
            "LOCATOR_POSTGRES_DSN": pipeline.endpoints.postgres_dsn,
            "LOCATOR_POSTGRES_OWNER_DSN": pipeline.endpoints.owner_dsn,
            "LOCATOR_KAFKA_BOOTSTRAP": pipeline.endpoints.bootstrap_servers,
            "LOCATOR_CONSUMER_GROUP": pipeline.settings.consumer_group,
            "LOCATOR_BATCH_SIZE": "250",
            "LOCATOR_BATCH_TIMEOUT_S": "0.25",
            "LOCATOR_LOG_LEVEL": os.environ.get("CRASH_TEST_LOG_LEVEL", "WARNING"),
        }
    )
    return [sys.executable, "-m", "eshram_locator", "locator", *args], env


#: (transactions counted, members with any) over every member history (migration 0003).
COUNT_OBSERVATIONS = (
    "SELECT coalesce(sum(history_transactions(history)), 0), count(history) FROM members"
)


#: Members whose worker head (migration 0004) is not their worker row's: always none. A member
#: without a worker row (uan NULL, or for a moment none written yet) has no head.
ASTRAY_WORKER_HEADS = (
    "SELECT m.member_ref FROM members m LEFT JOIN workers w ON w.uan = m.uan"
    " WHERE (m.worker_state_lgd, m.worker_district_lgd, m.worker_rebaseline) IS DISTINCT FROM"
    " (w.current_state_lgd, w.current_district_lgd, w.baselines -> -1 ->> 0)"
)


def worker_heads_astray(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [str(ref) for (ref,) in conn.execute(ASTRAY_WORKER_HEADS)]


def committed(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets").fetchone()
    return int(row[0]) if row else 0


def unsettled(*dsns: str) -> set[str]:
    """The uans with a change that stopped holding in any of the runs.

    Two runs whose batches fall at different offsets can find a worker's move at different
    moments: one may first find a later effective month and retract it when a late collection
    arrives, while the other finds the earlier month at once. Both end with the same changes
    holding, but an address request sent for the retracted change stays sent, and with it the
    rule 9 cooldown (``last_address_request_at``). For these workers the runs are compared on
    what holds, not on what was sent along the way."""
    found: set[str] = set()
    for dsn in dsns:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT DISTINCT uan FROM location_changes WHERE NOT active")
            found.update(str(uan) for (uan,) in rows)
    return found


def final_state(dsn: str, unsettled: set[str] | frozenset[str] = frozenset()) -> dict[str, object]:
    """What a run leaves in PostgreSQL; for ``unsettled`` workers, without the rule 9 cooldown.
    Checks on the way that every member's worker head is their worker row's."""
    assert worker_heads_astray(dsn) == []
    with psycopg.connect(dsn) as conn:
        return {
            "workers": sorted(
                (*row[:5], None if row[0] in unsettled else row[5])
                for row in conn.execute(
                    "SELECT uan, member_ref, baselines::text, current_state_lgd,"
                    " current_district_lgd, last_address_request_at FROM workers"
                )
            ),
            "active_changes": sorted(
                conn.execute(
                    "SELECT event_id::text, uan, change_type, effective_month"
                    " FROM location_changes WHERE active"
                ).fetchall()
            ),
            "observations": conn.execute(COUNT_OBSERVATIONS).fetchone(),
            "outbox": conn.execute("SELECT count(*) FROM outbox").fetchone(),
        }


def published_once(target: Pipeline) -> dict[str, bytes]:
    """event_id -> its payload on the central topic; fails if an event was published twice
    with different bytes (a copy byte for byte is the at-least-once relay's right)."""
    payloads: dict[str, set[bytes]] = defaultdict(set)
    for _, value, _ in target.consume_all(target.names.location_changes):
        event = location_changed_from_avro(target.codec.decode(value or b"", "LocationChanged")[1])
        payloads[event.event_id].add(value or b"")
    assert all(len(copies) == 1 for copies in payloads.values()), "an event changed on replay"
    return {event_id: next(iter(copies)) for event_id, copies in payloads.items()}


def holding(target: Pipeline) -> set[str]:
    """The ids of the changes that still hold, read from the central topic as a consumer would."""
    active: set[str] = set()
    for _, value, _ in target.consume_all(target.names.location_changes, timeout_s=2):
        event = location_changed_from_avro(target.codec.decode(value or b"", "LocationChanged")[1])
        if event.change_type is ChangeType.RETRACTED:
            active.discard(event.supersedes_event_id or "")
        else:
            active.add(event.event_id)
    return active


def address_requests(
    target: Pipeline, unsettled: set[str] | frozenset[str] = frozenset()
) -> set[bytes]:
    """The address requests a run published, but those of ``unsettled`` workers."""
    return {
        value or b""
        for key, value, _ in target.consume_all(target.names.address_update_requests, timeout_s=2)
        if (key or b"").decode() not in unsettled
    }
