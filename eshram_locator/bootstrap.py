"""The one wiring module: reads the environment, builds settings, adapters and local services.

Everything else receives what it needs from here; nothing else reads the environment.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from consumers.locator import LocatorConfig, LocatorProcess, Totals
from eshram_locator import settings as settings_module
from eshram_locator.avro_codec import AvroCodec, load_codec
from eshram_locator.domain.rules import RuleParams
from eshram_locator.errors import ConfigError
from eshram_locator.kafka import clients
from eshram_locator.kafka.publish import publish_schemas
from eshram_locator.kafka.relay import OutboxRelay
from eshram_locator.kafka.topics import ProvisionReport, provision_topics, topic_specs
from eshram_locator.local.kafka_server import LocalKafka
from eshram_locator.local.postgres_server import LocalPostgres, data_dir_for
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
    bootstrap_servers: str
    postgres_dsn: str = field(repr=False)  # an external DSN may carry a password


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
    return LocalKafka(
        version=settings.kafka_version,
        cache_dir=settings.cache_dir,
        data_dir=settings.local_dir / "kafka",
        port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
        heap=settings.kafka_heap,
    )


def local_postgres(settings: Settings) -> LocalPostgres:
    return LocalPostgres(
        port=settings.postgres_port,
        database=settings.postgres_database,
        data_dir=data_dir_for(settings.local_dir, settings.postgres_port),
    )


def postgres_dsn(settings: Settings) -> str:
    if settings.postgres_dsn is not None:
        return settings.postgres_dsn.get_secret_value()
    return local_postgres(settings).dsn()


def ensure_services(settings: Settings) -> Endpoints:
    """Start the local broker and database where settings ask for local ones (idempotent)."""
    if settings.uses_local_postgres:
        local_postgres(settings).start()
    if settings.uses_local_kafka:
        local_kafka(settings).start()
    return Endpoints(
        bootstrap_servers=settings.bootstrap_servers, postgres_dsn=postgres_dsn(settings)
    )


def admin_client(bootstrap_servers: str) -> AdminClient:
    return AdminClient(
        {"bootstrap.servers": bootstrap_servers, "client.id": "eshram-locator-admin"}
    )


def provision(settings: Settings, bootstrap_servers: str) -> ProvisionReport:
    specs = topic_specs(
        settings.collections_partitions,
        settings.topic_partitions,
        settings.replication_factor,
        prefix=settings.topic_prefix,
    )
    return provision_topics(admin_client(bootstrap_servers), specs)


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
    return clients.producer(endpoints.bootstrap_servers)


def locator_process(
    settings: Settings,
    endpoints: Endpoints,
    *,
    idle_exit_polls: int | None = None,
    on_batch: Callable[[Totals], None] | None = None,
) -> LocatorProcess:
    """A ready-to-run locator: migrations applied, schemas published, clients built."""
    apply_migrations(endpoints.postgres_dsn)
    names = topic_names(settings)
    avro = codec(settings)
    producer = clients.producer(endpoints.bootstrap_servers)
    publish_schemas(producer, avro, names)
    consumer = clients.batch_consumer(endpoints.bootstrap_servers, settings.consumer_group)
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


def topic_partitions(bootstrap_servers: str, names: list[str]) -> dict[str, int | None]:
    """Partition count of each topic (None: it does not exist)."""
    metadata = admin_client(bootstrap_servers).list_topics(timeout=30)
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
        topic_partitions(endpoints.bootstrap_servers, list(joined)), joined
    )
    avro = codec(settings)
    publish_schemas(clients.producer(endpoints.bootstrap_servers), avro, names)
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
    dsn = (
        settings.subscriber_postgres_dsn.get_secret_value()
        if settings.subscriber_postgres_dsn is not None
        else endpoints.postgres_dsn
    )
    group = f"{settings.topic_prefix}{settings.subscriber_group}-{code:02d}"
    return StateSubscriber(
        consumer=clients.batch_consumer(endpoints.bootstrap_servers, group),
        decoder=SchemaTopicDecoder(schema_topic_loader(endpoints.bootstrap_servers, names.schemas)),
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
    )
