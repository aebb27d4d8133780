"""Helpers shared by the locator's process-level tests: the real locator process and the final
state that runs are compared by."""

from __future__ import annotations

import os
import sys

import psycopg

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


#: (transactions counted, members with any) over every member history (migration 0002).
COUNT_OBSERVATIONS = (
    "SELECT coalesce(sum(jsonb_array_length(convert_from(history, 'UTF8')::jsonb -> 's')), 0),"
    " count(history) FROM members"
)


def committed(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets").fetchone()
    return int(row[0]) if row else 0


def final_state(dsn: str) -> dict[str, object]:
    with psycopg.connect(dsn) as conn:
        return {
            "workers": sorted(
                conn.execute(
                    "SELECT uan, member_ref, baselines::text, current_state_lgd,"
                    " current_district_lgd, last_address_request_at FROM workers"
                ).fetchall()
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
