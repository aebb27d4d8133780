"""The secure profile against a real broker: SASL/SCRAM-SHA-512, the StandardAuthorizer and the
ACLs of security/acls.toml, applied by ``security apply``.

The module starts its own broker in the scram profile, on the ports two above the configured
ones (LOCATOR_KAFKA_PORT + 2, LOCATOR_KAFKA_CONTROLLER_PORT + 2), with its data and secrets in a
temporary directory, and stops it at the end. Topics carry a unique prefix, so the ACLs are
checked as they follow LOCATOR_TOPIC_PREFIX. No mocks: every denial below is the broker's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from pydantic import SecretStr

from eshram_locator import bootstrap
from eshram_locator.errors import KafkaAuthenticationError, LocalServiceError
from eshram_locator.kafka import clients
from eshram_locator.local.kafka_server import LocalKafka
from eshram_locator.records import (
    location_changed_from_avro,
    ration_collection_to_avro,
    worker_registration_to_avro,
)
from eshram_locator.settings import Settings
from eshram_locator.topics import TopicNames
from tests.integration.test_locator import HOME, MUMBAI, UAN, collection, registration

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DENIED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED}


@dataclass(frozen=True)
class SecureBroker:
    settings: Settings  # the super user's (admin) settings of the secure deployment
    names: TopicNames

    @property
    def bootstrap_servers(self) -> str:
        return self.settings.bootstrap_servers

    def settings_as(self, principal: str, **updates: Any) -> Settings:
        return self.settings.model_copy(update={"kafka_username": principal, **updates})

    def credentials(self, principal: str) -> clients.KafkaCredentials:
        credentials = bootstrap.client_credentials(self.settings_as(principal))
        assert credentials is not None
        return credentials

    def config(self, principal: str) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            **clients.security_config(self.credentials(principal)),
        }

    def endpoints(self, principal: str, dsn: str) -> bootstrap.Endpoints:
        return bootstrap.Endpoints(
            self.bootstrap_servers, dsn, kafka_credentials=self.credentials(principal)
        )


@pytest.fixture(scope="module")
def secure(
    settings: Settings, endpoints: bootstrap.Endpoints, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureBroker]:
    root = tmp_path_factory.mktemp("secure-kafka")
    prefix = f"sec-{uuid.uuid4().hex[:6]}."
    admin_settings = bootstrap.load_settings(
        kafka_security="scram",
        kafka_bootstrap=None,
        kafka_port=settings.kafka_port + 2,
        kafka_controller_port=settings.kafka_controller_port + 2,
        kafka_username=None,
        kafka_password=None,
        kafka_admin_password=None,
        kafka_ssl_ca_file=None,
        local_dir=root,
        kafka_secrets_dir=root / "secrets",
        postgres_dsn=endpoints.postgres_dsn,
        topic_prefix=prefix,
        consumer_group=f"{prefix}locator",
        collections_partitions=3,
        topic_partitions=2,
        batch_timeout_s=0.25,
    )
    broker = bootstrap.local_kafka(admin_settings)
    start_when_ports_free(broker)
    try:
        admin_endpoints = bootstrap.ensure_services(admin_settings, as_admin=True)
        bootstrap.provision(admin_settings, admin_endpoints.bootstrap_servers)
        bootstrap.apply_kafka_security(admin_settings, admin_endpoints, generate_missing=True)
        yield SecureBroker(admin_settings, TopicNames(prefix))
    finally:
        broker.stop()


# --- helpers ------------------------------------------------------------------------------------


def start_when_ports_free(broker: LocalKafka, patience_s: float = 90) -> None:
    """Start the broker; wait while its ports are taken. The derived ports are in the kernel's
    ephemeral range, where another job's outgoing connection (and its TIME_WAIT, 60 s) can
    hold one for a while."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            broker.start()
        except LocalServiceError as error:
            if "is taken by another process" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(2)
        else:
            return


def consume_error(config: dict[str, Any], group: str, topic: str, timeout_s: float = 30) -> int:
    """The first error code a consumer in ``group`` gets reading ``topic`` (0: it read fine)."""
    consumer = Consumer(
        {**config, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is None:
                return 0
            return int(error.code())
    finally:
        consumer.close()
    raise AssertionError(f"no message and no error reading {topic} in {timeout_s} s")


def produce_errors(config: dict[str, Any], topics: list[str]) -> dict[str, int]:
    """Topic -> the delivery error code of one message (0: delivered)."""
    producer = Producer({**config, "enable.idempotence": False, "message.timeout.ms": 15_000})
    results: dict[str, int] = {}

    def report(error: KafkaError | None, message: Any) -> None:
        results[message.topic()] = 0 if error is None else int(error.code())

    for topic in topics:
        producer.produce(topic, b"probe", b"key", on_delivery=report)
    producer.flush(30)
    return results


def read_all(
    config: dict[str, Any], group: str, topic: str, want: int, timeout_s: float
) -> list[Any]:
    consumer = Consumer(
        {**config, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    consumer.subscribe([topic])
    found: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < want and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None:
                assert message.error() is None, message.error()
                found.append(message)
    finally:
        consumer.close()
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- idempotency and authentication -----------------------------------------------------------


def test_apply_is_idempotent_removes_stray_acls_and_rotates_changed_passwords(
    secure: SecureBroker,
) -> None:
    admin_endpoints = bootstrap.ensure_services(secure.settings, as_admin=True)
    again = bootstrap.apply_kafka_security(secure.settings, admin_endpoints)
    assert not again.changed
    assert again.users_unchanged == 40  # pds, eshram-registry, locator, streams, 36 states
    assert again.acls_unchanged == len(
        bootstrap.acl_policy(secure.settings).rules(bootstrap.acl_naming(secure.settings))
    )

    # An ACL granted by hand, not in the file, goes at the next apply.
    admin = bootstrap.admin_client(
        secure.bootstrap_servers, bootstrap.admin_credentials(secure.settings)
    )
    stray = AclBinding(
        ResourceType.TOPIC,
        secure.names.location_changes,
        ResourcePatternType.LITERAL,
        "User:state-09",
        "*",
        AclOperation.READ,
        AclPermissionType.ALLOW,
    )
    for future in admin.create_acls([stray]).values():
        future.result()
    # So does a user created by hand.
    intruder = UserScramCredentialUpsertion(
        "intruder", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"intruder-pw"
    )
    for future in admin.alter_user_scram_credentials([intruder]).values():
        future.result()
    cleaned = bootstrap.apply_kafka_security(secure.settings, admin_endpoints)
    assert (cleaned.acls_created, cleaned.acls_removed) == (0, 1)
    assert cleaned.users_removed == ("intruder",)

    # A changed secret file rotates that user only; then nothing changes any more.
    secret = secure.settings.kafka_secrets_dir
    assert secret is not None
    (secret / "pds").write_text(f"rotated-{uuid.uuid4().hex}\n")
    rotated = bootstrap.apply_kafka_security(secure.settings, admin_endpoints)
    assert rotated.users_updated == ("pds",)
    assert not rotated.users_created
    assert not rotated.acls_created
    assert not bootstrap.apply_kafka_security(secure.settings, admin_endpoints).changed


def test_a_wrong_password_fails_authentication_with_a_named_error(secure: SecureBroker) -> None:
    wrong = "not-the-password-" + uuid.uuid4().hex
    settings = secure.settings_as(
        "locator", kafka_password=SecretStr(wrong), kafka_bootstrap=secure.bootstrap_servers
    )
    with pytest.raises(KafkaAuthenticationError, match="'locator'") as raised:
        bootstrap.ensure_services(settings)
    assert wrong not in str(raised.value)

    # The command line: exit status 1 and one line that names the principal, not the password.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LOCATOR_")}
    environment.update(
        {
            "LOCATOR_KAFKA_SECURITY": "scram",
            "LOCATOR_KAFKA_BOOTSTRAP": secure.bootstrap_servers,
            "LOCATOR_POSTGRES_DSN": bootstrap.postgres_dsn(secure.settings),
            "LOCATOR_KAFKA_USERNAME": "locator",
            "LOCATOR_KAFKA_PASSWORD": wrong,
            "LOCATOR_TOPIC_PREFIX": secure.names.prefix,
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "eshram_locator", "locator", "--until-idle"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "error: the broker at" in result.stderr
    assert "rejected the credentials of 'locator'" in result.stderr
    assert wrong not in result.stdout + result.stderr


def test_a_local_broker_refuses_to_start_with_another_admin_password(
    secure: SecureBroker,
) -> None:
    """The admin's SCRAM credential is in the formatted metadata: a changed password is named,
    not waited on. (The module's broker is restarted as it was at the end.)"""
    broker = bootstrap.local_kafka(secure.settings)
    broker.stop()
    try:
        wrong = "another-admin-password-" + uuid.uuid4().hex
        impostor = bootstrap.local_kafka(
            secure.settings.model_copy(update={"kafka_admin_password": SecretStr(wrong)})
        )
        rejected = r"rejected the credentials of 'admin'"
        with pytest.raises(LocalServiceError, match=rejected) as raised:
            impostor.start(timeout_s=60)
        assert wrong not in str(raised.value)
        assert not impostor.status().running
    finally:
        start_when_ports_free(broker)


# --- what each principal may not do -----------------------------------------------------------


def test_a_state_reads_its_own_topic_only(secure: SecureBroker) -> None:
    names = secure.names
    # The streams principal writes the state topics: one message on 09's, one on 10's.
    assert produce_errors(secure.config("streams"), [names.state(9), names.state(10)]) == {
        names.state(9): 0,
        names.state(10): 0,
    }
    state_09 = secure.config("state-09")
    own_group = f"{names.prefix}state-09.reader"
    assert consume_error(state_09, own_group, names.state(9)) == 0
    assert consume_error(state_09, own_group, names.state(10)) == (
        KafkaError.TOPIC_AUTHORIZATION_FAILED
    )
    assert consume_error(state_09, own_group, names.location_changes) == (
        KafkaError.TOPIC_AUTHORIZATION_FAILED
    )
    # Consumer groups only under its own prefix.
    assert consume_error(state_09, f"{names.prefix}state-10.reader", names.state(9)) == (
        KafkaError.GROUP_AUTHORIZATION_FAILED
    )


def test_a_state_writes_nowhere(secure: SecureBroker) -> None:
    names = secure.names
    targets = [names.state(9), names.state(10), names.collections, names.location_changes]
    errors = produce_errors(secure.config("state-09"), targets)
    assert set(errors) == set(targets)
    assert all(code in DENIED for code in errors.values()), errors


def test_a_pds_producer_writes_collections_and_reads_nothing(secure: SecureBroker) -> None:
    names = secure.names
    pds = secure.config("pds")
    errors = produce_errors(pds, [names.collections, names.registry])
    assert errors[names.collections] == 0
    assert errors[names.registry] in DENIED
    group = f"{names.prefix}pds-reader"
    for topic in (names.collections, names.location_changes, names.state(9)):
        assert consume_error(pds, group, topic) in {
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.GROUP_AUTHORIZATION_FAILED,
        }
    # It does not even see the other topics.
    listed = Consumer({**pds, "group.id": group}).list_topics(timeout=10).topics
    assert {name for name in listed if name.startswith(names.prefix)} == {names.collections}


def test_only_streams_reads_the_central_topic(secure: SecureBroker) -> None:
    names = secure.names
    assert produce_errors(secure.config("locator"), [names.location_changes]) == {
        names.location_changes: 0
    }
    for principal in ("locator", "pds", "eshram-registry", "state-27"):
        group = f"{names.prefix}state-27.x" if principal == "state-27" else "any-group"
        assert consume_error(secure.config(principal), group, names.location_changes) in {
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.GROUP_AUTHORIZATION_FAILED,
        }, principal
    streams_group = f"{names.prefix}{secure.settings.streams_app_id}"
    assert consume_error(secure.config("streams"), streams_group, names.location_changes) == 0


# --- the service under its own principals -----------------------------------------------------


def test_the_pipeline_runs_under_its_own_principals(
    secure: SecureBroker, fresh_database: str, tmp_path: Path
) -> None:
    """e-Shram and PDS produce, the locator locates, streams fans out, a state subscribes:
    each as its own principal, with nothing but its ACLs."""
    names = secure.names
    codec = bootstrap.codec(secure.settings)
    registry = Producer(secure.config("eshram-registry"))
    registry.produce(
        names.registry,
        codec.encode("WorkerRegistration", worker_registration_to_avro(registration())),
        UAN.encode(),
    )
    assert registry.flush(30) == 0
    pds = Producer(secure.config("pds"))
    places = [HOME, MUMBAI, MUMBAI, MUMBAI]
    for number, (month, place) in enumerate(
        zip(["2025-04", "2025-05", "2025-06", "2025-07"], places, strict=True)
    ):
        event = collection(number, month, place)
        pds.produce(
            names.collections,
            codec.encode("RationCollection", ration_collection_to_avro(event)),
            event.member_ref.encode(),
        )
    assert pds.flush(30) == 0

    locator_settings = secure.settings_as("locator", postgres_dsn=fresh_database)
    process = bootstrap.locator_process(
        locator_settings, secure.endpoints("locator", fresh_database), idle_exit_polls=4
    )
    totals = process.run()
    assert totals.changes == 1

    streams_log = tmp_path / "streams.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LOCATOR_")}
    environment.update(
        {
            "LOCATOR_KAFKA_SECURITY": "scram",
            "LOCATOR_KAFKA_BOOTSTRAP": secure.bootstrap_servers,
            "LOCATOR_KAFKA_USERNAME": "streams",
            "LOCATOR_KAFKA_SECRETS_DIR": str(secure.settings.kafka_secrets_dir),
            "LOCATOR_POSTGRES_DSN": fresh_database,
            "LOCATOR_TOPIC_PREFIX": names.prefix,
            "LOCATOR_TOPIC_PARTITIONS": "2",
            "LOCATOR_COLLECTIONS_PARTITIONS": "3",
            "LOCATOR_STREAMS_STORE": "memory",
            "LOCATOR_STREAMS_DATA_DIR": str(tmp_path / "streams"),
            "LOCATOR_API_PORT": str(free_port()),
            "LOCATOR_LOG_FORMAT": "json",
        }
    )
    with open(streams_log, "ab") as log_file:
        streams = subprocess.Popen(
            [sys.executable, "-m", "eshram_locator", "streams"],
            cwd=REPO,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        state_27 = secure.config("state-27")
        shared = read_all(state_27, f"{names.prefix}state-27.check", names.state(27), 1, 120)
        assert streams.poll() is None, streams_log.read_text(errors="replace")[-3000:]
        assert len(shared) == 1, streams_log.read_text(errors="replace")[-3000:]
        _, datum = codec.decode(shared[0].value(), "LocationChanged")
        assert location_changed_from_avro(datum).current_location.state_lgd == 27
    finally:
        streams.terminate()
        streams.wait(60)

    # The state's reference subscriber, as state-27, from its topic into its own table.
    subscriber = bootstrap.state_subscriber(
        secure.settings_as("state-27"),
        secure.endpoints("state-27", fresh_database),
        27,
        idle_exit_polls=4,
    )
    assert subscriber.run().applied == 1
