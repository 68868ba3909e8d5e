"""Message: one Kafka record as a handler sees it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE
from confluent_kafka import Message as _Record
from pydantic import ValidationError

from kafkaworker.errors import (
    ConfigError,
    DeserializationError,
    Nacked,
    SchemaRegistryUnavailable,
)
from kafkaworker.serialization import CODECS, Codec, Headers

if TYPE_CHECKING:
    import confluent_kafka

T = TypeVar("T")
_UNSET: Any = object()
_JSON = CODECS["json"]
_json_loads = orjson.loads
# Manual acks: a message is reported once, whoever claims it first (the handler's thread,
# another thread calling ack(), or the runtime giving it up). Rare enough for one lock.
_CLAIM = threading.Lock()


class Message(Generic[T]):
    """A record: where it came from, its key, its decoded value, headers and delivery attempt.

    Built by the runtime straight from the confluent-kafka record; key, headers, timestamp and
    the decoded value are read from it only when a handler asks, so handlers that look at a few
    fields do not pay for the rest. Build one yourself to unit-test a handler:
    `Message("orders", value={"id": 1})`.
    """

    __slots__ = (
        "_acked",
        "_codec",
        "_headers",
        "_nacked",
        "_timestamp",
        "_value",
        "attempt",
        "offset",
        "record",
    )

    offset: int
    attempt: int
    # The confluent-kafka record the message was read from (one made from the arguments when
    # a Message is built by hand): topic, partition, key and raw value are read from it. The
    # runtime sets as few slots as it can (each is a store per record on the hot path, and
    # fewer slots make freeing cheaper): headers and timestamp are cached on first access,
    # the ack fields are set only when used.
    record: confluent_kafka.Message
    _headers: list[tuple[str, bytes | None]]
    _timestamp: datetime | None
    _acked: bool
    _nacked: BaseException
    _value: Any  # _UNSET until decoded

    def __init__(
        self,
        topic: str,
        value: T | None = None,
        *,
        partition: int = 0,
        offset: int = 0,
        key: bytes | None = None,
        raw_value: bytes | None = None,
        headers: Headers | None = None,
        timestamp: datetime | None = None,
        attempt: int = 1,
        codec: Codec | None = None,
    ) -> None:
        self.record = _Record(
            topic=topic, partition=partition, offset=offset, key=key, value=raw_value
        )
        self.offset = offset
        self.attempt = attempt
        self._codec = codec or CODECS["json"]
        self._headers = list(headers or ())
        self._timestamp = timestamp
        # Given a raw value and no value, the value is decoded from it, as at run time.
        self._value = _UNSET if value is None and raw_value is not None else value

    @property
    def topic(self) -> str:
        return self.record.topic()  # type: ignore[return-value]

    @property
    def partition(self) -> int:
        return self.record.partition()  # type: ignore[return-value]

    @property
    def key(self) -> bytes | None:
        return self.record.key()

    @property
    def raw_value(self) -> bytes | None:
        return self.record.value()

    @property
    def headers(self) -> list[tuple[str, bytes | None]]:
        try:
            return self._headers
        except AttributeError:  # built by the runtime, first access
            # A fetched record's headers are a list of (str, bytes | None).
            self._headers = headers = self.record.headers() or []  # type: ignore[assignment]
            return headers  # type: ignore[return-value]

    def header(self, name: str, default: bytes | None = None) -> bytes | None:
        """The value of the last header called `name` (Kafka allows repeats), or `default`."""
        for header_name, header_value in reversed(self.headers):
            if header_name == name:
                return header_value
        return default

    @property
    def timestamp(self) -> datetime | None:
        try:
            return self._timestamp
        except AttributeError:  # built by the runtime, first access
            kind, millis = self.record.timestamp()
            self._timestamp = stamp = (
                None
                if kind == TIMESTAMP_NOT_AVAILABLE
                else datetime.fromtimestamp(millis / 1000, tz=UTC)
            )
            return stamp

    @property
    def value(self) -> T:
        """The value decoded by the handler's codec (decoded once, on first access)."""
        value = self._value
        if value is not _UNSET:
            return value  # type: ignore[no-any-return]
        # The hot path of every handler that reads its value: no further Python calls for the
        # default codec, whose decode is orjson's.
        data = self.record.value()
        codec = self._codec
        try:
            if data is None:
                value = None
            elif codec is _JSON:
                value = _json_loads(data)
            else:
                # Built-in codecs never read headers: skip building the list for them.
                headers = self.headers if getattr(codec, "uses_headers", True) else ()
                value = codec.decode(data, headers)
        except (ValidationError, SchemaRegistryUnavailable):
            # A validation error names the failing fields and is fatal as it is; a registry
            # that did not answer is no fault of the record: retried with backoff, not fatal.
            raise
        except Exception as exc:
            # orjson's own words for it ("Input is a zero-length, empty document") are less clear.
            reason = "the value is empty" if not data and codec is _JSON else str(exc)
            raise DeserializationError(
                f"cannot decode the value of {self.topic}[{self.partition}]@{self.offset}"
                f" with the {codec.name} codec: {reason}"
            ) from exc
        self._value = value
        return value  # type: ignore[no-any-return]

    def ack(self) -> None:
        """Mark the message finished (handlers with ack="manual"). Safe from any thread, once.

        Until it is acknowledged, the partition's committed offset never moves past it.
        With ack="auto" the runtime acknowledges when the handler returns; calling ack() then
        does nothing.
        """
        self._acked = True  # a message built by hand (a unit test): `acked` says so

    @property
    def acked(self) -> bool:
        """Whether ack() was called (or the runtime reported the message otherwise)."""
        return getattr(self, "_acked", False)

    def nack(self, error: BaseException | None = None) -> None:
        """Fail the message explicitly (handlers with ack="manual"), from any thread: it takes
        the failure path as if the handler had raised `error` (retries with backoff, then
        retry topics, the DLQ, or a stall). Called after the handler returned, the message
        is retried outside its lane's order; its partition's commit still waits for it.
        """
        # A message built by hand (a unit test): `nacked` says so.
        self._nacked = error if error is not None else Nacked("the message was nacked")

    @property
    def nacked(self) -> BaseException | None:
        """The error of a nack not taken up by the runtime yet (or of a hand-built message)."""
        return getattr(self, "_nacked", None)

    def __repr__(self) -> str:
        return f"<Message {self.topic}[{self.partition}]@{self.offset} attempt={self.attempt}>"


L = TypeVar("L")


class DispatchedMessage(Message[Any], Generic[L]):
    """A message the runtime dispatched to a handler: what the poll side hands the execute
    side (runtime/handoff.py). Its `lease` is the runtime's hold on the message's partition
    for one assignment (the type `L` is the runtime's: this module knows nothing of it).
    Handlers see a Message; acks and nacks report to the runtime through the callbacks it
    binds (manual acks only).
    """

    __slots__ = ("_held", "_on_ack", "_on_nack", "lease", "unacked")

    lease: L
    _held: tuple[BaseException, int] | None
    # At least once, a def handler's outputs produced and not acknowledged yet (their futures):
    # the executor finishes the message once they are (runtime/execute/core.py, `pending`).
    unacked: list[Any] | None

    @classmethod
    def run_of(
        cls, lease: L, records: list[confluent_kafka.Message], offsets: list[int], codec: Codec
    ) -> list[DispatchedMessage[L]]:
        """Messages for a run of records of one partition (the poll thread read their offsets
        already), without a call per record: no copying, nothing decoded yet."""
        new = cls.__new__
        messages: list[DispatchedMessage[L]] = []
        append = messages.append
        for record, offset in zip(records, offsets, strict=True):
            msg: DispatchedMessage[L] = new(cls)
            msg.record = record
            msg.offset = offset
            msg.attempt = 1
            msg._codec = codec
            msg._value = _UNSET
            msg.lease = lease
            append(msg)
        return messages

    def bind_acks(self, ack: Callable[[], None], nack: Callable[[BaseException], None]) -> None:
        """How ack() reports this message finished and nack() fails it (manual acks)."""
        self._on_ack = ack
        self._on_nack = nack

    def ack(self) -> None:
        report = getattr(self, "_on_ack", None)
        if self.claim() and report is not None:
            report()

    def nack(self, error: BaseException | None = None) -> None:
        report = getattr(self, "_on_nack", None)
        if report is None:
            raise ConfigError(
                "msg.nack() needs ack='manual' on the handler; with ack='auto', raise an "
                "exception to fail the message"
            )
        if not self.acked:
            report(error if error is not None else Nacked("the message was nacked"))

    @property
    def nacked(self) -> BaseException | None:
        held = getattr(self, "_held", None)
        return held[0] if held is not None else None

    def hold_nack(self, error: BaseException, failures: int) -> None:
        """A nack after the handler returned (or an output the broker refused after it had),
        with the failures so far, for the failure path to take up when the message runs
        again."""
        self._held = (error, failures)

    def take_nack(self) -> tuple[BaseException, int] | None:
        """The nack held for the failure path, once."""
        held = getattr(self, "_held", None)
        self._held = None
        return held

    def claim(self) -> bool:
        """Take the right to report the message; False when it was taken already (a manual
        ack is reported once, whoever claims it first: the handler's thread, another thread
        calling ack(), or the runtime giving it up)."""
        with _CLAIM:
            if getattr(self, "_acked", False):
                return False
            self._acked = True
            return True
