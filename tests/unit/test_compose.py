"""docker-compose.yml: every LOCATOR_* variable is a real, valid setting; every command exists.

PyYAML resolves anchors, aliases and ``<<`` merge keys the way Docker Compose does, so the
environment checked here is the one each container gets.
"""

from __future__ import annotations

import os
import shlex
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import typer.main

from eshram_locator import bootstrap, cli
from eshram_locator.errors import ConfigError
from eshram_locator.settings import ENV_PREFIX, Settings, load_settings

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return document


def _services() -> dict[str, dict[str, Any]]:
    services = _compose().get("services")
    assert isinstance(services, dict), "docker-compose.yml has no services mapping"
    assert services, "docker-compose.yml has no services"
    return services


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as Compose reads it: a mapping or a list of NAME=value."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = [str(entry).partition("=") for entry in environment]
        return {name: value for name, _, value in pairs}
    assert isinstance(environment, dict), f"environment is a {type(environment).__name__}"
    return {str(name): "" if value is None else str(value) for name, value in environment.items()}


def _locator_environment(service: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in _environment(service).items() if k.upper().startswith(ENV_PREFIX)}


def _command(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _is_path(annotation: Any) -> bool:
    if annotation is Path:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_is_path(part) for part in typing.get_args(annotation))
    return False


# Values naming a directory of the container (checked to exist, or created there): they cannot
# be validated on this machine.
PATH_VARIABLES = frozenset(
    f"{ENV_PREFIX}{name.upper()}"
    for name, field in Settings.model_fields.items()
    if _is_path(field.annotation)
)

SERVICES = _services()
WITH_SETTINGS = sorted(name for name, service in SERVICES.items() if _locator_environment(service))
# Services built from this repository run the eshram-locator image (ENTRYPOINT = the CLI).
OURS = sorted(name for name, service in SERVICES.items() if "build" in service)


def test_the_file_declares_our_services() -> None:
    assert {"locator", "topics"} <= set(OURS)
    assert WITH_SETTINGS, "no service sets a LOCATOR_* variable"


def test_anchors_and_merge_keys_are_resolved() -> None:
    locator = _locator_environment(SERVICES["locator"])
    assert "LOCATOR_KAFKA_BOOTSTRAP" in locator  # from the x-service-env anchor
    assert "LOCATOR_BATCH_SIZE" in locator  # its own, next to the merged ones


@pytest.mark.parametrize("service", WITH_SETTINGS)
def test_every_locator_variable_is_a_setting(service: str) -> None:
    unknown = sorted(set(_locator_environment(SERVICES[service])) - bootstrap.known_variables())
    assert not unknown, f"{service}: not settings: {unknown}"


@pytest.mark.parametrize("service", WITH_SETTINGS)
def test_every_value_is_valid(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    checked = {
        name: value
        for name, value in _locator_environment(SERVICES[service]).items()
        if name.upper() not in PATH_VARIABLES
    }
    for name, value in checked.items():
        monkeypatch.setenv(name, value)
    try:
        bootstrap.check_environment(os.environ)
        settings = load_settings()
    except ConfigError as error:
        pytest.fail(f"{service}: {error}")
    for name, value in checked.items():
        field = name.upper().removeprefix(ENV_PREFIX).lower()
        if field in Settings.model_fields and "__" not in field:
            loaded = getattr(settings, field)
            shown = loaded.get_secret_value() if hasattr(loaded, "get_secret_value") else loaded
            assert str(shown) == value, f"{service}: {name}={value!r} was read as {shown!r}"


def test_path_variables_are_the_path_settings() -> None:
    assert {"LOCATOR_AVRO_DIR", "LOCATOR_LOCAL_DIR", "LOCATOR_CACHE_DIR"} <= PATH_VARIABLES
    assert "LOCATOR_BATCH_SIZE" not in PATH_VARIABLES


@pytest.mark.parametrize("service", OURS)
def test_command_is_a_cli_subcommand(service: str) -> None:
    argv = _command(SERVICES[service])
    assert argv, f"{service}: no command (the image's default only prints --help)"
    command = typer.main.get_command(cli.app)
    path: list[str] = []
    while hasattr(command, "commands"):  # a group: the next word names a subcommand
        assert argv, f"{service}: {' '.join(path) or 'eshram-locator'} needs a subcommand"
        word, argv = argv[0], argv[1:]
        sub = command.commands.get(word)
        assert sub is not None, (
            f"{service}: {' '.join([*path, word])!r} is not a subcommand "
            f"(have: {', '.join(sorted(command.commands))})"
        )
        path.append(word)
        command = sub
    # The rest must parse: unknown options or bad values raise a usage error here.
    with command.make_context(" ".join(path), list(argv)) as context:
        assert context.command is command
