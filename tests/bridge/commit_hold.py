"""A TCP proxy in front of a broker that can hold the answer to a transaction's commit: the
broker receives EndTxn and commits, the producer hears nothing until `release()`. That is the
one case where the bridge cannot know whether an order was written (DEADLINE_EXCEEDED), made
on demand: a SIGSTOP would have to land between the request and its answer, a window of
about a millisecond on loopback.

Kafka requests are size-prefixed frames (int32), each starting with its api_key (int16); the
proxy reads the client's frames to see an EndTxn (api_key 26) go by. The broker must
advertise the proxy's address (advertised.listeners), so that clients reach it only through
the proxy. One thread owns the proxy's event loop; `close()` stops it.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Coroutine
from typing import Any

from tests.loopback_proxy import LoopbackProxy

END_TXN = 26


class CommitHold(LoopbackProxy):
    def __init__(self, listen_port: int, target_port: int) -> None:
        super().__init__(listen_port, target_port, name="commit-hold")
        self.armed = threading.Event()  # set: hold the next commit's answer
        self.holding = threading.Event()  # set once an EndTxn went by while armed
        self._released = asyncio.Event()

    def start(self) -> CommitHold:
        super().start()
        return self

    def release(self) -> None:
        """Lets the held answers through, and everything after them."""
        self._loop.call_soon_threadsafe(self._released.set)

    def _pipes(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        broker_r: asyncio.StreamReader,
        broker_w: asyncio.StreamWriter,
    ) -> tuple[Coroutine[Any, Any, None], Coroutine[Any, Any, None]]:
        held = asyncio.Event()  # this connection's answers are held
        return self._requests(client_r, broker_w, held), self._answers(broker_r, client_w, held)

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, held: asyncio.Event
    ) -> None:
        while size := await reader.read(4):
            size += await reader.readexactly(4 - len(size))
            frame = await reader.readexactly(struct.unpack(">i", size)[0])
            (api_key,) = struct.unpack(">h", frame[:2])
            if api_key == END_TXN and self.armed.is_set() and not self.holding.is_set():
                held.set()  # before the broker can answer
                self.holding.set()
            writer.write(size + frame)
            await writer.drain()
        writer.close()

    async def _answers(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, held: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            if held.is_set():
                await self._released.wait()
            writer.write(data)
            await writer.drain()
