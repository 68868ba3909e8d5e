"""Outputs: what a handler's messages make the producer write, and waiting for the broker.

The handler's return value(s) go to its output topic with the input's key; a failed
message's retry-topic or DLQ record goes where the policy decided. Either way the input
counts as finished only once every record is acknowledged, so a crash in between runs it
again (at-least-once end to end). A worker thread waits blocking; an event loop awaits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from kafkaworker.message import Message
from kafkaworker.producer import Producer, _QueueFullError
from kafkaworker.runtime.execute.event_loop import cancelling
from kafkaworker.runtime.failures.deadletter import FailedRecord
from kafkaworker.serialization import Codec

# While librdkafka's queue is full, an event loop tries again this often (as send_async does).
_QUEUE_FULL_WAIT = 0.005


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

    def emit(self, msg: Message[Any], result: Any) -> BaseException | None:
        """Produce `result` (each item of a list, tuple or generator; None: nothing) and wait
        for the acknowledgements; the error, if one failed (encoding, delivery)."""
        try:
            futures = [self._send(msg, item, self.produce_timeout) for item in _items(result)]
            for future in futures:
                future.result(self.produce_timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the failure policy
            return exc
        return None

    async def emit_async(self, msg: Message[Any], result: Any) -> BaseException | None:
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

    def write(self, record: FailedRecord) -> BaseException | None:
        """Write a failed message's record and wait for the acknowledgement; the error."""
        topic, key, value, headers = record
        try:
            self.producer.send_sync(
                topic, value, key=key, headers=headers, timeout=self.write_timeout
            )
        except Exception as exc:  # noqa: BLE001 - every failure is retried the same way
            return exc
        return None

    async def write_async(self, record: FailedRecord) -> BaseException | None:
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


def _items(result: Any) -> list[Any]:
    """What a handler's return value produces: each item of a list, tuple or generator;
    nothing for None."""
    if result is None:
        return []
    return list(result) if isinstance(result, list | tuple | Iterator) else [result]
