"""The demo and the accuracy run: a simulated population through the real pipeline.

Each run gets its own namespace on the broker and the database server (topic prefix
``demo.<run>.`` and database ``demo_<run>``), so a run never sees an earlier run's data; the
namespaces of earlier runs are dropped at the start. Steps: provision topics, simulate and
produce the population, run the locator until the input is drained, then read the result back
from PostgreSQL and score it against the simulation's ground truth.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import structlog
from confluent_kafka.admin import AdminClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from tqdm import tqdm

from consumers.locator import Totals
from eshram_locator import bootstrap
from eshram_locator.avro_codec import AvroCodec
from eshram_locator.domain.model import ChangeType, District, LocationChanged
from eshram_locator.geography import STATES_BY_LGD
from eshram_locator.kafka import clients
from eshram_locator.kafka.publish import publish_simulation
from eshram_locator.kafka.topics import provision_topics, topic_specs
from eshram_locator.records import LOCATION_CHANGED, location_changed_from_avro
from eshram_locator.settings import Settings
from eshram_locator.simulator.accuracy import AccuracyReport, ObservedChange, score
from eshram_locator.simulator.config import SimulationConfig
from eshram_locator.simulator.population import simulate
from eshram_locator.simulator.truth import write_ground_truth
from eshram_locator.topics import TopicNames

log = structlog.get_logger(__name__)

DEMO_PREFIX = "demo."
DEMO_DATABASE_PREFIX = "demo_"


@dataclass(slots=True)
class RunResult:
    events_in: int
    totals: Totals
    accuracy: AccuracyReport
    changes: list[LocationChanged]
    produce_s: float
    locate_s: float
    ground_truth_path: Path
    topic_prefix: str = ""
    database: str = ""
    corridors_state: list[tuple[str, int]] = field(default_factory=list)
    corridors_district: list[tuple[str, int]] = field(default_factory=list)

    def as_json(self) -> dict[str, float | int]:
        return {
            "precision": round(self.accuracy.precision, 4),
            "recall": round(self.accuracy.recall, 4),
            "effective_month_accuracy": round(self.accuracy.effective_month_accuracy, 4),
            "events_in": self.events_in,
            "changes_out": len(self.changes),
            "dlq": self.totals.dead_lettered,
            "true_moves": self.accuracy.true_moves,
            "detectable_moves": self.accuracy.detectable_moves,
            "produce_s": round(self.produce_s, 2),
            "locate_s": round(self.locate_s, 2),
        }


def run_simulated_pipeline(
    settings: Settings,
    endpoints: bootstrap.Endpoints,
    simulation_config: SimulationConfig,
    out_dir: Path,
    progress: bool = True,
) -> RunResult:
    run_id = time.strftime("%Y%m%d%H%M%S")
    prefix = f"{DEMO_PREFIX}{run_id}."
    database = f"{DEMO_DATABASE_PREFIX}{run_id}"
    admin = bootstrap.admin_client(endpoints.bootstrap_servers, endpoints.kafka_credentials)
    drop_namespaces(admin, endpoints.owner_dsn, DEMO_PREFIX, DEMO_DATABASE_PREFIX)
    create_database(endpoints.owner_dsn, database)  # owned by the owner role
    run_endpoints = endpoints.in_database(database)
    dsn = run_endpoints.postgres_dsn
    run_settings = settings.model_copy(
        update={"topic_prefix": prefix, "consumer_group": f"demo-{run_id}"}
    )
    provision_topics(
        admin,
        topic_specs(
            settings.collections_partitions,
            settings.topic_partitions,
            settings.replication_factor,
            prefix=prefix,
        ),
    )
    names = TopicNames(prefix)
    codec = bootstrap.codec(run_settings)

    simulation = simulate(simulation_config)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth_path = out_dir / "ground-truth.jsonl"
    write_ground_truth(truth_path, simulation.ground_truth())
    total = simulation.total_messages

    started = time.monotonic()
    with _bar(total, "simulate + produce", progress) as bar:
        counts = publish_simulation(
            clients.producer(endpoints.bootstrap_servers, **endpoints.kafka_config),
            codec,
            names,
            simulation.messages(),
            progress=bar.update,
        )
    produce_s = time.monotonic() - started

    started = time.monotonic()
    with _bar(counts.total, "locate", progress) as bar:
        seen = 0

        def on_batch(totals: Totals) -> None:
            nonlocal seen
            bar.update(totals.consumed - seen)
            seen = totals.consumed

        process = bootstrap.locator_process(
            run_settings, run_endpoints, idle_exit_polls=6, on_batch=on_batch
        )
        totals = process.run()
    locate_s = time.monotonic() - started - 6 * settings.batch_timeout_s

    changes = read_active_changes(dsn, codec)
    accuracy = score(simulation.ground_truth(), [ObservedChange.of(c) for c in changes])
    result = RunResult(
        events_in=counts.total,
        totals=totals,
        accuracy=accuracy,
        changes=changes,
        produce_s=produce_s,
        locate_s=max(locate_s, 0.0),
        ground_truth_path=truth_path,
        topic_prefix=prefix,
        database=database,
    )
    result.corridors_state, result.corridors_district = corridors(changes)
    return result


def read_active_changes(dsn: str, codec: AvroCodec) -> list[LocationChanged]:
    """The changes that hold at the end: emitted and never retracted."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT body FROM location_changes WHERE active ORDER BY uan, effective_month"
        ).fetchall()
    return [
        location_changed_from_avro(codec.decode(bytes(body), LOCATION_CHANGED)[1])
        for (body,) in rows
    ]


def corridors(
    changes: list[LocationChanged], top: int = 10
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Top state -> state and district -> district corridors of the moves (not the returns)."""
    states: Counter[str] = Counter()
    districts: Counter[str] = Counter()
    for change in changes:
        if change.change_type is not ChangeType.MOVED or change.previous_location is None:
            continue
        origin, destination = change.previous_location, change.current_location
        if origin.state_lgd != destination.state_lgd:
            states[f"{_state(origin.state_lgd)} -> {_state(destination.state_lgd)}"] += 1
        districts[f"{_district(origin.district)} -> {_district(destination.district)}"] += 1
    return states.most_common(top), districts.most_common(top)


def _state(lgd: int) -> str:
    state = STATES_BY_LGD.get(lgd)
    return state.name if state else f"state {lgd}"


def _district(district: District) -> str:
    return f"{district.state_lgd:02d}/{district.district_lgd}"


def format_summary(result: RunResult) -> str:
    accuracy = result.accuracy
    by_type = Counter(change.change_type.value for change in result.changes)
    lines = [
        "",
        "e-Shram locator demo",
        "====================",
        f"events in            {result.events_in:>12,}  ({result.produce_s:.1f} s to simulate"
        f" and produce)",
        f"located in           {result.locate_s:>12.1f} s"
        f"  ({result.events_in / max(result.locate_s, 1e-9):,.0f} events/s)",
        f"changes out          {len(result.changes):>12,}  "
        + ", ".join(f"{name} {count:,}" for name, count in sorted(by_type.items())),
        f"address requests     {result.totals.address_requests:>12,}",
        f"dead-lettered (DLQ)  {result.totals.dead_lettered:>12,}",
        "",
        "accuracy against the simulation's ground truth",
        f"  precision                {accuracy.precision:.4f}",
        f"  recall                   {accuracy.recall:.4f}"
        f"  ({accuracy.detectable_moves:,} detectable of {accuracy.true_moves:,} true moves)",
        f"  effective month          {accuracy.effective_month_accuracy:.4f}",
        "",
        "top migration corridors, state -> state",
        *(f"  {count:>7,}  {corridor}" for corridor, count in result.corridors_state),
        "",
        "top migration corridors, district -> district (state/district LGD)",
        *(f"  {count:>7,}  {corridor}" for corridor, count in result.corridors_district),
        "",
        f"ground truth: {result.ground_truth_path}",
        f"run namespace: topics {result.topic_prefix}*, database {result.database}",
    ]
    return "\n".join(lines)


class _NoBar:
    def update(self, count: int) -> None:
        del count

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def _bar(total: int, label: str, enabled: bool) -> tqdm[None] | _NoBar:
    if not enabled:
        return _NoBar()
    return tqdm(total=total, desc=label, unit="ev", unit_scale=True, smoothing=0.1)


def drop_namespaces(admin: AdminClient, dsn: str, topic_prefix: str, database_prefix: str) -> None:
    """Delete the topics and databases of earlier runs (names starting with the prefixes).

    Only the databases this role owns: one made by another role (a run from before the owner
    and application roles existed) is left, with a warning that names it."""
    old_topics = [t for t in admin.list_topics(timeout=30).topics if t.startswith(topic_prefix)]
    if old_topics:
        for future in admin.delete_topics(old_topics, operation_timeout=60).values():
            future.result()
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname, pg_has_role(datdba, 'USAGE') FROM pg_database WHERE datname LIKE %s",
            (database_prefix.replace("_", r"\_") + "%",),
        ).fetchall()
        for name, owned in rows:
            if not owned:
                log.warning("old_database_kept", database=name, reason="owned by another role")
                continue
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def create_database(dsn: str, name: str) -> str:
    """CREATE DATABASE ``name`` on the server of ``dsn``; returns its DSN."""
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(dsn)
    params["dbname"] = name
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})
