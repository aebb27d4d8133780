"""The one settings object.

Every value comes from an environment variable ``LOCATOR_<NAME>`` or from the optional TOML
file named by ``LOCATOR_SETTINGS_FILE`` (environment wins). Only ``bootstrap`` constructs it;
everything else receives the frozen object (or the part of it it needs).

pydantic-settings does the parsing and validation: a wrong type, an out-of-range number or an
unknown name fails start-up with ``ConfigError`` naming the variable, which is what an operator
needs and what we would otherwise hand-write for every field.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from eshram_locator.errors import ConfigError

ENV_PREFIX = "LOCATOR_"
SETTINGS_FILE_VARIABLE = f"{ENV_PREFIX}SETTINGS_FILE"
REPO_ROOT = Path(__file__).resolve().parent.parent

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class RuleSettings(BaseSettings):
    """The numbers of rules.md; changing one and replaying history gives a consistent answer."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    confirm_months: int = Field(
        2, ge=1, le=12, description="Rule 5: consecutive observed months that confirm a location."
    )
    max_gap_months: int = Field(
        3, ge=0, le=24, description="Rule 5: months without evidence that a streak survives."
    )
    address_request_cooldown_days: int = Field(
        90,
        ge=0,
        le=3650,
        description="Rule 9: at most one address-update request per worker in this many days.",
    )
    confidence_window_months: int = Field(
        6, ge=1, le=36, description="Rule 12: the window of months the confidence is computed over."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    # --- Kafka -----------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        None,
        description="Bootstrap servers of an external broker. Unset: the project starts a local one.",
    )
    kafka_version: str = Field(
        "4.4.0",
        pattern=r"^\d+\.\d+\.\d+$",
        description="Apache Kafka version resolved from Maven Central for the local broker.",
    )
    kafka_port: int = Field(
        19092, ge=1024, le=65535, description="Client port of the local broker."
    )
    kafka_controller_port: int = Field(
        19093, ge=1024, le=65535, description="KRaft controller port of the local broker."
    )
    kafka_heap: str = Field(
        "512m", pattern=r"^\d+[mg]$", description="Java heap of the local broker."
    )
    kafka_initial_rebalance_delay_ms: int = Field(
        3000,
        ge=0,
        le=300_000,
        description="The local broker's group.initial.rebalance.delay.ms (Kafka's default): how"
        " long a new consumer group waits for more members before its first assignment, so that"
        " locator processes started together each begin with their own share. The tests use 0.",
    )
    schema_registry_url: str | None = Field(
        None,
        description="Confluent Schema Registry URL. Set: records are written in Confluent framing; both framings are always read.",
    )
    collections_partitions: int = Field(
        12, ge=1, le=1000, description="Partitions of pds.ration-collections.v1."
    )
    topic_partitions: int = Field(6, ge=1, le=1000, description="Partitions of every other topic.")
    replication_factor: int = Field(
        1, ge=1, le=7, description="Replication factor of provisioned topics."
    )
    topic_prefix: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._-]*$",
        description="Prefix of every topic name (empty in production; isolates tests and demos on one broker).",
    )
    consumer_group: str = Field(
        "eshram-locator", min_length=1, description="Consumer group of the locator processes."
    )
    kafka_security: Literal["plaintext", "scram"] = Field(
        "plaintext",
        description="Security profile: plaintext (no authentication, local development) or scram (SASL/SCRAM-SHA-512 and ACLs; the local broker keeps its own data dir).",
    )
    kafka_username: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="Principal this process authenticates as (scram profile; e.g. locator, streams, state-27).",
    )
    kafka_password: SecretStr | None = Field(
        None,
        description="Password of LOCATOR_KAFKA_USERNAME. Unset: read from the file named after the user in LOCATOR_KAFKA_SECRETS_DIR.",
    )
    kafka_admin_username: str = Field(
        "admin",
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="The broker's super user (scram profile): the local broker's inter-broker principal; services up, topics provision and security apply authenticate as it.",
    )
    kafka_admin_password: SecretStr | None = Field(
        None,
        description="Password of the super user. Unset: read from LOCATOR_KAFKA_SECRETS_DIR (a local broker generates it there on first start).",
    )
    kafka_secrets_dir: Path | None = Field(
        None,
        description="Directory with one file per principal holding its password (mode 0600). Unset: <LOCATOR_LOCAL_DIR>/kafka-secrets.",
    )
    kafka_acl_file: Path = Field(
        REPO_ROOT / "security" / "acls.toml",
        description="The declarative ACL file that security apply makes the broker match.",
    )
    kafka_ssl_ca_file: Path | None = Field(
        None,
        description="CA certificate (PEM) of a broker with TLS listeners. Set with the scram profile: clients use SASL_SSL.",
    )

    # --- PostgreSQL ------------------------------------------------------------------------
    postgres_dsn: SecretStr | None = Field(
        None,
        description="libpq connection string of an external database, as the service's application role (reads and writes rows, no DDL). Unset: the project starts a local one.",
    )
    postgres_owner_dsn: SecretStr | None = Field(
        None,
        description="libpq connection string, to the same database, of the role that owns the schema and runs the migrations. Unset: LOCATOR_POSTGRES_DSN (one role does both).",
    )
    postgres_port: int = Field(
        55432, ge=1024, le=65535, description="Port of the local PostgreSQL server."
    )
    postgres_database: str = Field(
        "eshram_locator",
        pattern=r"^[a-z_][a-z0-9_]*$",
        description="Database created on the local server.",
    )
    postgres_owner_role: str = Field(
        "eshram_owner",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Role of the local server that owns the database and runs the migrations.",
    )
    postgres_owner_password: SecretStr | None = Field(
        None,
        description="Password of the local owner role. Unset: none (the local server trusts connections from 127.0.0.1).",
    )
    postgres_app_role: str = Field(
        "eshram_app",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Role of the local server the processes run as: SELECT, INSERT, UPDATE, DELETE on the service's tables, nothing else.",
    )
    postgres_app_password: SecretStr | None = Field(
        None,
        description="Password of the local application role. Unset: none (the local server trusts connections from 127.0.0.1).",
    )

    # --- Local services --------------------------------------------------------------------
    local_dir: Path = Field(
        REPO_ROOT / ".local-services",
        description="Where the local broker and database keep their data and logs.",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "eshram-locator",
        description="Where resolved Kafka jars are cached between runs.",
    )

    # --- Locator ---------------------------------------------------------------------------
    batch_size: int = Field(10_000, ge=1, le=1_000_000, description="Messages consumed per batch.")
    batch_timeout_s: float = Field(
        0.1, gt=0, le=60, description="Longest wait for a batch to fill."
    )
    grace_days: int = Field(
        35,
        ge=0,
        le=3650,
        description="Days a collection by an unregistered member is kept for a late registration.",
    )
    rules: RuleSettings = Field(
        default_factory=lambda: RuleSettings(),
        description="Derivation rule numbers (LOCATOR_RULES__CONFIRM_MONTHS, ...).",
    )

    # --- Avro and logging ------------------------------------------------------------------
    avro_dir: Path = Field(
        REPO_ROOT / "avro",
        description="Directory of the .avsc contract (every version ever shipped).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level logged."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: JSON unless stderr is a terminal."
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {server!r}")
        return value

    @field_validator("consumer_group")
    @classmethod
    def _group_is_a_name(cls, value: str) -> str:
        if not _TOPIC_NAME.match(value):
            raise ValueError("only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("postgres_app_role")
    @classmethod
    def _app_role_differs(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("postgres_owner_role"):
            raise ValueError("the application role must not be the owner role")
        return value

    @field_validator("avro_dir")
    @classmethod
    def _avro_dir_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFileSource(settings_cls))

    @property
    def uses_local_kafka(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def uses_local_postgres(self) -> bool:
        return self.postgres_dsn is None

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    # --- Streams and API ---
    streams_app_id: str = Field(
        "eshram-streams",
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="Faust application id of the streams worker: its consumer group and the prefix of its changelog topics (after LOCATOR_TOPIC_PREFIX).",
    )
    streams_store: Literal["rocksdb", "memory"] = Field(
        "rocksdb",
        description="Table store of the streams worker: rocksdb (on disk, recovered from the changelog) or memory (tests).",
    )
    streams_data_dir: Path | None = Field(
        None,
        description="Where the streams worker keeps its RocksDB tables. Unset: <LOCATOR_LOCAL_DIR>/streams.",
    )
    state_granularity: dict[str, Literal["district", "state"]] = Field(
        default_factory=dict,
        description='Location granularity each state receives, by 2-digit state code, as JSON (e.g. {"09": "state"}). Default district.',
    )
    state_withheld_fields: dict[str, list[Literal["evidence", "previous_location"]]] = Field(
        default_factory=dict,
        description='Fields withheld from a state, by 2-digit state code, as JSON (e.g. {"27": ["evidence"]}). Default none.',
    )
    api_host: str = Field(
        "127.0.0.1", min_length=1, description="Address the states' query API listens on."
    )
    api_port: int = Field(8088, ge=1, le=65535, description="Port of the states' query API.")
    api_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Bearer token of each state API client, by 2-digit state code, as JSON (e.g. {"09": "..."}). No token: the state has no access.',
    )
    subscriber_postgres_dsn: SecretStr | None = Field(
        None,
        description="libpq connection string of the reference state subscriber's database. Unset: the service's database.",
    )
    subscriber_group: str = Field(
        "state-subscriber",
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="Consumer group of the reference state subscriber, under the state's own prefix: state-<SS>.<this> (after LOCATOR_TOPIC_PREFIX).",
    )


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the optional TOML file named by LOCATOR_SETTINGS_FILE (keys without the prefix)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = os.environ.get(SETTINGS_FILE_VARIABLE)
        self._values: dict[str, Any] = {}
        if path:
            try:
                with open(path, "rb") as handle:
                    self._values = tomllib.load(handle)
            except (OSError, tomllib.TOMLDecodeError) as error:
                raise ConfigError(f"{SETTINGS_FILE_VARIABLE}={path}: {error}") from error

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def load_settings(**overrides: Any) -> Settings:
    """Build and validate the settings; a bad value raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = []
        for issue in error.errors():
            name = "__".join(str(part) for part in issue["loc"]).upper()
            problems.append(f"{ENV_PREFIX}{name}: {issue['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from error


def settings_variables() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the README table and compose test use it."""
    rows: list[tuple[str, str, str]] = []
    for name, field in Settings.model_fields.items():
        if name == "rules":
            for rule_name, rule_field in RuleSettings.model_fields.items():
                rows.append(
                    (
                        f"{ENV_PREFIX}RULES__{rule_name.upper()}",
                        repr(rule_field.default),
                        rule_field.description or "",
                    )
                )
            continue
        default = field.default if field.default_factory is None else "(computed)"
        rows.append((f"{ENV_PREFIX}{name.upper()}", str(default), field.description or ""))
    return rows
