"""A local PostgreSQL server run from Debian's packaged binaries (``/usr/lib/postgresql/N/bin``).

PostgreSQL refuses to run as root, so when we are root every server command runs as the
``postgres`` user (``runuser -u postgres --``) and the data lives where that user can reach it
(``/var/tmp/eshram-locator/postgres-<port>``, see ``data_dir_for``). ``start`` and ``stop`` are
idempotent; the server listens on 127.0.0.1 only and keeps its unix socket in its data dir.
Nothing here reads settings; ``bootstrap`` passes the values in.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import make_conninfo

from eshram_locator.errors import LocalServiceError
from eshram_locator.local._common import file_lock, port_free, tail

log = structlog.get_logger()

DEBIAN_POSTGRES_ROOT = Path("/usr/lib/postgresql")
# As root the data cannot live under /root (user postgres cannot enter it); this parent is
# created root-owned 0755 and checked before use (see _make_dir).
ROOT_DATA_PARENT = Path("/var/tmp/eshram-locator")  # noqa: S108  # reason above
SERVER_USER = "postgres"
SUPERUSER = "postgres"  # initdb -U postgres

# Written on every start, included from postgresql.conf: the server's whole local configuration.
_CONF_TEMPLATE = """# Written by eshram-locator on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 100
shared_buffers = {shared_buffers_mb}MB
max_wal_size = 4GB
checkpoint_timeout = 15min
# Two locators wait for each other's row locks at times (a registration locks a member whose
# collections the other process reads); PostgreSQL looks for a deadlock only after this long,
# and both processes idle until then (1s by default: a second of the machine per deadlock).
deadlock_timeout = 100ms
fsync = on
synchronous_commit = on
full_page_writes = on
logging_collector = off
log_min_messages = warning
log_line_prefix = '%m [%p] %q%u@%d '
"""
_CONF_NAME = "eshram-locator.conf"


def shared_buffers_mb(memory_bytes: int) -> int:
    """PostgreSQL's buffer cache for a machine with ``memory_bytes`` of RAM: a quarter of it
    (the usual advice for a server that shares the machine), at least PostgreSQL's default of
    128 MB, at most 4 GB. The bench's working set at 10,000,000 workers (the pages of the
    100,000 collecting members and workers and their index paths) is about 3 GB: with 1 GB it
    was evicted and read again every month (see BENCHMARKS.md, population scaling)."""
    return min(4096, max(128, memory_bytes // 4 // (1 << 20)))


def machine_memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class LocalRole:
    """A login role of the local server; ``password`` None: none (127.0.0.1 is trusted)."""

    name: str
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class PostgresStatus:
    running: bool
    pid: int | None
    port: int


def find_bin_dir(root: Path = DEBIAN_POSTGRES_ROOT) -> Path:
    """The newest ``/usr/lib/postgresql/<N>/bin`` that has initdb and pg_ctl."""
    candidates = [
        path.parent
        for path in root.glob("*/bin/initdb")
        if path.parent.parent.name.isdigit() and (path.parent / "pg_ctl").is_file()
    ]
    if not candidates:
        raise LocalServiceError(
            f"no PostgreSQL server binaries under {root}: install them with "
            "`apt-get install postgresql` (or set LOCATOR_POSTGRES_DSN to an external database)"
        )
    return max(candidates, key=lambda path: int(path.parent.name))


def data_dir_for(local_dir: Path, port: int) -> Path:
    """Where the server keeps its data: reachable by user postgres when we are root."""
    if os.geteuid() == 0:
        return ROOT_DATA_PARENT / f"postgres-{port}"
    return local_dir / "postgres"


class LocalPostgres:
    """One server: cluster in ``data_dir/pgdata``, log in ``data_dir``, socket in ``data_dir``."""

    def __init__(
        self,
        *,
        port: int,
        database: str,
        data_dir: Path,
        bin_dir: Path | None = None,
        owner: LocalRole | None = None,
        app: LocalRole | None = None,
    ) -> None:
        self.port = port
        self.database = database
        self.data_dir = data_dir
        self._bin_dir = bin_dir
        self._as_root = os.geteuid() == 0
        self.owner = owner or LocalRole("eshram_owner")
        self.app = app or LocalRole("eshram_app")

    def dsn(self, database: str | None = None) -> str:
        """The superuser's DSN: server administration only (roles), never the service."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database or self.database}"

    def owner_dsn(self, database: str | None = None) -> str:
        """The owner role: owns the database, runs the migrations, creates run databases."""
        return self._role_dsn(self.owner, database)

    def app_dsn(self, database: str | None = None) -> str:
        """The application role the processes run as: rows only, no DDL."""
        return self._role_dsn(self.app, database)

    def _role_dsn(self, role: LocalRole, database: str | None) -> str:
        return make_conninfo(
            host="127.0.0.1",
            port=str(self.port),
            dbname=database or self.database,
            user=role.name,
            **({"password": role.password} if role.password else {}),
        )

    @property
    def _pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def _log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir()
        return self._bin_dir

    # --- lifecycle -----------------------------------------------------------------------

    def status(self) -> PostgresStatus:
        pid = self._server_pid()
        return PostgresStatus(running=pid is not None, pid=pid, port=self.port)

    def start(self, timeout_s: float = 60.0) -> PostgresStatus:
        """Start the server unless it runs; create the database if missing."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.data_dir.with_name(self.data_dir.name + ".lock")):
            return self._start(timeout_s)

    def _start(self, timeout_s: float) -> PostgresStatus:
        pid = self._server_pid()
        if pid is None:
            if not port_free(self.port):
                raise LocalServiceError(
                    f"port {self.port} (the PostgreSQL port) is taken by another process; stop "
                    "it or choose another port with LOCATOR_POSTGRES_PORT"
                )
            self._init_cluster()
            self._write_config()
            result = self._run(
                "pg_ctl",
                "start",
                "-D",
                str(self._pgdata),
                "-l",
                str(self._log_file),
                "-w",
                "-t",
                str(int(timeout_s)),
                "-s",
            )
            if result.returncode != 0:
                raise LocalServiceError(
                    f"PostgreSQL did not start on port {self.port} (exit {result.returncode}): "
                    f"{result.stdout.strip()} {result.stderr.strip()}\n"
                    f"last lines of {self._log_file}:\n{self._log_tail()}"
                )
            pid = self._server_pid()
            log.info("postgres.started", pid=pid, port=self.port, data_dir=str(self.data_dir))
        else:
            running_port = self._running_port()
            if running_port is not None and running_port != self.port:
                raise LocalServiceError(
                    f"the local PostgreSQL in {self.data_dir} runs on port {running_port}, not "
                    f"on LOCATOR_POSTGRES_PORT={self.port}: stop it first (services down)"
                )
            log.debug("postgres.already_running", pid=pid, port=self.port)
        self._ensure_database()
        return PostgresStatus(running=True, pid=pid, port=self.port)

    def stop(self, timeout_s: float = 30.0) -> None:
        pid = self._server_pid()
        if pid is None:
            return
        result = self._run(
            "pg_ctl",
            "stop",
            "-D",
            str(self._pgdata),
            "-m",
            "fast",
            "-w",
            "-t",
            str(int(timeout_s)),
            "-s",
        )
        if result.returncode != 0:
            raise LocalServiceError(
                f"PostgreSQL (pid {pid}) did not stop: {result.stdout.strip()} "
                f"{result.stderr.strip()}"
            )
        log.info("postgres.stopped", pid=pid, port=self.port)

    # --- internals -----------------------------------------------------------------------

    def _server_pid(self) -> int | None:
        """The postmaster's pid if our cluster is running (``pg_ctl status`` exits 0)."""
        if not (self._pgdata / "PG_VERSION").is_file():
            return None
        result = self._run("pg_ctl", "status", "-D", str(self._pgdata))
        if result.returncode != 0:
            return None
        try:
            return int((self._pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _running_port(self) -> int | None:
        """The port line (the fourth) of postmaster.pid."""
        try:
            return int((self._pgdata / "postmaster.pid").read_text().split("\n")[3])
        except (OSError, ValueError, IndexError):
            return None

    def _init_cluster(self) -> None:
        if (self._pgdata / "PG_VERSION").is_file():
            return
        self._make_dir(self.data_dir)
        result = self._run(
            "initdb",
            "-D",
            str(self._pgdata),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--no-locale",
        )
        if result.returncode != 0:
            raise LocalServiceError(
                f"initdb of {self._pgdata} failed (exit {result.returncode}):\n"
                f"{tail(result.stdout + result.stderr)}"
            )
        with open(self._pgdata / "postgresql.conf", "a") as conf:
            conf.write(f"\ninclude_if_exists = '{_CONF_NAME}'\n")
        log.info("postgres.initialised", data_dir=str(self._pgdata), bin_dir=str(self.bin_dir))

    def _write_config(self) -> None:
        path = self._pgdata / _CONF_NAME
        path.write_text(
            _CONF_TEMPLATE.format(
                port=self.port,
                socket_dir=self.data_dir,
                shared_buffers_mb=shared_buffers_mb(machine_memory_bytes()),
            )
        )
        self._give_to_server_user(path)

    def _ensure_database(self) -> None:
        """The two roles, and the database owned by the owner role (see ``_ensure_roles``)."""
        try:
            with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
                self._ensure_roles(conn)
                owner = sql.Identifier(self.owner.name)
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
                ).fetchone()
                if exists is None:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(self.database), owner
                        )
                    )
                    log.info("postgres.database_created", database=self.database)
                else:
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                            sql.Identifier(self.database), owner
                        )
                    )
            with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
                self._hand_tables_to_owner(conn)
        except psycopg.Error as error:
            raise LocalServiceError(
                f"could not create database {self.database!r} on port {self.port}: {error}"
            ) from error

    def _ensure_roles(self, conn: psycopg.Connection[Any]) -> None:
        """Create or update the owner and application roles (idempotent).

        Owner: LOGIN CREATEDB (creates the demo's and the tests' run databases, which it then
        owns), a member of ``pg_signal_backend`` (``DROP DATABASE ... WITH (FORCE)`` of a run
        database ends the application role's sessions) and of ``pg_checkpoint`` (the bench's
        preload checkpoints before it times anything). Application: LOGIN only; what it may
        touch is granted after each migration run (``postgres.migrate.grant_app_role``).
        """
        for role, attributes in (
            (self.owner, sql.SQL("LOGIN CREATEDB NOSUPERUSER NOCREATEROLE NOREPLICATION")),
            (self.app, sql.SQL("LOGIN NOCREATEDB NOSUPERUSER NOCREATEROLE NOREPLICATION")),
        ):
            name = sql.Identifier(role.name)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role.name,))
            verb = "ALTER" if exists.fetchone() else "CREATE"  # no CREATE ROLE IF NOT EXISTS
            password = (
                sql.SQL("PASSWORD {}").format(sql.Literal(role.password))
                if role.password
                else sql.SQL("PASSWORD NULL")
            )
            conn.execute(
                sql.SQL("{} ROLE {} {} NOBYPASSRLS {}").format(
                    sql.SQL(verb), name, attributes, password
                )
            )
        for granted in ("pg_signal_backend", "pg_checkpoint"):  # pg_checkpoint: PostgreSQL 15+
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (granted,))
            if exists.fetchone() is not None:
                conn.execute(
                    sql.SQL("GRANT {} TO {}").format(
                        sql.Identifier(granted), sql.Identifier(self.owner.name)
                    )
                )

    def _hand_tables_to_owner(self, conn: psycopg.Connection[Any]) -> None:
        """Tables a superuser created in the database (clusters made before the roles existed)
        pass to the owner role, which must own what it migrates and grants."""
        tables = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
            " AND pg_get_userbyid(c.relowner) <> %s",
            (self.owner.name,),
        ).fetchall()
        for (table,) in tables:
            conn.execute(
                sql.SQL("ALTER TABLE public.{} OWNER TO {}").format(
                    sql.Identifier(table), sql.Identifier(self.owner.name)
                )
            )
        if tables:
            log.info("postgres.tables_handed_to_owner", tables=len(tables))

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / program), *args]
        if self._as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        cwd = self.data_dir if self.data_dir.is_dir() else Path("/")
        return subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd)

    def _make_dir(self, path: Path) -> None:
        if self._as_root:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            parent = path.parent.lstat()
            if stat.S_ISLNK(parent.st_mode) or parent.st_uid != 0 or parent.st_mode & 0o022:
                raise LocalServiceError(
                    f"{path.parent} must be a directory owned by root and writable only by it"
                )
        path.mkdir(parents=True, exist_ok=True)
        self._give_to_server_user(path)
        path.chmod(0o700)

    def _give_to_server_user(self, path: Path) -> None:
        if not self._as_root:
            return
        try:
            user = pwd.getpwnam(SERVER_USER)
        except KeyError as error:
            raise LocalServiceError(
                f"running as root needs the {SERVER_USER!r} user, which Debian's postgresql "
                "package creates: `apt-get install postgresql`"
            ) from error
        os.chown(path, user.pw_uid, user.pw_gid)

    def _log_tail(self) -> str:
        try:
            return tail(self._log_file.read_text(errors="replace"))
        except OSError:
            return "(no log written)"
