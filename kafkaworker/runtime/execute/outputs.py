"""Outputs: what a handler's messages make the producer write, and waiting for the broker.

The handler's return value(s) go to its output topic with the input's key; a failed
message's retry-topic or DLQ record (FailureRecords: the original key and value byte for
byte, with the kw.* headers of kafkaworker.headers) goes where the policy decided. Either way
the input counts as finished only once every record is acknowledged (acks=all), so a crash in
between runs it again (at-least-once end to end). A worker thread waits blocking; an event
loop awaits.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from kafkaworker import headers
from kafkaworker.message import Message
from kafkaworker.producer import Producer, _encode, _QueueFullError
from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock
from kafkaworker.runtime.execute.event_loop import cancelling
from kafkaworker.runtime.failures.retrytopics import Stage
from kafkaworker.runtime.handoff import Dispatched, HeldRecord, HeldWrites
from kafkaworker.serialization import Codec

if TYPE_CHECKING:
    from kafkaworker.tracing.spans import SendSpans

TRACEBACK_LIMIT = 8 * 1024
MESSAGE_LIMIT = 4 * 1024

# The call machinery above a handler: the executors (threads, the event loop) and asyncio.
_FRAMEWORK = tuple(
    os.path.dirname(module.__file__) + os.sep
    for module in (headers, asyncio)
    if module.__file__ is not None
)
# While librdkafka's queue is full, an event loop tries again this often (as send_async does).
_QUEUE_FULL_WAIT = 0.005


def error_type(error: BaseException) -> str:
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


def user_headers(msg: Message[Any]) -> list[tuple[str, bytes | None]]:
    return [(name, value) for name, value in msg.headers if name not in headers.OWN]


def origin_headers(msg: Message[Any]) -> list[tuple[str, bytes]]:
    """Where the message first came from: its own coordinates, or those a retry carried."""
    carried = [(name, msg.header(name)) for name in headers.ORIGIN]
    if all(value is not None for _, value in carried):
        return carried  # type: ignore[return-value]
    stamp = msg.timestamp
    own = (
        msg.topic,
        str(msg.partition),
        str(msg.offset),
        str(int(stamp.timestamp() * 1000)) if stamp else "-1",
    )
    return [(name, value.encode()) for name, value in zip(headers.ORIGIN, own, strict=True)]


def _error_headers(error: BaseException) -> list[tuple[str, bytes]]:
    message = str(error).encode()
    if len(message) > MESSAGE_LIMIT:  # a huge message must not make the record unwritable
        message = message[: MESSAGE_LIMIT - 3] + b"..."
    return [
        (headers.ERROR_TYPE, error_type(error).encode()),
        (headers.ERROR_MESSAGE, message),
    ]


def format_traceback(error: BaseException) -> str:
    """The failed attempt's traceback as the user would want it in a DLQ header: the frames of
    kafkaworker's own call machinery above the handler are left out (a dozen lines of executor
    and failure-policy frames, the same in every record), for the error and each exception
    chained to it. A traceback with no frame outside kafkaworker (a payload that does not
    decode, say) is kept whole: its frames are where the error is."""
    described = traceback.TracebackException.from_exception(error)
    seen: set[int] = set()
    pending = [described]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        frames = list(current.stack)
        first_own = next((i for i, f in enumerate(frames) if not _framework(f.filename)), None)
        if first_own:
            current.stack = traceback.StackSummary.from_list(frames[first_own:])
        pending += [c for c in (current.__cause__, current.__context__) if c is not None]
    return "".join(described.format())


def _framework(filename: str) -> bool:
    return filename.startswith(_FRAMEWORK)


def failure_headers(
    msg: Message[Any], *, group: str, handler: str, error: BaseException
) -> list[tuple[str, bytes]]:
    formatted = format_traceback(error).encode()
    if len(formatted) > TRACEBACK_LIMIT:
        # The tail holds the innermost frames and the message: the part worth keeping.
        formatted = b"...\n" + formatted[-(TRACEBACK_LIMIT - 4) :]
    return [
        *origin_headers(msg),
        (headers.GROUP, group.encode()),
        (headers.HANDLER, handler.encode()),
        (headers.ATTEMPTS, str(msg.attempt).encode()),
        *_error_headers(error),
        (headers.ERROR_TRACEBACK, formatted),
        (headers.FAILED_AT, datetime.now(UTC).isoformat().encode()),
    ]


class FailedRecord(NamedTuple):
    """A record to write for a failed message: the original key and value, new headers."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


class FailureRecords:
    """Builds a handler's retry-topic and DLQ records; the executor writes them and waits for
    the broker's acknowledgement (acks=all) before the source offset may count as finished."""

    def __init__(
        self, dlq: str | None, *, group: str, handler: str, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.dlq = dlq
        self.group = group
        self.handler = handler
        self._clock = clock  # due times of retry records

    def dead_letter(self, msg: Message[Any], error: BaseException) -> FailedRecord:
        assert self.dlq is not None
        written = [
            *user_headers(msg),
            *failure_headers(msg, group=self.group, handler=self.handler, error=error),
        ]
        return FailedRecord(self.dlq, msg.key, msg.raw_value, written)

    def retry(self, msg: Message[Any], error: BaseException, stage: Stage) -> FailedRecord:
        """The record for a delayed retry topic, due `stage.delay` seconds from now."""
        # Rounded up to the millisecond: truncated, a stage could run up to 1 ms before its
        # delay had passed (a CI run measured a 2 s stage at 1.99990 s).
        due = math.ceil((self._clock.time() + stage.delay) * 1000)
        written = [
            *user_headers(msg),
            *origin_headers(msg),
            (headers.ATTEMPTS, str(msg.attempt).encode()),
            *_error_headers(error),
            (headers.RETRY_DUE, str(due).encode()),
        ]
        return FailedRecord(stage.topic, msg.key, msg.raw_value, written)


class Outputs:
    def __init__(
        self,
        producer: Producer,
        *,
        topic: str | None,
        codec: Codec | None,
        produce_timeout: float,
        write_timeout: float,
    ) -> None:
        self.producer = producer
        self.topic = topic  # the handler's output topic, if it has one
        self.codec = codec
        self.produce_timeout = produce_timeout
        self.write_timeout = write_timeout  # dead_letter.timeout

    def emit(
        self, msg: Message[Any], result: Any, sends: list[Any] | None = None
    ) -> BaseException | None:
        """Produce `result` (each item of a list, tuple or generator; None: nothing) and wait
        for the acknowledgements; the error, if one failed (encoding, delivery)."""
        try:
            for future in self.produce(msg, result):
                future.result(self.produce_timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the failure policy
            return exc
        return None

    def produce(self, msg: Message[Any], result: Any) -> list[Future[Any]]:
        """Produce `result` without waiting for the broker: the futures of its records.
        Encoding errors, and a librdkafka queue full for produce_timeout, raise."""
        return [self._send(msg, item, self.produce_timeout) for item in _items(result)]

    async def emit_async(
        self, msg: Message[Any], result: Any, sends: list[Any] | None = None
    ) -> BaseException | None:
        """emit() on an event loop. A full librdkafka queue is waited out by awaiting, not in
        send(), whose wait would block the loop and with it every async handler; the records
        are still queued one after another, in order."""
        deadline = time.monotonic() + self.produce_timeout  # for room in the queue
        try:
            futures: list[asyncio.Future[Any]] = []
            for item in _items(result):
                while True:
                    try:
                        future = self._send(msg, item, 0)
                        break
                    except _QueueFullError:
                        if time.monotonic() > deadline:
                            raise _QueueFullError(
                                f"librdkafka's queue stayed full for {self.produce_timeout:g}s "
                                f"sending to {self.topic!r}"
                            ) from None
                        await asyncio.sleep(_QUEUE_FULL_WAIT)
                futures.append(asyncio.wrap_future(future))
            if futures:
                await asyncio.wait_for(asyncio.gather(*futures), self.produce_timeout)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and cancelling():
                raise
            return exc
        return None

    def write(self, record: FailedRecord, msg: Dispatched | None = None) -> BaseException | None:
        """Write a failed message's record and wait for the acknowledgement; the error."""
        topic, key, value, headers = record
        try:
            self.producer.send_sync(
                topic, value, key=key, headers=headers, timeout=self.write_timeout
            )
        except Exception as exc:  # noqa: BLE001 - every failure is retried the same way
            return exc
        return None

    async def write_async(
        self, record: FailedRecord, msg: Dispatched | None = None
    ) -> BaseException | None:
        topic, key, value, headers = record
        try:
            await self.producer.send_async(
                topic, value, key=key, headers=headers, timeout=self.write_timeout
            )
        except Exception as exc:  # noqa: BLE001 - every failure is retried the same way
            return exc
        return None

    def _send(self, msg: Message[Any], item: Any, timeout: float) -> Future[Any]:
        assert self.topic is not None
        return self.producer.send(self.topic, item, key=msg.key, codec=self.codec, timeout=timeout)


class HeldOutputs(Outputs):
    """An exactly_once handler's outputs: encoded on the worker (its error goes to the failure
    policy as an at-least-once output's would) and held with the message (HeldWrites) rather
    than produced; the poll thread's transaction produces them once the message's offset is
    committable. Nothing waits for the broker here: a delivery error surfaces at the
    transaction's commit, which aborts it and delivers the messages again; a record the broker
    refused for itself makes its message's next attempts fail (HeldWrites.refuse), one per
    refusal, so the failure policy retries it and then dead-letters it."""

    def __init__(
        self,
        producer: Producer | None,
        held: HeldWrites,
        *,
        topic: str | None,
        codec: Codec | None,
        produce_timeout: float,
        write_timeout: float,
        spans: SendSpans | None = None,
    ) -> None:
        super().__init__(
            producer,  # type: ignore[arg-type]  # never called: nothing is produced here
            topic=topic,
            codec=codec,
            produce_timeout=produce_timeout,
            write_timeout=write_timeout,
        )
        self.held = held
        self._spans = spans

    def _hold(self, msg: Dispatched, records: list[HeldRecord]) -> None:
        """Hold a message's records; traced, each in a send span opened now, in the message's
        process span (the current context: the executor runs emit and write in it), its
        context written into the record's headers; the transaction ends it."""
        spans = self._spans
        if spans is not None:
            traced = []
            for record in records:
                topic, key, value, record_headers, partition, _ = record
                sending, written = spans.start(topic, key, record_headers, tombstone=value is None)
                traced.append(HeldRecord(topic, key, value, written, partition, sending))
            records = traced
        self.held.hold(msg.lease, msg.offset, records)

    def emit(
        self, msg: Message[Any], result: Any, sends: list[Any] | None = None
    ) -> BaseException | None:
        """Hold the call's outputs (when the handler has an output topic) after what it sent
        with app.producer during the call (`sends`)."""
        dispatched: Dispatched = msg  # type: ignore[assignment]  # the executor's messages
        refused = self.held.refusal(dispatched.lease.partition, dispatched.offset)
        if refused is not None and msg.attempt <= refused[1]:
            # Its records aborted a transaction (each time: one failed attempt).
            return refused[0]
        topic = self.topic
        key = msg.key
        records = [HeldRecord(*send) for send in sends or ()]
        if topic is not None:
            try:
                records += [
                    HeldRecord(topic, key, _encode(topic, item, self.codec), [])
                    for item in _items(result)
                ]
            except BaseException as exc:  # noqa: BLE001 - handed to the failure policy
                return exc
        if records:
            self._hold(dispatched, records)
        return None

    async def emit_async(
        self, msg: Message[Any], result: Any, sends: list[Any] | None = None
    ) -> BaseException | None:
        return self.emit(msg, result, sends)

    def write(self, record: FailedRecord, msg: Dispatched | None = None) -> BaseException | None:
        assert msg is not None
        topic, key, value, headers = record
        self._hold(msg, [HeldRecord(topic, key, value, headers)])
        return None

    async def write_async(
        self, record: FailedRecord, msg: Dispatched | None = None
    ) -> BaseException | None:
        return self.write(record, msg)


def _items(result: Any) -> list[Any]:
    """What a handler's return value produces: each item of a list, tuple or generator;
    nothing for None."""
    if result is None:
        return []
    return list(result) if isinstance(result, list | tuple | Iterator) else [result]
