"""The service's error tree.

Two branches matter to every process: ``PermanentRecordError`` (this record is bad; dead-letter
it and go on) and ``RetriableError`` (a dependency is unavailable; wait and try again, never
commit past the record).
"""

from __future__ import annotations


class LocatorError(Exception):
    """Root of every error this service raises on purpose."""


class ConfigError(LocatorError):
    """A setting is missing or invalid; the process must not start."""


class LocalServiceError(LocatorError):
    """A local Kafka or PostgreSQL server could not be provisioned, started or stopped."""


class PermanentRecordError(LocatorError):
    """A record that can never be processed. ``error_class`` names it in the DLQ header."""

    error_class = "invalid_record"


class DecodeError(PermanentRecordError):
    """Bytes that are not a record of a schema version we know."""

    error_class = "decode_error"


class WrongMagicError(DecodeError):
    error_class = "wrong_magic"


class UnknownSchemaError(DecodeError):
    error_class = "unknown_schema"


class TruncatedRecordError(DecodeError):
    error_class = "truncated_record"


class ValidationError(PermanentRecordError):
    """A well-formed record whose content breaks the contract."""

    error_class = "validation_error"


class RawAadhaarError(ValidationError):
    """A field other than ``uan`` carries an Aadhaar-like number."""

    error_class = "raw_aadhaar"


class StaleMemberRowError(LocatorError):
    """A member row was written by a row version that is no longer current: the batch rolls
    back (a defect in the caller, never retried as if transient)."""


class RetriableError(LocatorError):
    """A dependency (broker, database) is unavailable or a transaction must be retried."""


class AclFileError(ConfigError):
    """The ACL file is unreadable or breaks its schema; the message names the entry."""


class KafkaAuthenticationError(LocatorError):
    """The broker rejected a principal's SASL credentials (wrong password or unknown user).

    The message names the principal and the mechanism, never the password."""


class KafkaSecurityError(LocatorError):
    """The broker refused or failed to change SCRAM credentials or ACLs."""
