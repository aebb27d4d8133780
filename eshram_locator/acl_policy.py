"""The Kafka access policy: who may read and write which topic, from one declarative TOML file.

Pure: ``parse_policy`` turns the file's text into an ``AclPolicy`` or raises ``AclFileError``
naming the entry at fault; ``AclPolicy.rules`` expands it, for one deployment's names, into the
exact set of ALLOW rules the broker must hold. ``eshram_locator.kafka.security`` applies them.

The file (``security/acls.toml``)::

    version = 1

    [principals.<user>]              # one SCRAM user
    about = "what runs as it"
    read = ["<topic>", ...]          # Read (and so Describe) on topics
    write = ["<topic>", ...]         # Write (and so Describe) on topics
    create = ["<topic>", ...]        # Create on topics (a process that creates its own topics)
    groups = ["<group>", ...]        # Read on consumer groups (join, commit offsets)

    [templates.<key>]                # one principal per state/UT of eshram_locator.geography
    for_each = "state"
    name = "state-{state}"           # {state}: the two-digit LGD code
    ...                              # the same four lists, where {state} may appear too

A name ending in ``*`` is a prefix (a PREFIXED ACL); any other name is LITERAL. Topic names are
the contract's, *relative to* ``LOCATOR_TOPIC_PREFIX``: the prefix is put in front of every one
of them, so the policy follows a prefixed deployment. A literal topic must be a topic of the
contract and a prefix must lead to at least one (a typo fails, it does not grant nothing), except
names under ``{streams_app_id}``, the streams worker's own changelog and internal topics. Group
names are written in full, with placeholders: ``{prefix}`` (the topic prefix),
``{consumer_group}`` (``LOCATOR_CONSUMER_GROUP``), ``{streams_app_id}``
(``LOCATOR_STREAMS_APP_ID``) and ``{state}``. Nothing is denied explicitly: the broker's
authorizer denies whatever no rule allows.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from eshram_locator import topics
from eshram_locator.errors import AclFileError

FORMAT_VERSION = 1
Operation = Literal["read", "write", "create"]
ResourceKind = Literal["topic", "group"]
PatternKind = Literal["literal", "prefixed"]

_TOPIC_LISTS: tuple[tuple[str, Operation], ...] = (
    ("read", "read"),
    ("write", "write"),
    ("create", "create"),
)
_LIST_KEYS = ("read", "write", "create", "groups")
_PRINCIPAL_KEYS = frozenset({"about", *_LIST_KEYS})
_TEMPLATE_KEYS = frozenset({"for_each", "name", *_PRINCIPAL_KEYS})
_TOPIC_FIELDS = frozenset({"state", "streams_app_id"})
_GROUP_FIELDS = frozenset({"state", "prefix", "consumer_group", "streams_app_id"})
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_SAMPLE_STATE = "09"  # stands in for {state} when a template is checked against the contract
_CONTRACT_TOPICS = frozenset(
    {
        topics.COLLECTIONS,
        topics.REGISTRY,
        topics.LOCATION_CHANGES,
        topics.ADDRESS_UPDATE_REQUESTS,
        topics.MIGRATION_FLOWS,
        topics.SCHEMAS,
        *topics.STATE_TOPICS,
        *(topics.dlq(name) for name in (*topics.INPUT_TOPICS, topics.LOCATION_CHANGES)),
    }
)


@dataclass(frozen=True, slots=True, order=True)
class AclRule:
    """One ALLOW rule: ``principal`` (a SCRAM user name) may ``operation`` the resource."""

    principal: str
    resource: ResourceKind
    pattern: PatternKind
    name: str
    operation: Operation


@dataclass(frozen=True, slots=True)
class Naming:
    """The names of one deployment that the policy's placeholders stand for."""

    topic_prefix: str
    consumer_group: str
    streams_app_id: str
    states: tuple[str, ...]  # two-digit LGD codes, the {state} of every template


@dataclass(frozen=True, slots=True)
class PrincipalSpec:
    entry: str  # where it is in the file: "principals.locator", "templates.state"
    name: str  # "{state}" in it for a template
    per_state: bool
    about: str
    read: tuple[str, ...]
    write: tuple[str, ...]
    create: tuple[str, ...]
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AclPolicy:
    source: str
    principals: tuple[PrincipalSpec, ...]

    def principal_names(self, naming: Naming) -> tuple[str, ...]:
        """Every SCRAM user the policy defines, templates expanded, in file order."""
        return tuple(name for _, name, _ in self._expanded(naming))

    def rules(self, naming: Naming) -> frozenset[AclRule]:
        """The exact ALLOW rules of this deployment."""
        rules: set[AclRule] = set()
        for spec, principal, state in self._expanded(naming):
            values = {
                "state": state,
                "prefix": naming.topic_prefix,
                "consumer_group": naming.consumer_group,
                "streams_app_id": naming.streams_app_id,
            }
            for key, operation in _TOPIC_LISTS:
                for entry in getattr(spec, key):
                    name, pattern = _split_pattern(entry)
                    topic = naming.topic_prefix + name.format_map(values)
                    rules.add(AclRule(principal, "topic", pattern, topic, operation))
            for entry in spec.groups:
                name, pattern = _split_pattern(entry)
                rules.add(AclRule(principal, "group", pattern, name.format_map(values), "read"))
        return frozenset(rules)

    def check_super_user(self, super_user: str, naming: Naming) -> None:
        """The super user needs no ACL; a rule for it would hide what it really may do."""
        if super_user in self.principal_names(naming):
            raise AclFileError(
                f"{self.source}: principal {super_user!r} is the broker's super user "
                "(LOCATOR_KAFKA_ADMIN_USERNAME); it may do anything and must not be in the file"
            )

    def _expanded(self, naming: Naming) -> Iterator[tuple[PrincipalSpec, str, str]]:
        seen: dict[str, str] = {}
        for spec in self.principals:
            for state in naming.states if spec.per_state else ("",):
                name = spec.name.format_map({"state": state}) if spec.per_state else spec.name
                if name in seen:
                    raise AclFileError(
                        f"{self.source}: {spec.entry}: principal {name!r} is already defined "
                        f"by {seen[name]}"
                    )
                seen[name] = spec.entry
                yield spec, name, state


def parse_policy(text: str, source: str) -> AclPolicy:
    """Parse and check the ACL file; ``AclFileError`` names the file and the entry at fault."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise AclFileError(f"{source}: not valid TOML: {error}") from error
    unknown = sorted(set(document) - {"version", "principals", "templates"})
    if unknown:
        raise AclFileError(f"{source}: unknown top-level key(s): {', '.join(unknown)}")
    if document.get("version") != FORMAT_VERSION:
        raise AclFileError(f"{source}: version: expected {FORMAT_VERSION}")
    principals = _table(document.get("principals", {}), "principals", source)
    templates = _table(document.get("templates", {}), "templates", source)
    specs = [
        _principal(f"principals.{name}", name, body, source, per_state=False)
        for name, body in principals.items()
    ]
    specs += [_template(f"templates.{key}", body, source) for key, body in templates.items()]
    if not specs:
        raise AclFileError(f"{source}: defines no principal")
    return AclPolicy(source, tuple(specs))


def _table(value: Any, entry: str, source: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise AclFileError(f"{source}: {entry}: expected a table")
    return value


def _template(entry: str, body: Any, source: str) -> PrincipalSpec:
    body = _table(body, entry, source)
    if body.get("for_each") != "state":
        raise AclFileError(f'{source}: {entry}.for_each: expected "state" (the only template kind)')
    name = body.get("name")
    if not isinstance(name, str) or "{state}" not in name:
        raise AclFileError(f"{source}: {entry}.name: expected a name with {{state}} in it")
    rest = {key: value for key, value in body.items() if key not in ("for_each", "name")}
    return _principal(entry, name, rest, source, per_state=True)


def _principal(entry: str, name: str, body: Any, source: str, *, per_state: bool) -> PrincipalSpec:
    body = _table(body, entry, source)
    allowed = _TEMPLATE_KEYS if per_state else _PRINCIPAL_KEYS
    unknown = sorted(set(body) - allowed - {"for_each", "name"})
    if unknown:
        raise AclFileError(
            f"{source}: {entry}: unknown key(s) {', '.join(unknown)} "
            f"(expected {', '.join(sorted(_PRINCIPAL_KEYS))})"
        )
    sample = name.replace("{state}", _SAMPLE_STATE) if per_state else name
    if not _NAME.match(sample):
        raise AclFileError(
            f"{source}: {entry}: principal name {name!r}: only letters, digits, '.', '_', '-'"
        )
    about = body.get("about", "")
    if not isinstance(about, str):
        raise AclFileError(f"{source}: {entry}.about: expected a string")
    lists = {key: _names(body.get(key, []), f"{entry}.{key}", source) for key in _LIST_KEYS}
    if not any(lists.values()):
        raise AclFileError(
            f"{source}: {entry}: grants nothing (give read, write, create or groups)"
        )
    fields_allowed_topic = _TOPIC_FIELDS if per_state else _TOPIC_FIELDS - {"state"}
    fields_allowed_group = _GROUP_FIELDS if per_state else _GROUP_FIELDS - {"state"}
    for key in ("read", "write", "create"):
        for index, value in enumerate(lists[key]):
            _check_topic(value, f"{entry}.{key}[{index}]", source, fields_allowed_topic)
    for index, value in enumerate(lists["groups"]):
        _check_group(value, f"{entry}.groups[{index}]", source, fields_allowed_group)
    return PrincipalSpec(
        entry=entry,
        name=name,
        per_state=per_state,
        about=about,
        read=lists["read"],
        write=lists["write"],
        create=lists["create"],
        groups=lists["groups"],
    )


def _names(value: Any, entry: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AclFileError(f"{source}: {entry}: expected a list of strings")
    duplicates = sorted({item for item in value if value.count(item) > 1})
    if duplicates:
        raise AclFileError(f"{source}: {entry}: listed twice: {', '.join(duplicates)}")
    return tuple(value)


def _fields(value: str, entry: str, source: str, allowed: Iterable[str]) -> set[str]:
    try:
        found = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
    except ValueError as error:
        raise AclFileError(f"{source}: {entry}: {value!r}: {error}") from error
    unknown = sorted(found - set(allowed))
    if unknown:
        named = ", ".join("{" + field + "}" for field in unknown)
        allowed_named = ", ".join("{" + field + "}" for field in sorted(allowed))
        raise AclFileError(
            f"{source}: {entry}: {value!r}: placeholder(s) {named} not allowed here "
            f"(allowed: {allowed_named})"
        )
    return found


def _sample(value: str, fields: Iterable[str]) -> str:
    return value.format_map({field: _SAMPLE_STATE if field == "state" else "x" for field in fields})


def _check_name_shape(value: str, sample: str, entry: str, source: str) -> None:
    body = sample[:-1] if sample.endswith("*") else sample
    if not body or not _NAME.match(body):
        raise AclFileError(
            f"{source}: {entry}: {value!r}: a name of letters, digits, '.', '_', '-', "
            "optionally ending in '*' (a prefix)"
        )


def _check_topic(value: str, entry: str, source: str, allowed: Iterable[str]) -> None:
    if "{prefix}" in value:
        raise AclFileError(
            f"{source}: {entry}: {value!r}: topic names are relative to LOCATOR_TOPIC_PREFIX, "
            "which is put in front of them; drop {prefix}"
        )
    fields = _fields(value, entry, source, allowed)
    sample = _sample(value, fields)
    _check_name_shape(value, sample, entry, source)
    if "streams_app_id" in fields:
        if not value.startswith("{streams_app_id}"):
            raise AclFileError(
                f"{source}: {entry}: {value!r}: the streams worker's own topics start with "
                "{streams_app_id}"
            )
        return
    name, pattern = _split_pattern(sample)
    known = (
        name in _CONTRACT_TOPICS
        if pattern == "literal"
        else any(topic.startswith(name) for topic in _CONTRACT_TOPICS)
    )
    if not known:
        what = "is not a topic" if pattern == "literal" else "is not the prefix of any topic"
        raise AclFileError(f"{source}: {entry}: {value!r} {what} of the contract")


def _check_group(value: str, entry: str, source: str, allowed: Iterable[str]) -> None:
    fields = _fields(value, entry, source, allowed)
    _check_name_shape(value, _sample(value, fields), entry, source)


def _split_pattern(value: str) -> tuple[str, PatternKind]:
    return (value[:-1], "prefixed") if value.endswith("*") else (value, "literal")


def readers_of(rules: Iterable[AclRule], topic: str) -> set[str]:
    """The principals some rule lets read ``topic`` (literal or through a prefix)."""
    return {
        rule.principal
        for rule in rules
        if rule.resource == "topic"
        and rule.operation == "read"
        and (topic == rule.name if rule.pattern == "literal" else topic.startswith(rule.name))
    }


def writers_of(rules: Iterable[AclRule], topic: str) -> set[str]:
    """The principals some rule lets write ``topic``."""
    return {
        rule.principal
        for rule in rules
        if rule.resource == "topic"
        and rule.operation == "write"
        and (topic == rule.name if rule.pattern == "literal" else topic.startswith(rule.name))
    }


def state_codes(codes: Sequence[int]) -> tuple[str, ...]:
    """LGD codes as the two-digit strings that {state} stands for."""
    return tuple(f"{code:02d}" for code in codes)
