"""Credentials of the secure profile: where passwords come from, and that they stay hidden."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from eshram_locator import bootstrap
from eshram_locator.errors import ConfigError
from eshram_locator.kafka import clients


def scram(tmp_path: Path, **overrides: object) -> bootstrap.Settings:
    return bootstrap.load_settings(
        kafka_security="scram",
        kafka_secrets_dir=tmp_path / "secrets",
        kafka_bootstrap="broker:9093",
        **overrides,
    )


def test_plaintext_has_no_credentials_and_no_security_settings() -> None:
    settings = bootstrap.load_settings(kafka_security="plaintext")
    assert bootstrap.client_credentials(settings) is None
    assert bootstrap.admin_credentials(settings) is None
    assert clients.security_config(None) == {}


def test_a_process_needs_a_user_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LOCATOR_KAFKA_USERNAME: required"):
        bootstrap.client_credentials(scram(tmp_path))


def test_the_password_comes_from_the_environment_first_then_the_secrets_dir(
    tmp_path: Path,
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "locator").write_text("from-the-file\n")
    from_file = bootstrap.client_credentials(scram(tmp_path, kafka_username="locator"))
    assert from_file is not None
    assert from_file.password.get_secret_value() == "from-the-file"
    from_env = bootstrap.client_credentials(
        scram(tmp_path, kafka_username="locator", kafka_password=SecretStr("from-env"))
    )
    assert from_env is not None
    assert from_env.password.get_secret_value() == "from-env"


def test_a_missing_secret_names_the_file_and_never_a_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no secret file .*secrets/streams"):
        bootstrap.client_credentials(scram(tmp_path, kafka_username="streams"))
    with pytest.raises(ConfigError, match="LOCATOR_KAFKA_ADMIN_PASSWORD is unset"):
        bootstrap.admin_credentials(scram(tmp_path))  # external broker: never generated


def test_missing_principal_secrets_are_generated_private_on_request(tmp_path: Path) -> None:
    settings = scram(tmp_path)
    with pytest.raises(ConfigError, match=r"no secret file in .* for: pds, state-09"):
        bootstrap.principal_passwords(settings, ["pds", "state-09"])
    passwords = bootstrap.principal_passwords(settings, ["pds", "state-09"], generate_missing=True)
    assert set(passwords) == {"pds", "state-09"}
    path = tmp_path / "secrets" / "pds"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == passwords["pds"].get_secret_value()
    again = bootstrap.principal_passwords(settings, ["pds"])  # read back, not regenerated
    assert again["pds"].get_secret_value() == passwords["pds"].get_secret_value()


def test_client_settings_carry_scram_and_tls_only_with_a_ca_file(tmp_path: Path) -> None:
    credentials = clients.KafkaCredentials("locator", SecretStr("pw-123"))
    assert clients.security_config(credentials) == {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "locator",
        "sasl.password": "pw-123",
    }
    with_tls = clients.KafkaCredentials("locator", SecretStr("pw-123"), tmp_path / "ca.pem")
    config = clients.security_config(with_tls)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["ssl.ca.location"] == str(tmp_path / "ca.pem")


def test_passwords_do_not_show_in_reprs() -> None:
    credentials = clients.KafkaCredentials("locator", SecretStr("pw-123"))
    endpoints = bootstrap.Endpoints("broker:9093", "dbname=x", kafka_credentials=credentials)
    assert "pw-123" not in repr(credentials)
    assert "pw-123" not in repr(endpoints)
