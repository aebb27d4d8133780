"""The one wiring module: reads the environment, builds settings, adapters and local services.

Everything else receives what it needs from here; nothing else reads the environment.
"""

from __future__ import annotations

import difflib
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from consumers.locator import LocatorConfig, LocatorProcess, Totals
from eshram_locator import settings as settings_module
from eshram_locator.acl_policy import AclPolicy, Naming, parse_policy, state_codes
from eshram_locator.avro_codec import AvroCodec, load_codec
from eshram_locator.domain.rules import RuleParams
from eshram_locator.errors import ConfigError
from eshram_locator.kafka import clients
from eshram_locator.kafka.clients import KafkaCredentials
from eshram_locator.kafka.publish import publish_schemas
from eshram_locator.kafka.relay import OutboxRelay
from eshram_locator.kafka.security import SecurityReport, apply_security, verify_credentials
from eshram_locator.kafka.topics import ProvisionReport, provision_topics, topic_specs
from eshram_locator.local.kafka_server import BrokerSecurity, LocalKafka
from eshram_locator.local.postgres_server import LocalPostgres, LocalRole, data_dir_for
from eshram_locator.locating import Locator
from eshram_locator.postgres.migrate import apply_migrations
from eshram_locator.settings import ENV_PREFIX, SETTINGS_FILE_VARIABLE, Settings
from eshram_locator.topics import TopicNames

__all__ = [
    "Endpoints",
    "Settings",
    "admin_client",
    "check_environment",
    "ensure_services",
    "load_settings",
    "local_kafka",
    "local_postgres",
    "provision",
]


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the broker and the database are. ``postgres_dsn`` is the application role's (what
    the processes run as); ``postgres_owner_dsn`` the schema owner's (migrations, run databases),
    None when one role does both."""

    bootstrap_servers: str
    postgres_dsn: str = field(repr=False)  # a DSN may carry a password
    _: KW_ONLY  # the optional parts by name: positions here once mixed up owner and credentials
    postgres_owner_dsn: str | None = field(default=None, repr=False)
    # The principal the process authenticates as (scram profile); None: plaintext.
    kafka_credentials: KafkaCredentials | None = field(default=None, repr=False)

    @property
    def kafka_config(self) -> dict[str, Any]:
        """librdkafka settings to merge into every client of this process."""
        return clients.security_config(self.kafka_credentials)

    @property
    def owner_dsn(self) -> str:
        return self.postgres_owner_dsn or self.postgres_dsn

    @property
    def app_role(self) -> str | None:
        """The application role to grant to after migrations; None when it is the owner."""
        app = conninfo_to_dict(self.postgres_dsn).get("user")
        owner = conninfo_to_dict(self.owner_dsn).get("user")
        return str(app) if app and app != owner else None

    def in_database(self, database: str) -> Endpoints:
        """The same roles, connected to another database of the same server."""
        return Endpoints(
            self.bootstrap_servers,
            make_conninfo(self.postgres_dsn, dbname=database),
            postgres_owner_dsn=None
            if self.postgres_owner_dsn is None
            else make_conninfo(self.postgres_owner_dsn, dbname=database),
            kafka_credentials=self.kafka_credentials,
        )


def migrate(endpoints: Endpoints) -> list[int]:
    """Apply pending migrations as the owner, then grant the application role its rows."""
    return apply_migrations(endpoints.owner_dsn, endpoints.app_role)


def known_variables() -> frozenset[str]:
    """Every LOCATOR_* name that means something (the nested model may also come as JSON)."""
    names = {variable for variable, _, _ in settings_module.settings_variables()}
    return frozenset({*names, SETTINGS_FILE_VARIABLE, f"{ENV_PREFIX}RULES"})


def check_environment(environ: Mapping[str, str]) -> None:
    """Reject unknown LOCATOR_* variables: a typo must not silently fall back to a default."""
    known = known_variables()
    unknown = sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    )
    if unknown:
        raise ConfigError("unknown setting variable(s): " + "; ".join(map(_suggest, unknown)))


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name.upper(), sorted(known_variables()), n=1, cutoff=0.8)
    return f"{name} (did you mean {close[0]}?)" if close else name


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and LOCATOR_SETTINGS_FILE); ConfigError when invalid."""
    check_environment(os.environ)
    return settings_module.load_settings(**overrides)


def local_kafka(settings: Settings) -> LocalKafka:
    """The local broker of the settings' profile; each profile has its own data directory."""
    security: BrokerSecurity | None = None
    data_dir = settings.local_dir / "kafka"
    if settings.kafka_security == "scram":
        if settings.kafka_ssl_ca_file is not None:
            raise ConfigError(
                "LOCATOR_KAFKA_SSL_CA_FILE: the local broker has no TLS listener "
                "(TLS is for external brokers; see the README's Security section)"
            )
        admin = admin_credentials(settings, generate=True)
        assert admin is not None  # the scram profile always has one
        security = BrokerSecurity(admin.username, admin.password)
        data_dir = settings.local_dir / "kafka-scram"
    return LocalKafka(
        version=settings.kafka_version,
        cache_dir=settings.cache_dir,
        data_dir=data_dir,
        port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
        heap=settings.kafka_heap,
        initial_rebalance_delay_ms=settings.kafka_initial_rebalance_delay_ms,
        security=security,
    )


# --- Kafka credentials (scram profile) ---------------------------------------------------------


def kafka_secrets_dir(settings: Settings) -> Path:
    return settings.kafka_secrets_dir or settings.local_dir / "kafka-secrets"


def _read_secret(path: Path) -> SecretStr | None:
    """The password in ``path`` (one line), or None if there is no such file."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(f"cannot read the secret file {path}: {error.strerror}") from error
    if not text:
        raise ConfigError(f"the secret file {path} is empty")
    return SecretStr(text)


def _new_secret(path: Path) -> SecretStr:
    """A random password written to ``path`` (mode 0600, in a 0700 directory)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    return SecretStr(password)


def admin_credentials(settings: Settings, *, generate: bool = False) -> KafkaCredentials | None:
    """The super user's credentials (None in the plaintext profile).

    The password is LOCATOR_KAFKA_ADMIN_PASSWORD, else the secrets directory's file named after
    the user; ``generate`` creates that file when neither exists (the local broker's first
    start)."""
    if settings.kafka_security == "plaintext":
        return None
    user = settings.kafka_admin_username
    path = kafka_secrets_dir(settings) / user
    password = settings.kafka_admin_password or _read_secret(path)
    if password is None:
        if not (generate and settings.uses_local_kafka):
            raise ConfigError(
                f"LOCATOR_KAFKA_ADMIN_PASSWORD is unset and there is no secret file {path}"
            )
        password = _new_secret(path)
    return KafkaCredentials(user, password, settings.kafka_ssl_ca_file)


def client_credentials(settings: Settings) -> KafkaCredentials | None:
    """The credentials of the principal this process runs as (None in the plaintext profile)."""
    if settings.kafka_security == "plaintext":
        return None
    user = settings.kafka_username
    if user is None:
        raise ConfigError(
            "LOCATOR_KAFKA_USERNAME: required with LOCATOR_KAFKA_SECURITY=scram "
            "(the principal this process runs as, e.g. locator)"
        )
    if user == settings.kafka_admin_username:
        return admin_credentials(settings, generate=True)
    path = kafka_secrets_dir(settings) / user
    password = settings.kafka_password or _read_secret(path)
    if password is None:
        raise ConfigError(f"LOCATOR_KAFKA_PASSWORD is unset and there is no secret file {path}")
    return KafkaCredentials(user, password, settings.kafka_ssl_ca_file)


def local_postgres(settings: Settings) -> LocalPostgres:
    return LocalPostgres(
        port=settings.postgres_port,
        database=settings.postgres_database,
        data_dir=data_dir_for(settings.local_dir, settings.postgres_port),
        owner=LocalRole(settings.postgres_owner_role, _secret(settings.postgres_owner_password)),
        app=LocalRole(settings.postgres_app_role, _secret(settings.postgres_app_password)),
    )


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def postgres_dsn(settings: Settings) -> str:
    """The application role's DSN: what the processes connect with."""
    if settings.postgres_dsn is not None:
        return settings.postgres_dsn.get_secret_value()
    return local_postgres(settings).app_dsn()


def postgres_owner_dsn(settings: Settings) -> str | None:
    """The schema owner's DSN (migrations); None: the application DSN does both."""
    if settings.postgres_owner_dsn is not None:
        return settings.postgres_owner_dsn.get_secret_value()
    if settings.postgres_dsn is not None:
        return None
    return local_postgres(settings).owner_dsn()


def endpoints(settings: Settings, credentials: KafkaCredentials | None = None) -> Endpoints:
    return Endpoints(
        bootstrap_servers=settings.bootstrap_servers,
        postgres_dsn=postgres_dsn(settings),
        postgres_owner_dsn=postgres_owner_dsn(settings),
        kafka_credentials=credentials,
    )


def ensure_services(settings: Settings, *, as_admin: bool = False) -> Endpoints:
    """Start the local broker and database where settings ask for local ones (idempotent).

    In the scram profile the endpoints carry the process's credentials (the super user's with
    ``as_admin``), checked against the broker: a wrong password stops here, by name."""
    credentials = (
        admin_credentials(settings, generate=True) if as_admin else client_credentials(settings)
    )
    if settings.uses_local_postgres:
        local_postgres(settings).start()
    if settings.uses_local_kafka:
        local_kafka(settings).start()
    if credentials is not None:
        verify_credentials(settings.bootstrap_servers, credentials)
    return endpoints(settings, credentials)


def admin_client(
    bootstrap_servers: str, credentials: KafkaCredentials | None = None
) -> AdminClient:
    return AdminClient(
        {
            "bootstrap.servers": bootstrap_servers,
            "client.id": "eshram-locator-admin",
            **clients.security_config(credentials),
        }
    )


def provision(settings: Settings, bootstrap_servers: str) -> ProvisionReport:
    """Create the contract's topics; in the scram profile as the super user."""
    specs = topic_specs(
        settings.collections_partitions,
        settings.topic_partitions,
        settings.replication_factor,
        prefix=settings.topic_prefix,
    )
    return provision_topics(admin_client(bootstrap_servers, admin_credentials(settings)), specs)


# --- security: SCRAM users and ACLs from the ACL file ---------------------------------------------


def acl_policy(settings: Settings) -> AclPolicy:
    path = settings.kafka_acl_file
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(
            f"LOCATOR_KAFKA_ACL_FILE: cannot read {path}: {error.strerror}"
        ) from error
    return parse_policy(text, str(path))


def acl_naming(settings: Settings) -> Naming:
    from eshram_locator.geography import STATES

    return Naming(
        topic_prefix=settings.topic_prefix,
        consumer_group=settings.consumer_group,
        streams_app_id=settings.streams_app_id,
        states=state_codes([state.lgd for state in STATES]),
    )


def principal_passwords(
    settings: Settings, principals: Iterable[str], *, generate_missing: bool = False
) -> dict[str, SecretStr]:
    """Each principal's password from its file in the secrets directory.

    ``generate_missing`` writes a random one for each principal without a file; otherwise a
    missing file is a ConfigError that names the principals (never a password)."""
    directory = kafka_secrets_dir(settings)
    passwords: dict[str, SecretStr] = {}
    missing: list[str] = []
    for principal in principals:
        password = _read_secret(directory / principal)
        if password is None and generate_missing:
            password = _new_secret(directory / principal)
        if password is None:
            missing.append(principal)
        else:
            passwords[principal] = password
    if missing:
        raise ConfigError(
            f"no secret file in {directory} for: {', '.join(missing)} "
            "(one file per principal holding its password; or pass --generate-missing)"
        )
    return passwords


def require_scram(settings: Settings) -> None:
    if settings.kafka_security != "scram":
        raise ConfigError(
            "security apply needs LOCATOR_KAFKA_SECURITY=scram (the plaintext profile's broker "
            "has no authorizer)"
        )


def apply_kafka_security(
    settings: Settings,
    endpoints: Endpoints,
    policy: AclPolicy | None = None,
    *,
    generate_missing: bool = False,
) -> SecurityReport:
    """Make the broker's SCRAM users and ACLs match the ACL file (run as the super user)."""
    require_scram(settings)
    admin = admin_credentials(settings)
    assert admin is not None  # scram profile
    policy = policy or acl_policy(settings)
    naming = acl_naming(settings)
    policy.check_super_user(admin.username, naming)
    passwords = principal_passwords(
        settings, policy.principal_names(naming), generate_missing=generate_missing
    )
    return apply_security(
        admin_client(endpoints.bootstrap_servers, admin),
        endpoints.bootstrap_servers,
        policy.rules(naming),
        passwords,
        super_users=[admin.username],
        ca_file=settings.kafka_ssl_ca_file,
    )


# --- the locator -------------------------------------------------------------------------------


def topic_names(settings: Settings) -> TopicNames:
    return TopicNames(settings.topic_prefix)


def codec(settings: Settings) -> AvroCodec:
    return load_codec(settings.avro_dir, settings.schema_registry_url)


def rule_params(settings: Settings) -> RuleParams:
    rules = settings.rules
    return RuleParams(
        confirm_months=rules.confirm_months,
        max_gap_months=rules.max_gap_months,
        address_request_cooldown_days=rules.address_request_cooldown_days,
        confidence_window_months=rules.confidence_window_months,
    )


def producer(endpoints: Endpoints) -> Producer:
    return clients.producer(endpoints.bootstrap_servers, **endpoints.kafka_config)


def locator_process(
    settings: Settings,
    endpoints: Endpoints,
    *,
    idle_exit_polls: int | None = None,
    on_batch: Callable[[Totals], None] | None = None,
) -> LocatorProcess:
    """A ready-to-run locator: migrations applied, schemas published, clients built."""
    migrate(endpoints)
    names = topic_names(settings)
    avro = codec(settings)
    producer = clients.producer(endpoints.bootstrap_servers, **endpoints.kafka_config)
    publish_schemas(producer, avro, names)
    consumer = clients.batch_consumer(
        endpoints.bootstrap_servers, settings.consumer_group, **endpoints.kafka_config
    )
    return LocatorProcess(
        consumer=consumer,
        conninfo=endpoints.postgres_dsn,
        codec=avro,
        locator=Locator(avro, rule_params(settings), names),
        relay=OutboxRelay(endpoints.postgres_dsn, producer),
        config=LocatorConfig(
            group_id=settings.consumer_group,
            topics=names,
            batch_size=settings.batch_size,
            batch_timeout_s=settings.batch_timeout_s,
            grace=timedelta(days=settings.grace_days),
            idle_exit_polls=idle_exit_polls,
        ),
        on_batch=on_batch,
    )


# --- the streams worker, the states' API and the reference state subscriber ---------------------
# Imported where used: Faust and aiohttp load only for the commands that need them.
from typing import TYPE_CHECKING  # noqa: E402 (this section is appended to the module)

if TYPE_CHECKING:
    from consumers.state_subscriber import StateSubscriber
    from streams.app import StreamsApp
    from streams.projection import StateProjection


def state_projections(settings: Settings) -> dict[int, StateProjection]:
    """Each state's projection (LOCATOR_STATE_GRANULARITY, LOCATOR_STATE_WITHHELD_FIELDS)."""
    from streams.projection import Granularity, StateProjection, WithholdableField

    codes = {*settings.state_granularity, *settings.state_withheld_fields}
    projections: dict[int, StateProjection] = {}
    for code in sorted(codes):
        state = _state_code(code, "LOCATOR_STATE_GRANULARITY / LOCATOR_STATE_WITHHELD_FIELDS")
        projections[state] = StateProjection(
            Granularity(settings.state_granularity.get(code, "district")),
            frozenset(
                WithholdableField(name) for name in settings.state_withheld_fields.get(code, [])
            ),
        )
    return projections


def api_tokens(settings: Settings) -> dict[str, int]:
    """Bearer token -> state (LOCATOR_API_TOKENS is keyed by state so that tokens stay secret)."""
    tokens: dict[str, int] = {}
    for code, secret in settings.api_tokens.items():
        token = secret.get_secret_value()
        if len(token) < 16:
            raise ConfigError(f"LOCATOR_API_TOKENS: the token of state {code} is shorter than 16")
        if token in tokens:
            raise ConfigError("LOCATOR_API_TOKENS: two states share a token")
        tokens[token] = _state_code(code, "LOCATOR_API_TOKENS")
    return tokens


def _state_code(code: str, variable: str) -> int:
    from eshram_locator.geography import STATES_BY_LGD

    if len(code) != 2 or not code.isdigit() or int(code) not in STATES_BY_LGD:
        raise ConfigError(f"{variable}: {code!r} is not a 2-digit state LGD code")
    return int(code)


def topic_partitions(
    bootstrap_servers: str, names: list[str], credentials: KafkaCredentials | None = None
) -> dict[str, int | None]:
    """Partition count of each topic (None: it does not exist, or this principal may not see it)."""
    metadata = admin_client(bootstrap_servers, credentials).list_topics(timeout=30)
    return {
        name: len(metadata.topics[name].partitions) if name in metadata.topics else None
        for name in names
    }


def streams_app(settings: Settings, endpoints: Endpoints, *, with_api: bool = True) -> StreamsApp:
    """The streams worker, checked for co-partitioning, with the states' API attached."""
    from streams.api import ApiConfig, build_api
    from streams.app import StreamsApp, StreamsConfig
    from streams.copartition import copartitioned_partitions

    names = topic_names(settings)
    joined = (names.registry, names.location_changes)
    partitions = copartitioned_partitions(
        topic_partitions(endpoints.bootstrap_servers, list(joined), endpoints.kafka_credentials),
        joined,
    )
    avro = codec(settings)
    publish_schemas(
        clients.producer(endpoints.bootstrap_servers, **endpoints.kafka_config), avro, names
    )
    projections = state_projections(settings)
    data_dir = settings.streams_data_dir or settings.local_dir / "streams"
    app = StreamsApp(
        StreamsConfig(
            app_id=settings.topic_prefix + settings.streams_app_id,
            bootstrap_servers=endpoints.bootstrap_servers,
            names=names,
            partitions=partitions,
            store=f"{settings.streams_store}://",
            data_dir=data_dir,
            replication_factor=settings.replication_factor,
            projections=projections,
            credentials=endpoints.kafka_credentials,
        ),
        avro,
    )
    if with_api:
        api = build_api(app, ApiConfig(api_tokens(settings), projections))
        app.serve_api(api, settings.api_host, settings.api_port)
    return app


def run_streams(settings: Settings, endpoints: Endpoints) -> None:
    """Run the streams worker until SIGTERM/SIGINT (Faust's worker handles both)."""
    import faust

    app = streams_app(settings, endpoints)
    worker = faust.Worker(app.app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()


def state_subscriber(
    settings: Settings,
    endpoints: Endpoints,
    state_lgd: int,
    *,
    from_beginning: bool = False,
    idle_exit_polls: int | None = None,
) -> StateSubscriber:
    """The reference subscriber of one state: its topic into its own PostgreSQL tables."""
    from consumers.state_subscriber import (
        SchemaTopicDecoder,
        StateSubscriber,
        SubscriberConfig,
        schema_topic_loader,
    )

    code = _state_code(f"{state_lgd:02d}", "--state")
    names = topic_names(settings)
    # Its own database: one role, the state's business; the service's: the service's roles.
    own = settings.subscriber_postgres_dsn
    dsn = own.get_secret_value() if own is not None else endpoints.postgres_dsn
    schema_dsn = own.get_secret_value() if own is not None else endpoints.owner_dsn
    app_role = None if own is not None else endpoints.app_role
    # Under the state's own prefix, where the state's principal may have consumer groups.
    group = f"{settings.topic_prefix}state-{code:02d}.{settings.subscriber_group}"
    return StateSubscriber(
        consumer=clients.batch_consumer(
            endpoints.bootstrap_servers, group, **endpoints.kafka_config
        ),
        decoder=SchemaTopicDecoder(
            schema_topic_loader(
                endpoints.bootstrap_servers,
                names.schemas,
                endpoints.kafka_config,
                group_id=f"{group}.schema-reader",
            )
        ),
        conninfo=dsn,
        config=SubscriberConfig(
            state_lgd=code,
            topic=names.state(code),
            schemas_topic=names.schemas,
            group_id=group,
            batch_size=settings.batch_size,
            batch_timeout_s=settings.batch_timeout_s,
            idle_exit_polls=idle_exit_polls,
            from_beginning=from_beginning,
        ),
        schema_conninfo=schema_dsn,
        app_role=app_role,
    )
