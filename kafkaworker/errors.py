"""Error types. Each carries the context a user needs and prints as one line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class KafkaWorkerError(Exception):
    """Base class: the message says what is wrong and what to do, in one line."""


class ConfigError(KafkaWorkerError, ValueError):
    """An invalid handler option or setting: names the key, the value and what is allowed."""


class AppImportError(KafkaWorkerError):
    """`MODULE:APP` could not be imported, or is not an App."""


class StartupError(KafkaWorkerError):
    """The worker cannot start: broker unreachable, topic missing, client config rejected."""


class DeserializationError(KafkaWorkerError):
    """A payload could not be decoded by the handler's codec. Fatal: retrying cannot help."""


class DeadLetter(KafkaWorkerError):  # noqa: N818 - a verb, raised by handlers: `raise DeadLetter(...)`
    """Raised by a handler to send the message straight to its dead-letter topic."""


class Skip(KafkaWorkerError):  # noqa: N818 - raised by handlers: `raise Skip("duplicate")`
    """Raised by a handler to finish a message without handling it (counted and logged)."""


class Nacked(KafkaWorkerError):  # noqa: N818 - what happened, as kw.error.type names it
    """The error of `msg.nack()` without one of its own: the handler failed the message."""


class BatchFailures(KafkaWorkerError):  # noqa: N818 - raised by batch handlers
    """Raised by a batch handler when only some messages failed: `failures` maps each failed
    Message to its error. The others are finished; only the failed ones are retried (and, past
    their retries, dead-lettered)."""

    def __init__(self, failures: Mapping[Any, BaseException]) -> None:
        super().__init__(f"{len(failures)} message(s) of the batch failed")
        self.failures = dict(failures)


class SchemaRegistryUnavailable(KafkaWorkerError):  # noqa: N818 - a state, as kw.error.type names it
    """The Schema Registry did not answer (refused, timed out, 5xx) while a record needed a
    schema not cached yet. Not fatal: the record is retried with backoff, unlike an unknown
    schema id or a malformed record, which no retry can fix."""


class DatabaseUnavailable(KafkaWorkerError):  # noqa: N818 - a state, as kw.error.type names it
    """An inbox's database did not answer or dropped the connection (the pool had no
    connection in time, the server went away, the commit failed). No fault of the message: it
    is retried in place with backoff whatever `retries` says, never dead-lettered nor skipped,
    as when the Schema Registry does not answer."""


class SchemaRefused(KafkaWorkerError):  # noqa: N818 - what happened to the schema
    """The Schema Registry refused to register a schema (an incompatible change under the
    subject's compatibility rule, or an invalid schema): names the subject and the rule."""
