"""Shared machinery of ``bench/run`` and ``bench/batch_sweep`` (issue 5).

Everything here talks to the local (or configured) broker and database only:

* a run's namespace: topic prefix ``bench.<run>.`` and database ``bench_<run>``; the namespaces
  of earlier bench runs are dropped first (as ``demo.py`` does for ``demo.``);
* the input: the simulator's messages (registry snapshot, then month by month), the first
  ``events`` of them, for a population whose month count is chosen so that it has about
  ``events`` messages;
* the ceiling: a bare confluent-kafka ``consume(10000)`` + ``AvroCodec.decode`` loop;
* child processes (the locator, the Faust reference) that report through a JSON status file
  written atomically, so that the parent measures them without sharing their interpreter;
* the latency probe: pre-registered workers whose second consecutive month in a new district
  is produced at a fixed rate while the locator runs.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from eshram_locator import bootstrap
from eshram_locator.avro_codec import AvroCodec
from eshram_locator.demo import drop_namespaces
from eshram_locator.domain.model import (
    AuthMode,
    CollectionItem,
    Location,
    Portability,
    RationCollection,
    WorkerRegistration,
)
from eshram_locator.kafka import clients
from eshram_locator.kafka.publish import PublishCounts, publish_simulation
from eshram_locator.kafka.topics import provision_topics, topic_specs
from eshram_locator.records import (
    RATION_COLLECTION,
    WORKER_REGISTRATION,
    ration_collection_to_avro,
    worker_registration_to_avro,
)
from eshram_locator.settings import Settings
from eshram_locator.simulator.config import SimulationConfig
from eshram_locator.simulator.population import Simulation, simulate
from eshram_locator.topics import TopicNames

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
TOPIC_PREFIX = "bench."
DATABASE_PREFIX = "bench_"
#: The locator's tables (postgres/migrations); their size is the state per worker.
LOCATOR_TABLES = (
    "members",
    "workers",
    "location_changes",
    "outbox",
    "consumer_offsets",
)


def log(message: str) -> None:
    """Progress goes to stderr: stdout's last line is the JSON result."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.8) -> float:
    """Wait (up to ``max_wait_s``) until the 1-minute load average is below ``threshold``:
    the machine is shared, and a busy one skews every figure. Returns the load average."""
    deadline = time.monotonic() + max_wait_s
    load = os.getloadavg()[0]
    if load >= threshold and max_wait_s > 0:
        log(f"load average {load:.2f}: waiting up to {max_wait_s:.0f} s for < {threshold}")
    while load >= threshold and time.monotonic() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


# --- namespaces ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Namespace:
    run_id: str
    prefix: str  # topic prefix, "bench.<run>."
    names: TopicNames
    bootstrap_servers: str
    server_dsn: str  # the server's DSN (any database), for CREATE/DROP DATABASE

    def database(self, suffix: str = "") -> str:
        return f"{DATABASE_PREFIX}{self.run_id}{suffix}"

    def group(self, suffix: str) -> str:
        return f"bench-{self.run_id}-{suffix}"


def new_run_id() -> str:
    return time.strftime("%Y%m%d%H%M%S")


def open_namespace(settings: Settings, endpoints: bootstrap.Endpoints) -> Namespace:
    """Drop earlier bench namespaces, then provision this run's topics (no database yet)."""
    run_id = new_run_id()
    prefix = f"{TOPIC_PREFIX}{run_id}."
    admin = bootstrap.admin_client(endpoints.bootstrap_servers)
    drop_bench_namespaces(admin, endpoints.owner_dsn)
    provision_topics(
        admin,
        topic_specs(
            settings.collections_partitions,
            settings.topic_partitions,
            settings.replication_factor,
            prefix=prefix,
        ),
    )
    return Namespace(
        run_id, prefix, TopicNames(prefix), endpoints.bootstrap_servers, endpoints.owner_dsn
    )


def drop_bench_namespaces(admin: AdminClient, dsn: str) -> None:
    log("dropping the topics and databases of earlier bench runs")
    drop_namespaces(admin, dsn, TOPIC_PREFIX, DATABASE_PREFIX)


def create_topics(admin: AdminClient, names: Sequence[str], partitions: int) -> None:
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result()


def initial_rebalance_delay_ms(admin: AdminClient) -> int:
    """The broker's ``group.initial.rebalance.delay.ms``: at 0, the first locator to join a
    new group takes every partition and hands half back when the next one joins."""
    broker_id = min(admin.list_topics(timeout=10).brokers)
    resource = ConfigResource(ResourceType.BROKER, str(broker_id))
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    return int(config["group.initial.rebalance.delay.ms"].value)


def use_log_append_time(admin: AdminClient, topic: str) -> None:
    """Make the broker stamp ``topic``'s records when it appends them (= when delivered)."""
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(
                "message.timestamp.type",
                "LogAppendTime",
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()


# --- the input ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Input:
    events: int  # messages produced to the input topics (collections + registry)
    collections: int
    registry: int
    workers: int
    months: int
    produce_s: float


def plan_simulation(events: int, workers: int, seed: int) -> Simulation:
    """A population of ``workers`` whose month count gives at least ``events`` messages
    (when it can: at most 120 months)."""
    pilot_workers = max(1, min(workers, 2_000))
    pilot = simulate(SimulationConfig(seed=seed, workers=pilot_workers, months=12))
    by_topic = pilot.counts["messages_by_topic"]
    registry_per_worker = sum(v for k, v in by_topic.items() if "registry" in k) / pilot_workers
    collections_per_worker_month = (
        sum(v for k, v in by_topic.items() if "collections" in k) / pilot_workers / 12
    )
    wanted = max(0.0, events - registry_per_worker * workers)
    months = max(1, min(120, math.ceil(wanted / (collections_per_worker_month * workers))))
    while True:
        simulation = simulate(SimulationConfig(seed=seed, workers=workers, months=months))
        if simulation.total_messages >= events or months >= 120:
            return simulation
        months += 1


def produce_input(
    namespace: Namespace, codec: AvroCodec, events: int, workers: int, seed: int
) -> Input:
    """Simulate and produce the first ``events`` messages of the population."""
    started = time.monotonic()
    simulation = plan_simulation(events, workers, seed)
    log(
        f"simulated {workers:,} workers over {simulation.config.months} months: "
        f"{simulation.total_messages:,} messages; producing the first {events:,}"
    )
    counts: PublishCounts = publish_simulation(
        clients.producer(namespace.bootstrap_servers),
        codec,
        namespace.names,
        itertools.islice(simulation.messages(), events),
    )
    produce_s = time.monotonic() - started
    return Input(
        events=counts.total,
        collections=counts.by_topic.get(namespace.names.collections, 0),
        registry=counts.by_topic.get(namespace.names.registry, 0),
        workers=workers,
        months=simulation.config.months,
        produce_s=produce_s,
    )


# --- the ceiling: bare batch consume + decode ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    events: int
    seconds: float

    @property
    def eps(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def partitions_of(bootstrap_servers: str, topics: Iterable[str]) -> list[TopicPartition]:
    metadata = bootstrap.admin_client(bootstrap_servers).list_topics(timeout=30)
    return [
        TopicPartition(topic, partition)
        for topic in topics
        for partition in sorted(metadata.topics[topic].partitions)
    ]


def measure_ceiling(
    namespace: Namespace, codec: AvroCodec, expected: int, timeout_s: float = 600.0
) -> Rate:
    """confluent-kafka ``consume(10000, 1.0)`` + ``AvroCodec.decode`` over the input topics,
    nothing else. Timed from the first non-empty batch returned to the last message decoded.

    The consumer prefetches as much as librdkafka does by default (64 MB and 100,000 messages
    per partition), not as little as the locator's memory budget allows: the ceiling is the
    bare client at its fastest, so that a tighter locator setting can never lower it.

    The runner's own objects (the simulated population: millions) are frozen out of the
    cyclic collector's sight while it runs, as a bare consumer process has none of them (and
    as the locator freezes its start-up objects), so that collector passes over that heap are
    not part of the figure. The figure still varies from pass to pass on this shared machine
    (46,530 to 67,472 /s in three passes of one run): bench/run reports the median."""
    consumer = clients.batch_consumer(
        namespace.bootstrap_servers,
        namespace.group("ceiling"),
        **{"queued.max.messages.kbytes": 65_536, "queued.min.messages": 100_000},
    )
    consumer.assign(
        [
            TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING)
            for tp in partitions_of(namespace.bootstrap_servers, namespace.names.inputs)
        ]
    )
    decode = codec.decode
    seen = 0
    first: float | None = None
    deadline = time.monotonic() + timeout_s
    gc.collect()
    gc.freeze()
    try:
        while seen < expected and time.monotonic() < deadline:
            messages = consumer.consume(10_000, 1.0)
            if not messages:
                continue
            if first is None:
                first = time.perf_counter()
            for message in messages:
                value = message.value()
                if value is not None:
                    decode(value)
            seen += len(messages)
        end = time.perf_counter()
    finally:
        gc.unfreeze()
        consumer.close()
    if seen < expected:
        raise RuntimeError(f"ceiling: consumed {seen} of {expected} within {timeout_s:.0f} s")
    return Rate(seen, end - (first if first is not None else end))


# --- child processes ----------------------------------------------------------------------------


def read_status(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_status(path: Path, status: Mapping[str, Any]) -> None:
    """Atomic: the parent never reads half a file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(status, handle)
    os.replace(temporary, path)


def proc_status_kb(field: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def vm_hwm_kb(pid: int | str = "self") -> int | None:
    """Peak resident set size (VmHWM) of a process, in KiB."""
    return proc_status_kb("VmHWM", pid)


class Child:
    """A child process whose stdout and stderr go to ``log_path``; reports via ``status``."""

    def __init__(self, argv: Sequence[str], status: Path, log_path: Path) -> None:
        status.unlink(missing_ok=True)
        self.status_path = status
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self) -> dict[str, Any]:
        return read_status(self.status_path)

    def wait_for(
        self, condition: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
    ) -> dict[str, Any]:
        """Poll the status until ``condition`` holds; raise if the child dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status()
            if status and condition(status):
                return status
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{what}: the child exited with {self.process.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not done within {timeout_s:.0f} s")
            time.sleep(0.1)

    def stop(self, grace_s: float = 60.0) -> int:
        """SIGTERM, then SIGKILL after ``grace_s``; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class LocatorGroup:
    """One locator child, or several in one consumer group (they share the partitions, as
    several processes of the service do), seen as one: their totals add up, the run starts
    at the first child's first message and ends at the batch that brings the sum of their
    consumed messages to ``expected``. With one child, its own status is used as it is."""

    def __init__(self, children: Sequence[Child]) -> None:
        if not children:
            raise ValueError("no locator child")
        self.children = list(children)
        self._cpu_at_first: float | None = None

    @property
    def pid(self) -> int:
        return self.children[0].pid

    @property
    def log_path(self) -> Path:
        return self.children[0].log_path

    def wait_each(
        self, condition: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
    ) -> None:
        for index, child in enumerate(self.children):
            child.wait_for(condition, timeout_s, f"{what} (locator {index})")

    def wait_first_message(self, timeout_s: float) -> None:
        """Until any child has consumed its first message."""
        self._wait(lambda statuses: any(s.get("first_at") for s in statuses), timeout_s, "first")
        self._cpu_at_first = self._cpu_s()

    def wait_consumed(self, total: int, timeout_s: float, what: str) -> dict[str, Any]:
        """Until the children have consumed ``total`` messages between them; returns a status
        shaped like one child's (``first_at`` and ``reached``)."""
        if len(self.children) == 1:
            return self.children[0].wait_for(
                lambda s: s.get("consumed", 0) >= total and "reached" in s, timeout_s, what
            )
        statuses = self._wait(
            lambda statuses: sum(s.get("consumed", 0) for s in statuses) >= total,
            timeout_s,
            what,
        )
        return self.combined(statuses)

    def combined(self, statuses: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        started = [s for s in statuses if s.get("first_at")]
        stages: dict[str, float] = {}
        for status in started:
            for stage, seconds in (status.get("stages_s") or {}).items():
                stages[stage] = stages.get(stage, 0.0) + float(seconds)

        def total(key: str) -> int:
            return sum(int(s.get(key, 0)) for s in statuses)

        return {
            "first_at": min(float(s["first_at"]) for s in started),
            "batch_size": statuses[0].get("batch_size"),
            "reached": {
                "at": max(float(s.get("last_batch_at", 0.0)) for s in started),
                "consumed": total("consumed"),
                "batches": total("batches"),
                "changes": total("changes"),
                "address_requests": total("address_requests"),
                "dead_lettered": total("dead_lettered"),
                "stages_s": stages,
                "cpu_s": self._cpu_s() - (self._cpu_at_first or 0.0),
                "vm_hwm_kb": total("vm_hwm_kb"),
            },
        }

    def final(self) -> dict[str, Any]:
        """After ``stop``: one child's status, or the group's (peaks summed)."""
        if len(self.children) == 1:
            return self.children[0].status()
        statuses = [child.status() for child in self.children]
        return {
            "batch_size": statuses[0].get("batch_size"),
            "vm_hwm_kb": sum(int(s.get("vm_hwm_kb") or 0) for s in statuses),
            "vm_hwm_kb_each": [s.get("vm_hwm_kb") for s in statuses],
            "rss_trace": [s.get("rss_trace") for s in statuses],
            "stage_trace": [s.get("stage_trace") for s in statuses],
        }

    def stop(self) -> int:
        return max(child.stop() for child in self.children)

    def _cpu_s(self) -> float:
        return sum(_process_cpu_s(child.pid) for child in self.children)

    def _wait(
        self,
        condition: Callable[[list[dict[str, Any]]], bool],
        timeout_s: float,
        what: str,
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = [child.status() for child in self.children]
            if all(statuses) and condition(statuses):
                return statuses
            for child in self.children:
                if child.process.poll() is not None:
                    raise RuntimeError(
                        f"locator {what}: a child exited with {child.process.returncode};"
                        f" see {child.log_path}"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"locator {what}: not done within {timeout_s:.0f} s")
            time.sleep(0.1)


def locator_group(
    namespace: Namespace,
    dsn: str,
    group: str,
    run_dir: Path,
    *,
    processes: int,
    expected: int,
    stem: str = "locator",
    batch_size: int | None = None,
    fine_timers: bool = False,
) -> tuple[LocatorGroup, Path]:
    """``processes`` locator children in consumer group ``group``, and the file that lets them
    join it: they join together once each is ready (``start_locators``), else the first one
    ready reads alone for as long as the others take to import and connect (up to two seconds
    here, on a machine the first one keeps busy), then gives half its partitions back. Files
    in ``run_dir``: ``<stem>-status.json`` and ``<stem>.log`` for the first child,
    ``<stem>-status-1.json`` and so on for the others."""
    start_gate = run_dir / f"{stem}s-start"
    children = []
    for index in range(processes):
        suffix = "" if index == 0 else f"-{index}"
        status = run_dir / f"{stem}-status{suffix}.json"
        argv = locator_child_argv(
            namespace,
            dsn,
            group,
            status,
            expected=expected,
            batch_size=batch_size,
            fine_timers=fine_timers,
            start_when=start_gate,
        )
        children.append(Child(argv, status, run_dir / f"{stem}{suffix}.log"))
    return LocatorGroup(children), start_gate


def start_locators(locators: LocatorGroup, start_gate: Path, timeout_s: float = 120) -> None:
    """Once every child of ``locator_group`` is ready, let them join their consumer group."""
    locators.wait_each(lambda s: "ready_at" in s, timeout_s, "locator start")
    start_gate.touch()


def locator_child_argv(
    namespace: Namespace,
    dsn: str,
    group: str,
    status: Path,
    *,
    expected: int,
    batch_size: int | None = None,
    fine_timers: bool = False,
    start_when: Path | None = None,
) -> list[str]:
    argv = [
        sys.executable,
        str(BENCH_DIR / "locator_child.py"),
        "--bootstrap",
        namespace.bootstrap_servers,
        "--dsn",
        dsn,
        "--prefix",
        namespace.prefix,
        "--group",
        group,
        "--expected",
        str(expected),
        "--status",
        str(status),
    ]
    if batch_size is not None:
        argv += ["--batch-size", str(batch_size)]
    if fine_timers:
        argv.append("--fine-timers")
    if start_when is not None:
        argv += ["--start-when", str(start_when)]
    return argv


@dataclass(frozen=True, slots=True)
class LocatorThroughput:
    rate: Rate
    batches: int
    changes: int
    address_requests: int
    dead_lettered: int
    stages_s: dict[str, float]  # wall seconds per stage, up to the expected message count
    cpu_s: float  # CPU seconds of the locator process over the same span


def late_rate(status: Mapping[str, Any], expected: int) -> Rate | None:
    """The locator's rate over the second half of the timed input (from the status's
    ``stage_trace``): once the registry snapshot has been consumed, every collection of a
    registered worker recomputes its timeline, so this is the steady-state figure."""
    trace = [(int(c), float(t)) for c, t, _ in status.get("stage_trace") or [] if c <= expected]
    end = status.get("reached")
    if end is None:
        return None
    middle = [point for point in trace if point[0] >= expected // 2]
    if not middle:
        return None
    consumed, at = middle[0]
    return Rate(int(end["consumed"]) - consumed, float(end["at"]) - at)


def locator_throughput(status: Mapping[str, Any]) -> LocatorThroughput:
    """From a child's status once it has reached its expected count."""
    at = status["reached"]
    return LocatorThroughput(
        rate=Rate(int(at["consumed"]), float(at["at"]) - float(status["first_at"])),
        batches=int(at["batches"]),
        changes=int(at["changes"]),
        address_requests=int(at["address_requests"]),
        dead_lettered=int(at["dead_lettered"]),
        stages_s={str(k): float(v) for k, v in at["stages_s"].items()},
        cpu_s=float(at.get("cpu_s", math.nan)),
    )


# --- where the two cores went -------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int, *, reaped: bool = False) -> float:
    """utime + stime of one process, in seconds (0 if it is gone); with ``reaped``, plus the
    CPU of its children that have exited (the postmaster's ended backends)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def _children(parent: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(entry))
    return pids


def postmaster_pid(dsn: str) -> int | None:
    """The PostgreSQL server's pid, when it runs on this machine: the parent of our backend
    (no privilege needed, unlike reading the data directory)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            backend = conn.info.backend_pid
            with open(f"/proc/{backend}/stat", encoding="ascii") as handle:
                return int(handle.read().rpartition(")")[2].split()[1])
    except (psycopg.Error, OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """System-wide busy and total CPU seconds, and the PostgreSQL server's (every backend).
    Busy includes steal: time the hypervisor gave this guest's CPUs to another."""

    busy_s: float
    total_s: float
    steal_s: float
    postgres_s: float
    at: float  # time.monotonic()

    @classmethod
    def take(cls, postmaster: int | None) -> CpuSnapshot:
        with open("/proc/stat", encoding="ascii") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        postgres = 0.0
        if postmaster is not None:
            postgres = _process_cpu_s(postmaster, reaped=True) + sum(
                _process_cpu_s(pid) for pid in _children(postmaster)
            )
        return cls(
            (sum(values[:8]) - idle) / _TICKS,
            sum(values[:8]) / _TICKS,
            values[7] / _TICKS,
            postgres,
            time.monotonic(),
        )


def cpu_split(
    before: CpuSnapshot, after: CpuSnapshot, locator_cpu_s: float, locator_wall_s: float
) -> dict[str, float]:
    """Cores used on average between the snapshots: the whole machine, PostgreSQL (the server,
    its live backends, and those that ended, through the server's reaped-children CPU),
    the locator (its own CPU over its own measured span), and everything else (Kafka, the
    bench's parent, other users of the machine)."""
    wall = after.at - before.at
    busy = (after.busy_s - before.busy_s) / wall
    postgres = (after.postgres_s - before.postgres_s) / wall
    locator = locator_cpu_s / locator_wall_s if locator_wall_s > 0 else 0.0
    return {
        "machine_busy_cores": round(busy, 2),
        "machine_cores": round((after.total_s - before.total_s) / wall, 2),
        "steal_cores": round((after.steal_s - before.steal_s) / wall, 2),
        "locator_cores": round(locator, 2),
        "postgres_cores": round(postgres, 2),
        "other_cores": round(busy - postgres - locator, 2),
    }


def postgres_activity(dsn: str) -> dict[str, Any]:
    """Counters that explain a slow database: checkpoints, cache misses, autovacuum."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        checkpoints = conn.execute(
            "SELECT checkpoints_timed + checkpoints_req, buffers_checkpoint, buffers_backend"
            " FROM pg_stat_bgwriter"
        ).fetchone()
        database = conn.execute(
            "SELECT blks_read, blks_hit, xact_commit FROM pg_stat_database"
            " WHERE datname = current_database()"
        ).fetchone()
        tables = conn.execute(
            "SELECT relname, n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count"
            " FROM pg_stat_user_tables ORDER BY relname"
        ).fetchall()
    if checkpoints is None or database is None:
        raise RuntimeError("pg_stat_bgwriter or pg_stat_database returned no row")
    return {
        "checkpoints": int(checkpoints[0]),
        "buffers_checkpoint": int(checkpoints[1]),
        "buffers_backend": int(checkpoints[2]),
        "blks_read": int(database[0]),
        "blks_hit": int(database[1]),
        "commits": int(database[2]),
        "tables": {
            str(name): {
                "live": int(live),
                "dead": int(dead),
                "autovacuum": int(vacuums),
                "autoanalyze": int(analyzes),
            }
            for name, live, dead, vacuums, analyzes in tables
        },
    }


# --- PostgreSQL footprint -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Footprint:
    registered_workers: int
    tables_bytes: int
    database_bytes: int
    observations: int

    @property
    def bytes_per_worker(self) -> float:
        return self.tables_bytes / self.registered_workers if self.registered_workers else 0.0


def postgres_footprint(dsn: str) -> Footprint:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM workers),"
            " (SELECT coalesce(sum(history_transactions(history)), 0) FROM members),"
            " (SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0)"
            "  FROM unnest(%s::text[]) AS t), pg_database_size(current_database())",
            (list(LOCATOR_TABLES),),
        ).fetchone()
    assert row is not None
    workers, observations, tables, database = row
    return Footprint(int(workers), int(tables), int(database), int(observations))


# --- the latency probe --------------------------------------------------------------------------

_HOME = Location(9, 905, 9051, None, None)  # Uttar Pradesh (synthetic district codes)
_AWAY = Location(27, 2703, 27031, None, None)  # Maharashtra
_FIRST_MONTH, _SECOND_MONTH = "2029-01", "2029-02"
_ITEMS = (CollectionItem("RICE", "PMGKAY", 5000),)


def probe_uan(index: int) -> str:
    """12 digits starting with 19: never a simulated uan (those start with 10)."""
    return f"19{index:010d}"


def _probe_member(index: int) -> str:
    return f"BENCH-PROBE-{index:x}"


def is_mover(index: int, move_share: float) -> bool:
    """Spreads ``move_share`` of the probes evenly (1.0: every probe moves)."""
    return math.floor((index + 1) * move_share) > math.floor(index * move_share)


def _probe_collection(index: int, month: str, day: int, mover: bool) -> RationCollection:
    where, shop = (_AWAY, "FPS-27-2703-0001") if mover else (_HOME, "FPS-09-905-0001")
    return RationCollection(
        transaction_id=f"PROBE-{month.replace('-', '')}-{index:08x}",
        source="BENCH-PDS",
        ration_card_id=f"BC-{index:08d}",
        member_ref=_probe_member(index),
        auth_mode=AuthMode.FINGERPRINT,
        fps_id=shop,
        fps_location=where,
        card_state_lgd=_HOME.state_lgd,
        portability=Portability.INTER_STATE if mover else Portability.NONE,
        allocation_month=month,
        transacted_at=datetime.fromisoformat(f"{month}-{day:02d}T06:00:00+00:00"),
        items=_ITEMS,
    )


def produce_probe_setup(
    namespace: Namespace, codec: AvroCodec, count: int, move_share: float = 1.0
) -> int:
    """Register ``count`` probe workers (home: _HOME) and give each one biometric collection
    in the first month: in another district for the movers (one more month there confirms a
    move, rule 5), at home for the others. Returns the number of messages produced."""
    producer = clients.producer(namespace.bootstrap_servers)
    tracker = clients.DeliveryTracker()
    names = namespace.names
    updated_at = datetime(2028, 12, 1, tzinfo=UTC)
    for index in range(count):
        registration = WorkerRegistration(
            uan=probe_uan(index),
            member_ref=_probe_member(index),
            permanent_address=_HOME,
            present_address=None,
            occupation_nco=None,
            consent_state_sharing=True,
            sms_reachable=True,
            updated_at=updated_at,
        )
        _produce(
            producer,
            names.registry,
            registration.uan.encode(),
            codec.encode(
                WORKER_REGISTRATION,
                worker_registration_to_avro(registration),
                topic=names.registry,
            ),
            tracker,
        )
    clients.flush_all(producer, 60)  # registrations first: the locator reads them first
    for index in range(count):
        collection = _probe_collection(index, _FIRST_MONTH, 10, is_mover(index, move_share))
        _produce(
            producer,
            names.collections,
            collection.member_ref.encode(),
            codec.encode(
                RATION_COLLECTION,
                ration_collection_to_avro(collection),
                topic=names.collections,
            ),
            tracker,
        )
    clients.flush_all(producer, 60)
    tracker.raise_if_failed()
    return 2 * count


def _produce(
    producer: Producer,
    topic: str,
    key: bytes,
    value: bytes,
    tracker: clients.DeliveryTracker,
    timestamp_ms: int = 0,
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, on_delivery=tracker, timestamp=timestamp_ms)
            return
        except BufferError:
            producer.poll(0.05)


@dataclass(slots=True)
class LatencyResult:
    offered_rate: float  # what the producer thread achieved
    produced: int
    movers: int  # produced records that confirm a move (the ones timed)
    matched: int
    output_rate: float  # matched LocationChanged per second of output (append time span)
    p50_ms: float
    p99_ms: float
    max_ms: float
    p50_receive_ms: float  # to our consumer's receive time (an upper bound)
    p99_receive_ms: float
    output_timestamp: str  # "LogAppendTime" when the broker stamped the outputs
    latencies_ms: list[float] = field(default_factory=list, repr=False)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted ``values``; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def measure_latency(
    namespace: Namespace,
    codec: AvroCodec,
    count: int,
    rate: float,
    move_share: float = 1.0,
    drain_s: float = 60.0,
) -> LatencyResult:
    """Produce probe ``i``'s second-month collection at ``rate``/s (timestamp = produce time)
    and match each ``LocationChanged`` on the output topic to it by uan (the key); only the
    movers' records (``move_share`` of them) cause one.

    Latency = the output record's timestamp (broker append time: the topic is switched to
    LogAppendTime) minus the input record's timestamp. The receive-time variant uses our
    consumer's clock instead (same machine)."""
    names = namespace.names
    consumer = Consumer(
        {
            "bootstrap.servers": namespace.bootstrap_servers,
            "group.id": namespace.group("latency"),
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "fetch.min.bytes": 1,
        }
    )
    start_offsets = []
    for tp in partitions_of(namespace.bootstrap_servers, [names.location_changes]):
        _, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
        start_offsets.append(TopicPartition(tp.topic, tp.partition, high))
    consumer.assign(start_offsets)

    produced_ms: dict[bytes, int] = {}
    output: dict[bytes, tuple[int, float, int]] = {}  # uan -> (timestamp ms, received s, type)
    stop = threading.Event()

    def consume_outputs() -> None:
        while not stop.is_set():
            for message in consumer.consume(1000, 0.05):
                if message.error() is not None:
                    continue
                key = message.key()
                if key is None or key in output:
                    continue
                kind, millis = message.timestamp()
                output[key] = (millis, time.time(), kind)

    reader = threading.Thread(target=consume_outputs, name="latency-reader", daemon=True)
    reader.start()
    producer = clients.producer(namespace.bootstrap_servers, **{"linger.ms": 5})
    tracker = clients.DeliveryTracker()
    movers = {probe_uan(i).encode() for i in range(count) if is_mover(i, move_share)}
    encoded = [
        codec.encode(
            RATION_COLLECTION,
            ration_collection_to_avro(
                _probe_collection(index, _SECOND_MONTH, 12, is_mover(index, move_share))
            ),
            topic=names.collections,
        )
        for index in range(count)
    ]
    started = time.perf_counter()
    sent = 0
    try:
        while sent < count:
            due = min(count, int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                key = _probe_member(sent).encode()
                now_ms = int(time.time() * 1000)
                produced_ms[probe_uan(sent).encode()] = now_ms
                _produce(producer, names.collections, key, encoded[sent], tracker, now_ms)
                sent += 1
            producer.poll(0)
            time.sleep(0.001)
        elapsed = time.perf_counter() - started
        clients.flush_all(producer, 30)
        tracker.raise_if_failed()
        deadline = time.monotonic() + drain_s
        while len(output) < len(movers) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        reader.join(10)
        consumer.close()

    latencies: list[float] = []
    receive: list[float] = []
    kinds: set[int] = set()
    stamps: list[int] = []
    for uan, (millis, received, kind) in list(output.items()):
        sent_ms = produced_ms.get(uan)
        if sent_ms is None or uan not in movers:
            continue
        latencies.append(float(millis - sent_ms))
        receive.append(received * 1000 - sent_ms)
        kinds.add(kind)
        stamps.append(millis)
    span_s = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else 0.0
    return LatencyResult(
        offered_rate=count / elapsed if elapsed > 0 else 0.0,
        produced=count,
        movers=len(movers),
        matched=len(latencies),
        output_rate=len(latencies) / span_s if span_s > 0 else math.nan,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies) if latencies else math.nan,
        p50_receive_ms=percentile(receive, 50),
        p99_receive_ms=percentile(receive, 99),
        output_timestamp="LogAppendTime" if kinds == {TIMESTAMP_LOG_APPEND_TIME} else "CreateTime",
        latencies_ms=latencies,
    )


# --- profiling ----------------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` attached to a running process (wall clock: idle samples included)."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--idle",
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
