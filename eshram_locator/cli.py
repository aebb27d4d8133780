"""The ``eshram-locator`` command line.

Each subcommand is one function registered with ``@command(group)``: that wrapper loads nothing
by itself but turns the service's errors into one line on stderr and an exit code (2 for a
configuration error, 1 for any other error the service raises on purpose).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec

import typer

from eshram_locator import bootstrap
from eshram_locator.errors import ConfigError, LocatorError
from eshram_locator.logging_setup import configure_logging
from eshram_locator.settings import Settings

P = ParamSpec("P")

app = typer.Typer(
    name="eshram-locator",
    help="Derives where e-Shram workers live now from their ration collections.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
services_app = typer.Typer(
    help="The local Kafka broker and PostgreSQL server.", no_args_is_help=True
)
topics_app = typer.Typer(help="The topics of the event contract.", no_args_is_help=True)
security_app = typer.Typer(
    help="SCRAM users and ACLs of the secure profile (LOCATOR_KAFKA_SECURITY=scram).",
    no_args_is_help=True,
)
app.add_typer(services_app, name="services")
app.add_typer(topics_app, name="topics")
app.add_typer(security_app, name="security")

EXIT_ERROR = 1
EXIT_CONFIG = 2


def command(
    group: typer.Typer, name: str | None = None
) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Register a subcommand whose LocatorErrors end the process with one line on stderr."""

    def register(function: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                function(*args, **kwargs)
            except ConfigError as error:
                _fail(f"configuration error: {error}", EXIT_CONFIG, error)
            except LocatorError as error:
                _fail(f"error: {error}", EXIT_ERROR, error)

        group.command(name)(run)
        return run

    return register


def _fail(message: str, code: int, error: Exception) -> None:
    first, _, rest = message.partition("\n")
    typer.echo(first, err=True)
    if rest:  # e.g. the tail of a server log: context below the one line that says what failed
        typer.echo(rest, err=True)
    raise typer.Exit(code) from error


def _settings() -> Settings:
    settings = bootstrap.load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _mask(dsn: str) -> str:
    """Hide a password in a URL or key=value DSN before printing it."""
    dsn = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


class Service(enum.StrEnum):
    kafka = "kafka"
    postgres = "postgres"


# --- services ----------------------------------------------------------------------------


@command(services_app, "up")
def services_up() -> None:
    """Start the local broker and database (unless external ones are set) and create topics."""
    settings = _settings()
    endpoints = bootstrap.ensure_services(settings, as_admin=True)
    report = bootstrap.provision(settings, endpoints.bootstrap_servers)
    profile = " (scram)" if settings.kafka_security == "scram" else ""
    typer.echo(f"kafka: {endpoints.bootstrap_servers}{profile}")
    typer.echo(f"postgres: {_mask(endpoints.postgres_dsn)}")
    typer.echo(f"topics: {len(report.created)} created, {len(report.unchanged)} unchanged")


@command(services_app, "down")
def services_down(
    services: Annotated[
        list[Service] | None, typer.Argument(help="Which to stop (default: both).")
    ] = None,
) -> None:
    """Stop the local broker and/or database. External services are never touched."""
    settings = _settings()
    chosen = set(services or Service)
    if Service.kafka in chosen:
        if settings.uses_local_kafka:
            bootstrap.local_kafka(settings).stop()
            typer.echo("kafka: stopped")
        else:
            typer.echo("kafka: external, not stopped")
    if Service.postgres in chosen:
        if settings.uses_local_postgres:
            bootstrap.local_postgres(settings).stop()
            typer.echo("postgres: stopped")
        else:
            typer.echo("postgres: external, not stopped")


@command(services_app, "status")
def services_status() -> None:
    """One line per service: running (pid, port), stopped, or external."""
    settings = _settings()
    if settings.uses_local_kafka:
        kafka = bootstrap.local_kafka(settings).status()
        if kafka.running:
            typer.echo(f"kafka: running (pid {kafka.pid}, port {kafka.port})")
        elif kafka.pid is not None:
            typer.echo(f"kafka: starting (pid {kafka.pid}, port {kafka.port})")
        else:
            typer.echo("kafka: stopped")
    else:
        typer.echo(f"kafka: external ({settings.bootstrap_servers})")
    if settings.uses_local_postgres:
        postgres = bootstrap.local_postgres(settings).status()
        typer.echo(
            f"postgres: running (pid {postgres.pid}, port {postgres.port})"
            if postgres.running
            else "postgres: stopped"
        )
    else:
        typer.echo(f"postgres: external ({_mask(bootstrap.postgres_dsn(settings))})")


# --- topics ------------------------------------------------------------------------------


@command(topics_app, "provision")
def topics_provision() -> None:
    """Create the contract's missing topics on the configured broker; check existing ones."""
    settings = _settings()
    report = bootstrap.provision(settings, settings.bootstrap_servers)
    for name in report.created:
        typer.echo(f"created: {name}")
    typer.echo(f"topics: {len(report.created)} created, {len(report.unchanged)} unchanged")


# --- security ------------------------------------------------------------------------------


@command(security_app, "apply")
def security_apply(
    generate_missing: Annotated[
        bool,
        typer.Option(
            help="Write a random password to the secrets directory for each principal "
            "without one (local and test brokers)."
        ),
    ] = False,
) -> None:
    """Make the broker's SCRAM users and ACLs match the ACL file; a re-run changes nothing.

    Runs as the super user. Deletes ACLs that are not in the file and users it no longer names."""
    settings = _settings()
    bootstrap.require_scram(settings)
    policy = bootstrap.acl_policy(settings)  # a bad file stops here, before any connection
    endpoints = bootstrap.ensure_services(settings, as_admin=True)
    report = bootstrap.apply_kafka_security(
        settings, endpoints, policy, generate_missing=generate_missing
    )
    for user in report.users_created:
        typer.echo(f"user created: {user}")
    for user in report.users_updated:
        typer.echo(f"user password changed: {user}")
    for user in report.users_removed:
        typer.echo(f"user removed: {user}")
    typer.echo(
        f"users: {len(report.users_created)} created, {len(report.users_updated)} updated, "
        f"{len(report.users_removed)} removed, {report.users_unchanged} unchanged; "
        f"acls: {report.acls_created} created, {report.acls_removed} removed, "
        f"{report.acls_unchanged} unchanged"
    )


# --- processes -------------------------------------------------------------------------


@command(app, "locator")
def locator(
    until_idle: Annotated[
        bool, typer.Option(help="Exit once the input topics have been idle for a few seconds.")
    ] = False,
) -> None:
    """Run the locator: consume collections and the registry, publish location changes.

    SIGTERM or Ctrl-C finishes the batch in flight, commits it and exits 0."""
    settings = _settings()
    endpoints = bootstrap.ensure_services(settings)
    process = bootstrap.locator_process(
        settings, endpoints, idle_exit_polls=_IDLE_POLLS if until_idle else None
    )
    process.install_signal_handlers()
    totals = process.run()
    typer.echo(
        f"consumed {totals.consumed}, changes {totals.changes}, "
        f"dead-lettered {totals.dead_lettered}"
    )


_IDLE_POLLS = 10


Workers = Annotated[int, typer.Option(min=1, help="Simulated registered workers.")]
Months = Annotated[int, typer.Option(min=1, max=120, help="Simulated allocation months.")]
Seed = Annotated[int, typer.Option(help="Seed of the simulated population (same seed, same data).")]
OutDir = Annotated[Path, typer.Option(help="Where the ground-truth file is written.")]
InjectAadhaar = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Share of records given a raw Aadhaar-like number in a token or free-text field "
        "(tests the Aadhaar guard: they must all end in the DLQ, masked).",
    ),
]


@command(app, "simulate")
def simulate_command(
    workers: Workers = 20_000,
    months: Months = 12,
    seed: Seed = 7,
    out: OutDir = Path("out"),
    inject_aadhaar: InjectAadhaar = 0.0,
) -> None:
    """Produce a simulated population to the input topics and write its ground truth."""
    from eshram_locator.kafka.publish import publish_simulation
    from eshram_locator.simulator.config import SimulationConfig
    from eshram_locator.simulator.population import simulate
    from eshram_locator.simulator.truth import write_ground_truth

    settings = _settings()
    endpoints = bootstrap.ensure_services(settings)
    bootstrap.provision(settings, endpoints.bootstrap_servers)
    simulation = simulate(
        SimulationConfig(
            seed=seed, workers=workers, months=months, aadhaar_injection_rate=inject_aadhaar
        )
    )
    out.mkdir(parents=True, exist_ok=True)
    truth = write_ground_truth(out / "ground-truth.jsonl", simulation.ground_truth())
    counts = publish_simulation(
        bootstrap.producer(endpoints),
        bootstrap.codec(settings),
        bootstrap.topic_names(settings),
        simulation.messages(),
    )
    for topic, count in sorted(counts.by_topic.items()):
        typer.echo(f"{topic}: {count:,}")
    typer.echo(f"ground truth: {truth:,} true moves in {out / 'ground-truth.jsonl'}")


@command(app, "demo")
def demo(
    workers: Workers = 50_000,
    months: Months = 12,
    seed: Seed = 7,
    out: OutDir = Path("out"),
    inject_aadhaar: InjectAadhaar = 0.0,
) -> None:
    """Start Kafka and Postgres, run the locator over a simulated population, print a summary."""
    from eshram_locator.demo import format_summary, run_simulated_pipeline
    from eshram_locator.simulator.config import SimulationConfig

    settings = _settings()
    if settings.log_level == "INFO":  # per-batch lines would tear the progress bars apart
        configure_logging("WARNING", settings.log_format)
    endpoints = bootstrap.ensure_services(settings, as_admin=True)
    typer.echo(f"kafka {endpoints.bootstrap_servers}, postgres {_mask(endpoints.postgres_dsn)}")
    result = run_simulated_pipeline(
        settings,
        endpoints,
        SimulationConfig(
            seed=seed, workers=workers, months=months, aadhaar_injection_rate=inject_aadhaar
        ),
        out,
    )
    typer.echo(format_summary(result))


# --- streams and the reference state subscriber ------------------------------------------------


@command(app, "streams")
def streams() -> None:
    """Run the streams worker (state fan-out, migration flows) and the states' query API.

    SIGTERM or Ctrl-C stops it; its tables are on disk and in their changelog topics."""
    settings = _settings()
    endpoints = bootstrap.ensure_services(settings)
    bootstrap.run_streams(settings, endpoints)


@command(app, "subscriber")
def subscriber(
    state: Annotated[
        int, typer.Option("--state", help="2-digit LGD code of the state whose topic to read.")
    ],
    from_beginning: Annotated[
        bool, typer.Option(help="Replay the topic from its start, ignoring stored offsets.")
    ] = False,
    until_idle: Annotated[
        bool, typer.Option(help="Exit once the topic has been idle for a few seconds.")
    ] = False,
) -> None:
    """Run the reference subscriber of one state: its topic into its own PostgreSQL table."""
    settings = _settings()
    endpoints = bootstrap.ensure_services(settings)
    process = bootstrap.state_subscriber(
        settings,
        endpoints,
        state,
        from_beginning=from_beginning,
        idle_exit_polls=_IDLE_POLLS if until_idle else None,
    )
    process.install_signal_handlers()
    totals = process.run()
    typer.echo(
        f"consumed {totals.consumed}, applied {totals.applied}, "
        f"duplicates {totals.duplicates}, rejected {totals.rejected}"
    )


def main() -> None:
    app()
