"""Helpers of the streams integration tests (no tests here): the worker as a subprocess, its
topics, events to produce, and waiting for what it publishes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from eshram_locator.domain.model import (
    ChangeType,
    Evidence,
    Location,
    LocationChanged,
    Migration,
    WorkerRegistration,
)
from eshram_locator.domain.rules import location_event_id
from eshram_locator.records import location_changed_to_avro, worker_registration_to_avro
from eshram_locator.topics import STATE_TOPICS
from tests.integration.conftest import Pipeline

TOKENS = {
    "09": "token-of-uttar-pradesh",
    "10": "token-of-bihar-state",
    "27": "token-of-maharashtra",
}
REPO = Path(__file__).resolve().parents[2]


def registration(uan: str, home: Location, consent: bool) -> WorkerRegistration:
    return WorkerRegistration(
        uan=uan,
        member_ref=f"MR-{uan[-6:]}",  # never a 12-digit run: that would be Aadhaar-like
        permanent_address=home,
        present_address=None,
        occupation_nco=None,
        consent_state_sharing=consent,
        sms_reachable=True,
        updated_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def moved(
    uan: str, home: Location, previous: Location, current: Location, month: str
) -> LocationChanged:
    kind = ChangeType.RETURNED_HOME if current.district == home.district else ChangeType.MOVED
    return LocationChanged(
        event_id=location_event_id(uan, month, current.district, kind),
        change_type=kind,
        uan=uan,
        previous_location=previous,
        current_location=current,
        effective_month=month,
        detected_at=datetime(2025, 9, 1, tzinfo=UTC),
        migration=Migration.INTER_STATE
        if current.state_lgd != home.state_lgd
        else Migration.INTER_DISTRICT,
        home_state_lgd=home.state_lgd,
        evidence=Evidence(2, 3, month, month, ("FPS-1",)),
        confidence=1.0,
        present_address_matches=False,
        supersedes_event_id=None,
    )


def produce_registrations(pipeline: Pipeline, *registrations: WorkerRegistration) -> None:
    producer = pipeline.producer()
    for worker in registrations:
        value = pipeline.codec.encode("WorkerRegistration", worker_registration_to_avro(worker))
        producer.produce(pipeline.names.registry, value, worker.uan.encode())
    assert producer.flush(30) == 0


def produce_changes(
    pipeline: Pipeline, *changes: LocationChanged, topic: str | None = None
) -> None:
    producer = pipeline.producer()
    for change in changes:
        value = pipeline.codec.encode("LocationChanged", location_changed_to_avro(change))
        producer.produce(topic or pipeline.names.location_changes, value, change.uan.encode())
    assert producer.flush(30) == 0


@dataclass
class TopicReader:
    """Reads topics from the start and keeps reading: ``poll`` adds what arrived since."""

    bootstrap: str
    topics: list[str]
    messages: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = field(
        default_factory=list
    )

    def __post_init__(self) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self._consumer.subscribe(self.topics)

    def poll(self, seconds: float = 1.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self._consumer.consume(1000, 0.2):
                if message.error() is None:
                    self.messages.append(
                        (
                            message.topic() or "",
                            message.key(),
                            message.value(),
                            list(message.headers() or []),
                        )
                    )

    def close(self) -> None:
        self._consumer.close()


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, tick: Callable[[], None] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        if tick is not None:
            tick()
        else:
            time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api_get(port: int, path: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (http)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = json.loads(error.read() or b"null")
        error.close()
        return error.code, body


class StreamsWorker:
    """``eshram-locator streams`` in a subprocess, as an operator runs it."""

    def __init__(self, pipeline: Pipeline, data_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCATOR_")}
        env.update(
            {
                "LOCATOR_KAFKA_BOOTSTRAP": pipeline.endpoints.bootstrap_servers,
                "LOCATOR_POSTGRES_DSN": pipeline.endpoints.postgres_dsn,
                "LOCATOR_TOPIC_PREFIX": pipeline.settings.topic_prefix,
                "LOCATOR_TOPIC_PARTITIONS": str(pipeline.settings.topic_partitions),
                "LOCATOR_COLLECTIONS_PARTITIONS": str(pipeline.settings.collections_partitions),
                "LOCATOR_STREAMS_DATA_DIR": str(data_dir),
                "LOCATOR_API_PORT": str(self.port),
                "LOCATOR_API_TOKENS": json.dumps(TOKENS),
                "LOCATOR_LOG_FORMAT": "json",
                "LOCATOR_STATE_GRANULARITY": json.dumps({"10": "state"}),
            }
        )
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop/kill)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eshram_locator", "streams"],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._api_up, 120, "the streams API to listen")

    def _api_up(self) -> bool:
        assert self.process.poll() is None, f"streams worker exited: {self.log_tail()}"
        try:
            return api_get(self.port, "/openapi.json")[0] == 200
        except OSError:
            time.sleep(0.5)
            return False

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self._log.close()


@pytest.fixture
def streams_topics(pipeline: Pipeline, admin: AdminClient) -> Iterator[list[str]]:
    """The 36 state topics under the pipeline's prefix; they and the worker's own topics
    (changelogs, partials) are deleted after the test."""
    prefix = pipeline.settings.topic_prefix
    states = [prefix + name for name in STATE_TOPICS]
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=2, replication_factor=1) for name in states],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result()
    yield states
    listed = admin.list_topics(timeout=30).topics
    own = [
        name
        for name in listed
        if name in states or name.startswith(prefix + pipeline.settings.streams_app_id)
    ]
    if own:
        for future in admin.delete_topics(own, operation_timeout=30).values():
            future.result()
