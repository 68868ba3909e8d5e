"""Outputs: what a handler's messages make the producer write, and waiting for the broker.

The handler's return value(s) go to its output topic with the input's key; a failed
message's retry-topic or DLQ record goes where the policy decided. Either way the input
counts as finished only once every record is acknowledged, so a crash in between runs it
again (at-least-once end to end). A worker thread waits blocking; an event loop awaits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from kafkaworker.message import Message
from kafkaworker.producer import Producer
from kafkaworker.runtime.failures.deadletter import FailedRecord
from kafkaworker.serialization import Codec


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
            for future in self._send(msg, result):
                future.result(self.produce_timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the failure policy
            return exc
        return None

    async def emit_async(self, msg: Message[Any], result: Any) -> BaseException | None:
        try:
            futures = [asyncio.wrap_future(f) for f in self._send(msg, result)]
            if futures:
                await asyncio.wait_for(asyncio.gather(*futures), self.produce_timeout)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
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

    def _send(self, msg: Message[Any], result: Any) -> list[Any]:
        assert self.topic is not None
        if result is None:
            return []
        items = list(result) if isinstance(result, list | tuple | Iterator) else [result]
        return [
            self.producer.send(
                self.topic, item, key=msg.key, codec=self.codec, timeout=self.produce_timeout
            )
            for item in items
        ]
