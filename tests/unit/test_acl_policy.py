"""The ACL file: the shipped policy says what issue 6 asks, and a bad file names its entry."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from eshram_locator import bootstrap, cli
from eshram_locator.acl_policy import AclRule, Naming, parse_policy, readers_of, writers_of
from eshram_locator.errors import AclFileError, ConfigError
from eshram_locator.geography import STATES, State
from eshram_locator.settings import REPO_ROOT
from eshram_locator.topics import TopicNames

SHIPPED = REPO_ROOT / "security" / "acls.toml"
PREFIX = "t-1."
NAMING = Naming(
    topic_prefix=PREFIX,
    consumer_group="eshram-locator",
    streams_app_id="eshram-streams",
    states=tuple(state.code for state in STATES),
)
NAMES = TopicNames(PREFIX)


@pytest.fixture(scope="module")
def rules() -> frozenset[AclRule]:
    return parse_policy(SHIPPED.read_text(), str(SHIPPED)).rules(NAMING)


def _of(rules: frozenset[AclRule], principal: str) -> set[tuple[str, str, str, str]]:
    return {
        (rule.resource, rule.pattern, rule.name, rule.operation)
        for rule in rules
        if rule.principal == principal
    }


def test_the_shipped_file_defines_the_services_pds_the_registry_and_every_state() -> None:
    policy = parse_policy(SHIPPED.read_text(), str(SHIPPED))
    names = policy.principal_names(NAMING)
    assert set(names) == {
        "pds",
        "eshram-registry",
        "locator",
        "streams",
        *(f"state-{state.code}" for state in STATES),
    }
    assert len(names) == 4 + 36


def test_nobody_but_streams_reads_the_central_topic(rules: frozenset[AclRule]) -> None:
    assert readers_of(rules, NAMES.location_changes) == {"streams"}
    assert writers_of(rules, NAMES.location_changes) == {"locator"}


def test_inputs_are_written_by_their_producers_only(rules: frozenset[AclRule]) -> None:
    assert writers_of(rules, NAMES.collections) == {"pds"}
    assert writers_of(rules, NAMES.registry) == {"eshram-registry"}
    assert _of(rules, "pds") == {("topic", "literal", NAMES.collections, "write")}
    assert _of(rules, "eshram-registry") == {("topic", "literal", NAMES.registry, "write")}


@pytest.mark.parametrize("state", STATES, ids=lambda state: state.code)
def test_a_state_reads_its_own_topic_and_the_schemas_in_its_own_groups(
    rules: frozenset[AclRule], state: State
) -> None:
    code = state.code
    assert _of(rules, f"state-{code}") == {
        ("topic", "literal", f"{PREFIX}eshram.location-changes.state.{code}", "read"),
        ("topic", "literal", NAMES.schemas, "read"),
        ("group", "prefixed", f"{PREFIX}state-{code}.", "read"),
    }
    assert readers_of(rules, NAMES.state(int(code))) == {f"state-{code}"}
    assert writers_of(rules, NAMES.state(int(code))) == {"streams"}


def test_the_locator_and_streams_have_what_their_processes_use(rules: frozenset[AclRule]) -> None:
    assert _of(rules, "locator") == {
        ("topic", "literal", NAMES.collections, "read"),
        ("topic", "literal", NAMES.registry, "read"),
        ("topic", "literal", NAMES.location_changes, "write"),
        ("topic", "literal", NAMES.address_update_requests, "write"),
        ("topic", "literal", NAMES.schemas, "write"),
        ("topic", "literal", NAMES.dlq(NAMES.collections), "write"),
        ("topic", "literal", NAMES.dlq(NAMES.registry), "write"),
        ("group", "literal", "eshram-locator", "read"),
    }
    streams = _of(rules, "streams")
    assert ("topic", "prefixed", f"{PREFIX}eshram.location-changes.state.", "write") in streams
    assert ("topic", "prefixed", f"{PREFIX}eshram-streams", "create") in streams
    assert ("group", "literal", f"{PREFIX}eshram-streams", "read") in streams
    assert not [rule for rule in streams if rule[3] == "read" and "state." in rule[2]]


def test_every_topic_rule_follows_the_prefix(rules: frozenset[AclRule]) -> None:
    assert all(rule.name.startswith(PREFIX) for rule in rules if rule.resource == "topic")


GOOD_PDS = '[principals.pds]\nwrite = ["pds.ration-collections.v1"]\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 1\n[principals.pds\n", "not valid TOML"),
        (GOOD_PDS, "version: expected 1"),
        ("version = 1\n", "defines no principal"),
        ("version = 1\nprincipal = {}\n", "unknown top-level key(s): principal"),
        (
            'version = 1\n[principals.pds]\nreed = ["pds.ration-collections.v1"]\n',
            "principals.pds: unknown key(s) reed",
        ),
        (
            'version = 1\n[principals.pds]\nwrite = ["pds.ration-collection.v1"]\n',
            "principals.pds.write[0]: 'pds.ration-collection.v1' is not a topic of the contract",
        ),
        (
            'version = 1\n[principals.x]\nread = ["pds.ration-collections.v1", "eshram.loc.*"]\n',
            "principals.x.read[1]: 'eshram.loc.*' is not the prefix of any topic",
        ),
        (
            'version = 1\n[principals.x]\ngroups = ["{group}"]\n',
            "principals.x.groups[0]: '{group}': placeholder(s) {group} not allowed here",
        ),
        (
            'version = 1\n[principals.x]\nread = ["eshram.location-changes.state.{state}"]\n',
            "principals.x.read[0]",
        ),
        (
            'version = 1\n[principals.x]\nread = ["{prefix}pds.ration-collections.v1"]\n',
            "drop {prefix}",
        ),
        (
            'version = 1\n[principals.x]\nwrite = "pds.ration-collections.v1"\n',
            "principals.x.write: expected a list of strings",
        ),
        ("version = 1\n[principals.x]\nabout = 'nothing'\n", "principals.x: grants nothing"),
        (
            'version = 1\n[principals."x y"]\nwrite = ["pds.ration-collections.v1"]\n',
            "principals.x y: principal name 'x y'",
        ),
        (
            'version = 1\n[principals.x]\nwrite = ["pds.*.v1"]\n',
            "principals.x.write[0]: 'pds.*.v1': a name of letters",
        ),
        (
            'version = 1\n[templates.state]\nfor_each = "district"\nname = "s-{state}"\n',
            "templates.state.for_each",
        ),
        (
            'version = 1\n[templates.state]\nfor_each = "state"\nname = "state"\n'
            'read = ["locator.schemas"]\n',
            "templates.state.name: expected a name with {state} in it",
        ),
    ],
)
def test_a_bad_file_stops_with_a_message_naming_the_entry(text: str, message: str) -> None:
    with pytest.raises(AclFileError, match=r"^acls\.toml: ") as raised:
        parse_policy(text, "acls.toml")
    assert message in str(raised.value)


def test_a_principal_defined_twice_is_named() -> None:
    text = (
        'version = 1\n[principals.state-09]\nread = ["locator.schemas"]\n'
        '[templates.state]\nfor_each = "state"\nname = "state-{state}"\n'
        'read = ["locator.schemas"]\n'
    )
    policy = parse_policy(text, "acls.toml")
    with pytest.raises(
        AclFileError, match=r"templates\.state: principal 'state-09' is already defined by "
    ):
        policy.rules(NAMING)


def test_the_super_user_must_not_be_in_the_file() -> None:
    policy = parse_policy('version = 1\n[principals.admin]\nread = ["locator.schemas"]\n', "f")
    with pytest.raises(AclFileError, match="'admin' is the broker's super user"):
        policy.check_super_user("admin", NAMING)


@pytest.fixture
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep structlog off CliRunner's stream, which is closed once the command returns."""
    monkeypatch.setattr(cli, "configure_logging", lambda *_: None)


@pytest.mark.usefixtures("quiet_cli")
def test_security_apply_rejects_a_bad_file_before_connecting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = tmp_path / "acls.toml"
    bad.write_text('version = 1\n[principals.pds]\nwrite = ["pds.rations.v1"]\n')
    monkeypatch.setenv("LOCATOR_KAFKA_SECURITY", "scram")
    monkeypatch.setenv("LOCATOR_KAFKA_ACL_FILE", str(bad))
    monkeypatch.setenv("LOCATOR_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached
    result = CliRunner().invoke(cli.app, ["security", "apply"])
    assert result.exit_code == 2
    assert "principals.pds.write[0]: 'pds.rations.v1' is not a topic" in result.output


@pytest.mark.usefixtures("quiet_cli")
def test_security_apply_needs_the_scram_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCATOR_KAFKA_SECURITY", "plaintext")
    result = CliRunner().invoke(cli.app, ["security", "apply"])
    assert result.exit_code == 2
    assert "LOCATOR_KAFKA_SECURITY=scram" in result.output


def test_an_unreadable_acl_file_names_the_setting(tmp_path: Path) -> None:
    settings = bootstrap.load_settings(kafka_acl_file=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="LOCATOR_KAFKA_ACL_FILE: cannot read"):
        bootstrap.acl_policy(settings)
