"""Handler outputs: the return value(s) produced with the input's key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kafkaworker.message import Message
from kafkaworker.producer import Producer
from kafkaworker.serialization import Codec


class Outputs:
    """Produces a handler's outputs and waits for every acknowledgement: the input counts as
    finished only then, so a crash in between re-runs the handler (at-least-once end to end).
    """

    def __init__(self, producer: Producer, topic: str, codec: Codec, *, timeout: float) -> None:
        self.producer = producer
        self.topic = topic
        self.codec = codec
        self.timeout = timeout

    def emit(self, msg: Message[Any], result: Any) -> None:
        """Produce `result` (each item of a list, tuple or generator; None: nothing). Raises
        like a handler when an output cannot be encoded or is not acknowledged in time."""
        if result is None:
            return
        items = list(result) if isinstance(result, list | tuple | Iterator) else [result]
        futures = [
            self.producer.send(
                self.topic, item, key=msg.key, codec=self.codec, timeout=self.timeout
            )
            for item in items
        ]
        for future in futures:
            future.result(self.timeout)
