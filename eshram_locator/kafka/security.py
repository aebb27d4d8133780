"""Make the broker match the access policy: SCRAM users and ACLs, idempotently.

``apply_security`` runs as the super user. Users: one SCRAM-SHA-512 credential per principal of
the policy; a credential is written only when it is missing or its password no longer
authenticates (so a re-run changes nothing, and a changed secret file rotates that one user);
users that the policy no longer names are deleted, except the super users. ACLs: the policy's
rules are created where missing and every other ACL on the cluster is deleted (one ACL file,
and one topic prefix, per cluster). ``verify_credentials`` is the start-up check of every
process in the secure profile: a wrong password stops it with ``KafkaAuthenticationError``
instead of librdkafka retrying forever.

No password is logged or put in an exception: messages name the principal only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialDeletion,
    UserScramCredentialsDescription,
    UserScramCredentialUpsertion,
)
from pydantic import SecretStr

from eshram_locator.acl_policy import AclRule
from eshram_locator.errors import (
    KafkaAuthenticationError,
    KafkaSecurityError,
    RetriableError,
)
from eshram_locator.kafka.clients import SCRAM_MECHANISM, KafkaCredentials, security_config

log = structlog.get_logger()

SCRAM_ITERATIONS = 8192
_ADMIN_TIMEOUT_S = 30.0
_AUTH_TIMEOUT_S = 20.0
_PROBE_THREADS = 8
# None matches any name, principal and host (the stubs type these as str only).
_ANY_ACL = AclBindingFilter(
    ResourceType.ANY,
    None,  # type: ignore[arg-type]
    ResourcePatternType.ANY,
    None,  # type: ignore[arg-type]
    None,  # type: ignore[arg-type]
    AclOperation.ANY,
    AclPermissionType.ANY,
)
_RESOURCES = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
_PATTERNS = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}
_OPERATIONS = {
    "read": AclOperation.READ,
    "write": AclOperation.WRITE,
    "create": AclOperation.CREATE,
}

# librdkafka logs each failed SASL handshake of a probe on stderr; a probe expects them.
_quiet = logging.getLogger("eshram_locator.kafka.auth_probe")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False

AclKey = tuple[ResourceType, str, ResourcePatternType, str, str, AclOperation, AclPermissionType]


@dataclass(frozen=True, slots=True)
class SecurityReport:
    users_created: tuple[str, ...]
    users_updated: tuple[str, ...]
    users_removed: tuple[str, ...]
    users_unchanged: int
    acls_created: int
    acls_removed: int
    acls_unchanged: int

    @property
    def changed(self) -> bool:
        return bool(
            self.users_created
            or self.users_updated
            or self.users_removed
            or self.acls_created
            or self.acls_removed
        )


def authenticates(bootstrap: str, credentials: KafkaCredentials) -> bool:
    """True if the broker accepts these credentials, False if it rejects them.

    ``RetriableError`` when the broker cannot be reached to decide."""
    failures: list[KafkaError] = []
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "client.id": "eshram-locator-auth-check",
            "error_cb": failures.append,
            "logger": _quiet,
            **security_config(credentials),
        }
    )
    deadline = time.monotonic() + _AUTH_TIMEOUT_S
    while True:
        try:
            admin.list_topics(timeout=0.5)
        except KafkaException:
            admin.poll(0)  # serves error_cb
        else:
            return True
        if any(failure.code() == KafkaError._AUTHENTICATION for failure in failures):
            return False
        if time.monotonic() > deadline:
            raise RetriableError(
                f"could not reach the broker at {bootstrap} to authenticate "
                f"{credentials.username!r} within {_AUTH_TIMEOUT_S:.0f} s"
            )


def verify_credentials(bootstrap: str, credentials: KafkaCredentials) -> None:
    """``KafkaAuthenticationError`` unless the broker accepts these credentials."""
    if not authenticates(bootstrap, credentials):
        raise KafkaAuthenticationError(
            f"the broker at {bootstrap} rejected the credentials of {credentials.username!r} "
            f"(SASL/{SCRAM_MECHANISM}): wrong password, or no such user "
            "(run `eshram-locator security apply`)"
        )


def apply_security(
    admin: AdminClient,
    bootstrap: str,
    rules: Iterable[AclRule],
    passwords: Mapping[str, SecretStr],
    super_users: Iterable[str],
    ca_file: Path | None = None,
) -> SecurityReport:
    """Users and ACLs as ``passwords`` (one per principal) and ``rules`` say; idempotent.

    ``ca_file``: the CA of a TLS broker, for the password probes."""
    created, updated, removed, unchanged = _apply_users(
        admin, bootstrap, passwords, frozenset(super_users), ca_file
    )
    acls_created, acls_removed, acls_unchanged = _apply_acls(admin, rules)
    report = SecurityReport(
        users_created=created,
        users_updated=updated,
        users_removed=removed,
        users_unchanged=unchanged,
        acls_created=acls_created,
        acls_removed=acls_removed,
        acls_unchanged=acls_unchanged,
    )
    log.info(
        "security.applied",
        users_created=len(created),
        users_updated=len(updated),
        users_removed=len(removed),
        users_unchanged=unchanged,
        acls_created=acls_created,
        acls_removed=acls_removed,
        acls_unchanged=acls_unchanged,
    )
    return report


# --- users ------------------------------------------------------------------------------------


def _apply_users(
    admin: AdminClient,
    bootstrap: str,
    passwords: Mapping[str, SecretStr],
    super_users: frozenset[str],
    ca_file: Path | None,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], int]:
    existing = _scram_users(admin)
    missing = sorted(user for user in passwords if SCRAM_MECHANISM not in existing.get(user, ()))
    present = sorted(user for user in passwords if user not in missing)

    def still_valid(user: str) -> bool:
        credentials = KafkaCredentials(user, passwords[user], ca_file)
        return authenticates(bootstrap, credentials)

    with ThreadPoolExecutor(_PROBE_THREADS) as pool:
        valid = dict(zip(present, pool.map(still_valid, present), strict=True))
    stale = sorted(user for user, ok in valid.items() if not ok)
    alterations: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(
            user,
            ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
            passwords[user].get_secret_value().encode(),
        )
        for user in (*missing, *stale)
    ]
    gone = sorted(user for user in existing if user not in passwords and user not in super_users)
    alterations += [
        UserScramCredentialDeletion(user, ScramMechanism[mechanism.replace("-", "_")])
        for user in gone
        for mechanism in existing[user]
    ]
    if alterations:
        futures = admin.alter_user_scram_credentials(alterations, request_timeout=_ADMIN_TIMEOUT_S)
        failures = []
        for user, future in futures.items():
            try:
                future.result()
            except KafkaException as error:
                failures.append(f"{user}: {_reason(error)}")
        if failures:
            raise KafkaSecurityError("could not change SCRAM users: " + "; ".join(failures))
        _await_users(admin, present=[*missing, *stale], absent=gone)
    return tuple(missing), tuple(stale), tuple(gone), len(present) - len(stale)


def _await_users(admin: AdminClient, present: Iterable[str], absent: Iterable[str]) -> None:
    """Until the broker describes the users as just altered. KRaft applies an alteration once
    its metadata record is committed; a describe right after can still show the old state,
    and the next ``apply`` would then redo it (or a client would fail to authenticate)."""
    wanted, unwanted = set(present), set(absent)
    deadline = time.monotonic() + _ADMIN_TIMEOUT_S
    while True:
        users = _scram_users(admin)
        pending = {u for u in wanted if SCRAM_MECHANISM not in users.get(u, ())}
        pending |= unwanted & set(users)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise KafkaSecurityError(
                f"SCRAM users not yet visible after {_ADMIN_TIMEOUT_S:.0f} s: "
                + ", ".join(sorted(pending))
            )
        time.sleep(0.2)


def _scram_users(admin: AdminClient) -> dict[str, tuple[str, ...]]:
    """User -> its SCRAM mechanisms ("SCRAM-SHA-512", ...)."""
    # Without a user list the client describes every user, in one future of a dict (the stubs
    # know only the per-user form, and call the list of credentials scram_credential_info).
    future = cast(
        "Future[dict[str, UserScramCredentialsDescription]]",
        admin.describe_user_scram_credentials(  # type: ignore[call-arg]
            request_timeout=_ADMIN_TIMEOUT_S
        ),
    )
    try:
        described = future.result()
    except KafkaException as error:
        raise KafkaSecurityError(f"could not describe SCRAM users: {_reason(error)}") from error
    users: dict[str, tuple[str, ...]] = {}
    for user, description in described.items():
        infos: list[ScramCredentialInfo] = description.scram_credential_infos  # type: ignore[attr-defined]
        users[user] = tuple(info.mechanism.name.replace("_", "-") for info in infos)
    return users


# --- ACLs -------------------------------------------------------------------------------------


def _binding(rule: AclRule) -> AclBinding:
    return AclBinding(
        _RESOURCES[rule.resource],
        rule.name,
        _PATTERNS[rule.pattern],
        f"User:{rule.principal}",
        "*",
        _OPERATIONS[rule.operation],
        AclPermissionType.ALLOW,
    )


def _key(binding: AclBinding) -> AclKey:
    return (
        binding.restype,
        binding.name,
        binding.resource_pattern_type,
        binding.principal,
        binding.host,
        binding.operation,
        binding.permission_type,
    )


def _apply_acls(admin: AdminClient, rules: Iterable[AclRule]) -> tuple[int, int, int]:
    wanted = {_key(binding): binding for binding in map(_binding, rules)}
    try:
        present = {
            _key(binding): binding
            for binding in admin.describe_acls(_ANY_ACL, request_timeout=_ADMIN_TIMEOUT_S).result()
        }
    except KafkaException as error:
        raise KafkaSecurityError(f"could not describe ACLs: {_reason(error)}") from error
    to_create = [binding for key, binding in wanted.items() if key not in present]
    to_delete = [binding for key, binding in present.items() if key not in wanted]
    if to_create:
        created = admin.create_acls(to_create, request_timeout=_ADMIN_TIMEOUT_S)
        _raise_failures(created.items(), "create")
    if to_delete:
        filters = [
            AclBindingFilter(
                binding.restype,
                binding.name,
                binding.resource_pattern_type,
                binding.principal,
                binding.host,
                binding.operation,
                binding.permission_type,
            )
            for binding in to_delete
        ]
        deleted = admin.delete_acls(filters, request_timeout=_ADMIN_TIMEOUT_S)
        _raise_failures(deleted.items(), "delete")
    return len(to_create), len(to_delete), len(wanted) - len(to_create)


def _raise_failures(futures: Iterable[tuple[AclBinding, Future[Any]]], verb: str) -> None:
    failures = []
    for binding, future in futures:
        try:
            future.result()
        except KafkaException as error:
            failures.append(f"{binding.principal} {binding.name}: {_reason(error)}")
    if failures:
        raise KafkaSecurityError(f"could not {verb} ACLs: " + "; ".join(failures[:5]))


def _reason(error: KafkaException) -> str:
    inner = error.args[0] if error.args else None
    return inner.str() if isinstance(inner, KafkaError) else str(error)
