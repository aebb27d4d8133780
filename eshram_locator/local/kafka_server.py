"""A local single-node Apache Kafka broker (KRaft, combined broker and controller).

The jars come from Maven Central through ``mvn dependency:copy-dependencies`` once per Kafka
version and are cached; the broker then runs as a detached ``java`` process whose pid is kept in
``data_dir``. Every operation is idempotent: ``start`` on a running broker returns at once,
``stop`` on a stopped one does nothing. Nothing here reads settings; ``bootstrap`` passes the
values in.

Two profiles. Without ``security`` the client listener is PLAINTEXT and anyone may do anything.
With a ``BrokerSecurity`` the client listener is SASL_PLAINTEXT with SCRAM-SHA-512 only, the
StandardAuthorizer denies whatever no ACL allows, and the admin principal is the one super user:
its SCRAM credential is written into the metadata log when the storage is formatted (so it
exists before the first client connects) and the broker uses it for inter-broker traffic. The
controller listener (one node, loopback) authenticates the same admin with SASL/PLAIN from the
broker's own JAAS configuration, because SCRAM credentials live in the metadata the controller
serves. Each profile keeps its own data directory; ``bootstrap`` chooses it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from eshram_locator.errors import LocalServiceError
from eshram_locator.local._common import file_lock, port_free, tail

log = structlog.get_logger()

LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.16"  # log4j-slf4j2-impl binds the slf4j 2 API; Kafka's pom names 1.7
_MAIN_CLASS = "kafka.Kafka"
_READY_POLL_S = 0.25

_POM_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by eshram-locator: the runtime class path of a local Kafka {version} broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.eshram-locator</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2_TEMPLATE = """# Written by eshram-locator: broker logs go to a rolling file, not stdout.
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


SCRAM_MECHANISM = "SCRAM-SHA-512"
# Characters that would break the JAAS option or kafka-storage's --add-scram syntax.
_UNSAFE_SECRET_CHARACTERS = frozenset('"\\,[]=; \t\r\n')


@dataclass(frozen=True, slots=True)
class BrokerSecurity:
    """The SASL/SCRAM profile: the admin principal (super user) and its password."""

    admin_username: str
    admin_password: SecretStr

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings with which the admin authenticates (used to probe readiness)."""
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": self.admin_username,
            "sasl.password": self.admin_password.get_secret_value(),
        }


@dataclass(frozen=True, slots=True)
class KafkaStatus:
    running: bool
    pid: int | None
    port: int


class LocalKafka:
    """One broker: jars in ``cache_dir/kafka-<version>``, data and logs in ``data_dir``."""

    def __init__(
        self,
        *,
        version: str,
        cache_dir: Path,
        data_dir: Path,
        port: int,
        controller_port: int,
        heap: str,
        initial_rebalance_delay_ms: int,
        security: BrokerSecurity | None = None,
    ) -> None:
        self.version = version
        self.cache_dir = cache_dir
        self.data_dir = data_dir
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.initial_rebalance_delay_ms = initial_rebalance_delay_ms
        self.security = security

    # --- paths -------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def _jar_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.version}"

    @property
    def _libs(self) -> Path:
        return self._jar_dir / "libs"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def _properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def _log4j_file(self) -> Path:
        return self.data_dir / "log4j2.properties"

    @property
    def _server_log(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def _console_log(self) -> Path:
        return self.data_dir / "console.log"

    @property
    def _log_dirs(self) -> Path:
        return self.data_dir / "logs"

    # --- jars ----------------------------------------------------------------------------

    def ensure_jars(self) -> Path:
        """Resolve the broker's runtime jars once; later calls reuse the cache."""
        marker = self._jar_dir / ".complete"
        pom_text = _POM_TEMPLATE.format(
            version=self.version, log4j=LOG4J_VERSION, slf4j=SLF4J_VERSION
        )
        stamp = hashlib.sha256(pom_text.encode()).hexdigest()
        if _read(marker) == stamp:
            return self._libs
        if shutil.which("mvn") is None:
            raise LocalServiceError("mvn is not on PATH: install Maven (apt-get install maven)")
        self._jar_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self._jar_dir / ".lock"):
            if _read(marker) == stamp:  # another process resolved them while we waited
                return self._libs
            pom = self._jar_dir / "pom.xml"
            pom.write_text(pom_text)
            shutil.rmtree(self._libs, ignore_errors=True)
            log.info("kafka.jars.resolving", version=self.version, cache=str(self._jar_dir))
            started = time.monotonic()
            result = subprocess.run(
                [
                    "mvn",
                    "-B",
                    "-q",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={self._libs}",
                    "-DincludeScope=runtime",
                ],
                cwd=self._jar_dir,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0 or not any(self._libs.glob("kafka_2.13-*.jar")):
                raise LocalServiceError(
                    f"resolving Kafka {self.version} jars with Maven failed "
                    f"(exit {result.returncode}):\n{tail(result.stdout + result.stderr)}"
                )
            marker.write_text(stamp)
            log.info(
                "kafka.jars.resolved",
                version=self.version,
                seconds=round(time.monotonic() - started, 1),
            )
        return self._libs

    # --- lifecycle -----------------------------------------------------------------------

    def status(self) -> KafkaStatus:
        """``running`` once the client port answers; ``pid`` as soon as our process lives."""
        pid = self._our_pid()
        running = pid is not None and _port_answers(self.port)
        return KafkaStatus(running=running, pid=pid, port=self.port)

    def config_current(self) -> bool:
        """Whether the broker's configuration file is the one these settings write (a running
        broker keeps the one it started with, e.g. an older initial rebalance delay)."""
        return _read(self._properties_file) == self._properties().strip()

    def start(self, timeout_s: float = 90.0) -> KafkaStatus:
        """Start the broker unless it runs; return once it answers metadata requests."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.data_dir / ".start.lock"):  # two starters: one launches
            return self._start(timeout_s)

    def _start(self, timeout_s: float) -> KafkaStatus:
        started = time.monotonic()
        deadline = started + timeout_s
        pid = self._our_pid()
        if pid is not None:
            if _port_answers(self.port):
                log.debug("kafka.already_running", pid=pid, port=self.port)
                if not self.config_current():
                    log.warning(
                        "kafka.running_with_other_config",
                        properties=str(self._properties_file),
                        hint="restart it to apply: services down kafka, then services up",
                    )
                return KafkaStatus(running=True, pid=pid, port=self.port)
            log.info("kafka.waiting_for_starting_broker", pid=pid)
            self._wait_ready(pid, None, deadline)
            return KafkaStatus(running=True, pid=pid, port=self.port)
        self._pid_file.unlink(missing_ok=True)
        _require_free(self.port, "LOCATOR_KAFKA_PORT", "the Kafka client port")
        _require_free(
            self.controller_port, "LOCATOR_KAFKA_CONTROLLER_PORT", "the Kafka controller port"
        )

        libs = self.ensure_jars()
        self._write_config()
        self._format_storage(libs)
        process = self._launch(libs)
        self._wait_ready(process.pid, process, max(deadline, time.monotonic() + 30))
        log.info(
            "kafka.started",
            pid=process.pid,
            port=self.port,
            seconds=round(time.monotonic() - started, 1),
        )
        return KafkaStatus(running=True, pid=process.pid, port=self.port)

    def stop(self, timeout_s: float = 30.0) -> None:
        pid = self._our_pid()
        if pid is None:
            self._pid_file.unlink(missing_ok=True)
            return
        log.info("kafka.stopping", pid=pid)
        _terminate(pid, timeout_s)
        self._pid_file.unlink(missing_ok=True)
        log.info("kafka.stopped", pid=pid)

    # --- internals -----------------------------------------------------------------------

    def _our_pid(self) -> int | None:
        """The pid in our pid file if that process is alive and is this broker."""
        try:
            pid = int(self._pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not _alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        ours = _MAIN_CLASS.encode() in cmdline and str(self._properties_file).encode() in cmdline
        return pid if ours else None

    def _write_config(self) -> None:
        _write_private(self._properties_file, self._properties())
        self._log4j_file.write_text(_LOG4J2_TEMPLATE.format(log_file=self._server_log))

    def _properties(self) -> str:
        """The broker's server.properties for these settings."""
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self._log_dirs),
            "num.partitions": "3",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": str(self.initial_rebalance_delay_ms),
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
        }
        if self.security is not None:
            properties.update(self._security_properties(self.security))
        lines = ["# Written by eshram-locator on every start; edits are overwritten."]
        lines += [f"{key}={value}" for key, value in properties.items()]
        return "\n".join(lines) + "\n"

    def _security_properties(self, security: BrokerSecurity) -> dict[str, str]:
        """SASL/SCRAM-SHA-512 on the client listener, SASL/PLAIN on the controller's, ACLs on."""
        user = security.admin_username
        password = _safe_secret(security.admin_password, "the Kafka admin password")
        if set(user) & _UNSAFE_SECRET_CHARACTERS:
            raise LocalServiceError(f"the Kafka admin user name {user!r} has unusable characters")
        scram = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{user}" password="{password}";'
        )
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{user}" password="{password}" user_{user}="{password}";'
        )
        return {
            "listeners": (
                f"SASL_PLAINTEXT://127.0.0.1:{self.port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": (
                "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT"
            ),
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": scram,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{user}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _java(self, libs: Path, *args: str) -> list[str]:
        return [
            "java",
            f"-Dlog4j2.configurationFile={self._log4j_file}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def _format_storage(self, libs: Path) -> None:
        if (self._log_dirs / "meta.properties").is_file():
            return
        cluster_id = _random_cluster_id()
        scram: list[str] = []
        if self.security is not None:  # the super user's credential, before any client connects
            password = _safe_secret(self.security.admin_password, "the Kafka admin password")
            scram = [
                "--add-scram",
                f"{SCRAM_MECHANISM}=[name={self.security.admin_username},password={password}]",
            ]
        result = subprocess.run(
            self._java(
                libs,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self._properties_file),
                "--standalone",
                *scram,
            ),
            capture_output=True,
            text=True,
            check=False,
            cwd=self.data_dir,
        )
        if result.returncode != 0:
            output = result.stdout + result.stderr
            if self.security is not None:  # the tool may echo its --add-scram argument
                output = output.replace(self.security.admin_password.get_secret_value(), "***")
            raise LocalServiceError(
                f"formatting Kafka storage in {self._log_dirs} failed "
                f"(exit {result.returncode}):\n{tail(output)}"
            )
        log.info(
            "kafka.storage.formatted",
            cluster_id=cluster_id,
            log_dirs=str(self._log_dirs),
            profile="scram" if self.security is not None else "plaintext",
        )

    def _launch(self, libs: Path) -> subprocess.Popen[bytes]:
        command = [
            "java",
            f"-Xmx{self.heap}",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            *self._java(libs, _MAIN_CLASS, str(self._properties_file))[1:],
        ]
        with open(self._console_log, "ab") as console:
            process = subprocess.Popen(
                command,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._pid_file.write_text(f"{process.pid}\n")
        log.info("kafka.launched", pid=process.pid, port=self.port, data_dir=str(self.data_dir))
        return process

    def _wait_ready(
        self, pid: int, process: subprocess.Popen[bytes] | None, deadline: float
    ) -> None:
        admin: AdminClient | None = None
        failures: list[KafkaError] = []  # SASL failures arrive through error_cb, on poll()
        last_error = "the client port never opened"
        while time.monotonic() < deadline:
            exited = process.poll() is not None if process is not None else not _alive(pid)
            if exited:
                self._pid_file.unlink(missing_ok=True)
                raise LocalServiceError(
                    f"the Kafka broker (pid {pid}) exited during start-up; "
                    f"last lines of its logs:\n{self._log_tail()}"
                )
            if _port_answers(self.port):
                if admin is None:
                    config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
                    if self.security is not None:
                        config.update(self.security.client_config())
                        config["error_cb"] = failures.append
                    admin = AdminClient(config)
                try:
                    metadata = admin.list_topics(timeout=2)
                except KafkaException as error:
                    last_error = str(error)
                    admin.poll(0)
                    if any(f.code() == KafkaError._AUTHENTICATION for f in failures):
                        self._reject_admin(pid)
                else:
                    if metadata.brokers:
                        return
                    last_error = "metadata lists no broker"
            time.sleep(_READY_POLL_S)
        _terminate(pid, 10.0)
        self._pid_file.unlink(missing_ok=True)
        raise LocalServiceError(
            f"the Kafka broker (pid {pid}) was not ready on port {self.port} in time "
            f"({last_error}) and was stopped; last lines of its logs:\n{self._log_tail()}"
        )

    def _reject_admin(self, pid: int) -> NoReturn:
        """The broker runs but refuses the admin's password: stop it and say what to do."""
        assert self.security is not None
        _terminate(pid, 10.0)
        self._pid_file.unlink(missing_ok=True)
        raise LocalServiceError(
            f"the local Kafka broker rejected the credentials of "
            f"{self.security.admin_username!r}: its storage in {self.data_dir} was formatted "
            "with another admin password (the SCRAM credential lives in its metadata). Restore "
            "the password it was formatted with, or delete that directory to start afresh. "
            "The broker was stopped."
        )

    def _log_tail(self) -> str:
        parts = []
        for path in (self._console_log, self._server_log):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path}\n{tail(path.read_text(errors='replace'))}")
        return "\n".join(parts) or "(no log written)"


# --- helpers (process and port handling) -------------------------------------------------


def _random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, not led by '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (a zombie child is reaped here)."""
    with contextlib.suppress(ChildProcessError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _terminate(pid: int, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.2)
    log.warning("process.kill_after_timeout", pid=pid, timeout_s=timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not _alive(pid):
            return
        time.sleep(0.1)
    raise LocalServiceError(f"process {pid} survived SIGKILL")


def _port_answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _require_free(port: int, variable: str, what: str) -> None:
    if not port_free(port):
        raise LocalServiceError(
            f"port {port} ({what}) is taken by another process; stop it or choose another "
            f"port with {variable}"
        )


def _safe_secret(secret: SecretStr, what: str) -> str:
    """The secret's value, if it can go into a JAAS option and --add-scram unquoted."""
    value = secret.get_secret_value()
    if not value or set(value) & _UNSAFE_SECRET_CHARACTERS:
        raise LocalServiceError(
            f"{what} is empty or has a character the local broker's configuration cannot carry "
            '(one of " \\ , [ ] = ; or white space); choose another'
        )
    return value


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (the secure profile's holds the admin password)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
