"""Settings: defaults, environment, TOML file, validation errors naming the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pydantic
import pytest
from typer.testing import CliRunner

from eshram_locator import bootstrap
from eshram_locator.cli import app
from eshram_locator.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no LOCATOR_* variable, whatever the shell running pytest has."""
    for name in list(os.environ):
        if name.upper().startswith("LOCATOR_"):
            monkeypatch.delenv(name)


def test_defaults_use_local_services() -> None:
    settings = bootstrap.load_settings()
    assert settings.kafka_port == 19092
    assert settings.postgres_port == 55432
    assert settings.collections_partitions == 12
    assert settings.rules.confirm_months == 2
    assert settings.uses_local_kafka
    assert settings.uses_local_postgres
    assert settings.bootstrap_servers == "127.0.0.1:19092"


def test_environment_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCATOR_KAFKA_PORT", "29092")
    monkeypatch.setenv("LOCATOR_KAFKA_BOOTSTRAP", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("LOCATOR_POSTGRES_DSN", "postgresql://app:pg-pw-417@db:5432/locator")
    monkeypatch.setenv("LOCATOR_KAFKA_PASSWORD", "kafka-pw-417")
    settings = bootstrap.load_settings()
    assert settings.kafka_port == 29092
    assert settings.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert not settings.uses_local_kafka
    assert not settings.uses_local_postgres
    assert "pw-417" not in repr(settings)  # neither password (a field may be named secrets_dir)


def test_toml_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "locator.toml"
    path.write_text("topic_partitions = 3\nbatch_size = 100\n[rules]\nconfirm_months = 4\n")
    monkeypatch.setenv("LOCATOR_SETTINGS_FILE", str(path))
    monkeypatch.setenv("LOCATOR_BATCH_SIZE", "200")
    settings = bootstrap.load_settings()
    assert settings.topic_partitions == 3
    assert settings.rules.confirm_months == 4
    assert settings.batch_size == 200


def test_unreadable_toml_file_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("topic_partitions = = 3\n")
    monkeypatch.setenv("LOCATOR_SETTINGS_FILE", str(path))
    with pytest.raises(ConfigError, match="LOCATOR_SETTINGS_FILE"):
        bootstrap.load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LOCATOR_KAFKA_PORT", "not-a-port"),
        ("LOCATOR_KAFKA_PORT", "80"),
        ("LOCATOR_KAFKA_BOOTSTRAP", "no-port-here"),
        ("LOCATOR_KAFKA_HEAP", "lots"),
        ("LOCATOR_LOG_LEVEL", "LOUD"),
        ("LOCATOR_POSTGRES_DATABASE", "Bad-Name"),
        ("LOCATOR_RULES__CONFIRM_MONTHS", "0"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        bootstrap.load_settings()


def test_unknown_locator_variable_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCATOR_KAFKA_PROT", "29092")
    with pytest.raises(ConfigError, match=r"LOCATOR_KAFKA_PROT.*LOCATOR_KAFKA_PORT"):
        bootstrap.load_settings()


def test_unknown_key_in_toml_file_is_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "locator.toml"
    path.write_text("kafka_prot = 1\n")
    monkeypatch.setenv("LOCATOR_SETTINGS_FILE", str(path))
    with pytest.raises(ConfigError, match="KAFKA_PROT"):
        bootstrap.load_settings()


def test_every_documented_variable_is_accepted() -> None:
    environ = {variable: "" for variable in bootstrap.known_variables()}
    bootstrap.check_environment(environ)  # no ConfigError


def test_nested_rule_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCATOR_RULES__CONFIRM_MONTHS", "3")
    settings = bootstrap.load_settings()
    assert settings.rules.confirm_months == 3
    assert settings.rules.max_gap_months == 3  # the others keep their defaults


def test_nested_rule_typo_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCATOR_RULES__CONFIRM_MONTH", "3")
    with pytest.raises(ConfigError, match="LOCATOR_RULES__CONFIRM_MONTH"):
        bootstrap.load_settings()


def test_settings_are_frozen() -> None:
    settings = bootstrap.load_settings()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.kafka_port = 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [("LOCATOR_KAFKA_PORT", "not-a-port"), ("LOCATOR_KAFKA_PROT", "29092")],
)
def test_cli_reports_a_config_error_in_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(app, ["services", "status"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("configuration error:")
    assert variable in result.stderr
    assert result.stderr.count("\n") == 1
