"""No Aadhaar number anywhere: the demo with raw Aadhaar numbers injected into its input, then
every byte it left behind is scanned.

The simulated PDS and registry leak Aadhaar-like numbers (12 digits, the first 2-9,
Verhoeff-valid) into tokens and free text of a share of their records. What the service wrote
must hold none: every message of every topic of the run (values, keys, header names and
values; the DLQs included), every column of every row of every table of the run's database,
and every line the processes logged (the demo's stdout and stderr, and what the local broker
and database servers appended to their logs meanwhile). The only place the numbers may be is
the input topics, which the simulated PDS wrote; they are checked to hold them, so the scan
is known to look at real leaks. Not even UANs are exempt here: simulated UANs start with "10".

Each leaked record is dead-lettered as ``raw_aadhaar`` with its source coordinates, and the DLQ
copy is the original record with the number masked to its last four digits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from psycopg import sql
from psycopg.conninfo import make_conninfo

from eshram_locator import bootstrap
from eshram_locator.avro_codec import AvroCodec
from eshram_locator.domain.aadhaar import find_aadhaar_like, mask_record, scan_record
from eshram_locator.errors import DecodeError
from eshram_locator.local.postgres_server import data_dir_for
from eshram_locator.settings import Settings
from eshram_locator.topics import TopicNames

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = re.compile(r"run namespace: topics (\S+)\*, database (\S+)")
# The servers' own ids in their logs: the broker names a deleted partition's directory
# "<topic>-<partition>.<32 hex digits>-delete" and logs it when it renames and when it deletes
# it (a minute later: possibly an earlier test's topic), and it logs consumers' member ids
# (UUIDs). A hex id can hold a 12-digit run that passes the Verhoeff check (one did:
# "...a28a582302289770"); no service data is in them.
SERVER_IDS = re.compile(
    r"(?<![0-9A-Za-z])(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"(?![0-9A-Za-z])"
)


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def texts(self) -> Iterator[tuple[str, str]]:
        """(where, text) of every byte of the message, bytes read as Latin-1."""
        where = f"{self.topic}[{self.partition}]@{self.offset}"
        yield f"{where} key", (self.key or b"").decode("latin-1")
        yield f"{where} value", (self.value or b"").decode("latin-1")
        for name, value in self.headers:
            yield f"{where} header {name!r}", name + " " + value.decode("latin-1")

    def texts_joined(self) -> str:
        return "\n".join(text for _, text in self.texts())


def decoded(codec: AvroCodec, payload: bytes | None) -> Iterator[tuple[str, str]]:
    """The Avro record in ``payload``, if it holds one: each hit of ``scan_record`` (no field
    exempt) as (field, number). Raw bytes can hide a number next to a length byte that reads
    as a digit; the decoded record cannot."""
    if not payload:
        return
    try:
        _, datum = codec.decode(payload)
    except DecodeError:
        return
    yield from scan_record(datum, exempt_fields=frozenset())


def read_topic(bootstrap_servers: str, topic: str) -> list[Record]:
    """Every message of ``topic``, from each partition's start to its end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"leak-scan-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    records: list[Record] = []
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {}
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        while ends:
            message = consumer.poll(30)
            assert message is not None, f"{topic}: stalled before its end"
            assert message.error() is None, message.error()
            partition, offset = message.partition(), message.offset()
            assert partition is not None
            assert offset is not None
            records.append(
                Record(
                    topic,
                    partition,
                    offset,
                    message.key(),
                    message.value(),
                    tuple((k, v or b"") for k, v in message.headers() or []),
                )
            )
            if offset + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
    finally:
        consumer.close()
    return records


def table_values(dsn: str) -> Iterator[tuple[str, str | bytes]]:
    """(table.column, text or bytes) of every value in every table of the database's schema."""
    with psycopg.connect(dsn) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        ]
        assert "members" in tables
        for table in tables:
            cursor = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
            columns = [column.name for column in cursor.description or []]
            for row in cursor:
                for column, value in zip(columns, row, strict=True):
                    if value is None:
                        continue
                    if isinstance(value, bytes | bytearray | memoryview):
                        yield f"{table}.{column}", bytes(value)
                    else:
                        yield f"{table}.{column}", str(value)


class LogTail:
    """What a server appended to its log file after ``__init__``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = path.stat().st_size if path.is_file() else 0

    def appended(self) -> str:
        """The text appended, without the servers' hex ids (``SERVER_IDS``)."""
        if not self.path.is_file():
            return ""
        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            return SERVER_IDS.sub("<id>", handle.read().decode("latin-1"))


def server_logs(settings: Settings) -> list[LogTail]:
    logs = []
    if settings.uses_local_postgres:
        logs.append(
            LogTail(data_dir_for(settings.local_dir, settings.postgres_port) / "postgres.log")
        )
    if settings.uses_local_kafka:
        logs.extend(LogTail(path) for path in (settings.local_dir / "kafka").glob("*.log"))
    return logs


def test_no_aadhaar_number_leaves_the_demo_anywhere(tmp_path: Path) -> None:
    settings = bootstrap.load_settings()
    endpoints = bootstrap.ensure_services(settings)
    tails = server_logs(settings)
    environment = {
        **os.environ,
        "LOCATOR_LOG_LEVEL": "DEBUG",
        "LOCATOR_LOG_FORMAT": "json",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eshram_locator",
            "demo",
            "--workers",
            "300",
            "--months",
            "6",
            "--seed",
            "21",
            "--inject-aadhaar",
            "0.04",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    match = NAMESPACE.search(result.stdout)
    assert match, result.stdout
    prefix, database = match.groups()
    names = TopicNames(prefix)
    inputs = {names.collections, names.registry}

    codec = bootstrap.codec(settings)
    leaks: list[tuple[str, str]] = []

    def scan(where: str, text: str) -> None:
        leaks.extend((where, number) for number in find_aadhaar_like(text))

    def scan_avro(where: str, payload: bytes | None) -> None:
        leaks.extend((f"{where} {field}", number) for field, number in decoded(codec, payload))

    # Topics: every topic of the run; the input topics are what the simulated PDS sent.
    admin = bootstrap.admin_client(endpoints.bootstrap_servers)
    topics = sorted(t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix))
    assert names.dlq(names.collections) in topics
    assert names.location_changes in topics
    by_topic = {topic: read_topic(endpoints.bootstrap_servers, topic) for topic in topics}
    for topic, records in by_topic.items():
        scan(f"topic name {topic}", topic)
        if topic not in inputs:
            for record in records:
                for where, text in record.texts():
                    scan(where, text)
                scan_avro(f"{topic}[{record.partition}]@{record.offset}", record.value)
    assert by_topic[names.location_changes], "the demo published no change"

    # Tables: every column of every row, in the run's database (read as the owner: all tables).
    for where, value in table_values(make_conninfo(endpoints.owner_dsn, dbname=database)):
        if isinstance(value, bytes):
            scan(where, value.decode("latin-1"))  # Avro strings are raw bytes
            scan_avro(where, value)
        else:
            scan(where, value)

    # Logs: the demo's own output, and what the servers logged meanwhile; the ground truth.
    for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        for number, line in enumerate(text.splitlines()):
            scan(f"demo {stream} line {number + 1}", line)
    for tail in tails:
        scan(f"server log {tail.path}", tail.appended())
    for path in tmp_path.rglob("*"):
        if path.is_file():
            scan(f"output file {path.name}", path.read_text(errors="replace"))

    assert leaks == [], f"{len(leaks)} Aadhaar-like numbers leaked, first: {leaks[:5]}"

    # The input did carry leaks, and each leaked record is in the DLQ, masked, with its origin.
    originals = {(r.topic, r.partition, r.offset): r for topic in inputs for r in by_topic[topic]}
    leaked_inputs = {
        coordinates
        for coordinates, record in originals.items()
        if any(decoded(codec, record.value)) or find_aadhaar_like(record.texts_joined())
    }
    assert len(leaked_inputs) >= 20, "the injection did not happen"
    dead = [r for topic in inputs for r in by_topic[names.dlq(topic)]]
    raw_aadhaar = {}
    for record in dead:
        headers = dict(record.headers)
        assert headers["error.reason"]
        if headers["error.class"] != b"raw_aadhaar":
            continue
        origin = (
            headers["source.topic"].decode(),
            int(headers["source.partition"]),
            int(headers["source.offset"]),
        )
        raw_aadhaar[origin] = record
    assert set(raw_aadhaar) == leaked_inputs
    for origin, record in raw_aadhaar.items():
        original = originals[origin]
        schema = "RationCollection" if origin[0] == names.collections else "WorkerRegistration"
        _, datum = codec.decode(original.value or b"", schema)
        hits = scan_record(datum)
        assert hits, origin
        _, masked = codec.decode(record.value or b"", schema)
        assert masked == mask_record(datum, hits)
        dead_text = (record.value or b"").decode("latin-1") + (record.key or b"").decode("latin-1")
        for _, number in hits:
            assert "XXXX" in dead_text
            assert number[-4:] in dead_text
