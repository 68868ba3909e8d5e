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
        "_ack",
        "_acked",
        "_codec",
        "_headers",
        "_nack",
        "_nacked",
        "_raw",
        "_state",
        "_timestamp",
        "_value",
        "attempt",
        "offset",
    )

    offset: int
    attempt: int
    # Topic, partition, key and raw value are read from `_raw`, a confluent-kafka record: the
    # fetched one, or one made from the arguments when a Message is built by hand. The runtime
    # sets as few slots as it can (each is a store per record on the hot path, and fewer slots
    # make freeing cheaper): headers and timestamp are cached on first access, the manual-ack
    # fields are set only for manual acks.
    _raw: confluent_kafka.Message
    _headers: list[tuple[str, bytes | None]]
    _timestamp: datetime | None
    _nacked: tuple[BaseException, int] | None
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
        self._raw = _Record(
            topic=topic, partition=partition, offset=offset, key=key, value=raw_value
        )
        self.offset = offset
        self.attempt = attempt
        self._codec = codec or CODECS["json"]
        self._headers = list(headers or ())
        self._timestamp = timestamp
        # Given a raw value and no value, the value is decoded from it, as at run time.
        self._value = _UNSET if value is None and raw_value is not None else value
        self._ack: Callable[[], None] | None = None
        self._acked = False
        self._state: Any = None  # the runtime's PartitionState

    @classmethod
    def _from_run(
        cls, records: list[confluent_kafka.Message], offsets: list[int], codec: Codec, state: Any
    ) -> list[Message[Any]]:
        """Messages for a run of records of one partition (the poll thread read their offsets
        already), without a call per record: no copying, nothing decoded yet."""
        new = cls.__new__
        messages: list[Message[Any]] = []
        append = messages.append
        for raw, offset in zip(records, offsets, strict=True):
            msg: Message[Any] = new(cls)
            msg._raw = raw
            msg.offset = offset
            msg.attempt = 1
            msg._codec = codec
            msg._value = _UNSET
            msg._state = state
            append(msg)
        return messages

    @property
    def topic(self) -> str:
        return self._raw.topic()  # type: ignore[return-value]

    @property
    def partition(self) -> int:
        return self._raw.partition()  # type: ignore[return-value]

    @property
    def key(self) -> bytes | None:
        return self._raw.key()

    @property
    def raw_value(self) -> bytes | None:
        return self._raw.value()

    @property
    def headers(self) -> list[tuple[str, bytes | None]]:
        try:
            return self._headers
        except AttributeError:  # built by the runtime, first access
            # A fetched record's headers are a list of (str, bytes | None).
            self._headers = headers = self._raw.headers() or []  # type: ignore[assignment]
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
            kind, millis = self._raw.timestamp()
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
        data = self._raw.value()
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
        report = getattr(self, "_ack", None)
        if self._claim() and report is not None:
            report()

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
        error = error if error is not None else Nacked("the message was nacked")
        report = getattr(self, "_nack", None)
        if report is not None:
            if not self.acked:
                report(error)
            return
        if self._state is not None:
            raise ConfigError(
                "msg.nack() needs ack='manual' on the handler; with ack='auto', raise an "
                "exception to fail the message"
            )
        self._nacked = (error, 0)  # built by hand (a unit test): `nacked` says so

    @property
    def nacked(self) -> BaseException | None:
        """The error of a nack not taken up by the runtime yet (or of a hand-built message)."""
        held = getattr(self, "_nacked", None)
        return held[0] if held is not None else None

    def _on_ack(self, report: Callable[[], None]) -> None:
        """The runtime's: how ack() reports this message finished."""
        self._ack = report

    def _on_nack(self, report: Callable[[BaseException], None]) -> None:
        """The runtime's: how nack() fails this message."""
        self._nack = report

    def _hold_nack(self, error: BaseException, failures: int) -> None:
        """The runtime's: a nack after the handler returned, with the failures so far, for
        the failure path to take up when the message runs again."""
        self._nacked = (error, failures)

    def _take_nack(self) -> tuple[BaseException, int] | None:
        held: tuple[BaseException, int] | None = getattr(self, "_nacked", None)
        self._nacked = None
        return held

    def _claim(self) -> bool:
        """Take the right to report the message; False when it was taken already."""
        with _CLAIM:
            if getattr(self, "_acked", False):
                return False
            self._acked = True
            return True

    def __repr__(self) -> str:
        return f"<Message {self.topic}[{self.partition}]@{self.offset} attempt={self.attempt}>"
