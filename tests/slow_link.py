"""A slow network link between clients and a broker: a TCP proxy on loopback that delays every
chunk, each way, and now and then stalls a connection as a lost segment would.

This kernel has no netem (nor the prio qdisc: `tc qdisc add dev lo root prio` answers "qdisc
kind is unknown"), so the link is emulated in user space. TCP hides a lost segment from the
application: what the client sees is its retransmission, the stream held up for a
retransmission timeout, with everything behind it (head-of-line blocking). That is what the
stall emulates; order within a connection is kept.

The broker must advertise the proxy's address (advertised.listeners), so that clients reach
it through the proxy after bootstrap too (tests/loopback_proxy.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

from tests.loopback_proxy import LoopbackProxy

CHUNK = 65536


class SlowLink(LoopbackProxy):
    def __init__(
        self,
        listen_port: int,
        target_port: int,
        *,
        delay: float = 0.1,
        loss: float = 0.05,
        stall: tuple[float, float] = (0.2, 0.4),
        seed: int = 7,
    ) -> None:
        super().__init__(listen_port, target_port, name="slow-link")
        self.delay, self.loss, self.stall = delay, loss, stall
        self.chunks = 0
        self.stalls = 0
        self._random = random.Random(seed)

    def start(self) -> SlowLink:
        super().start()
        return self

    def _pipes(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        broker_r: asyncio.StreamReader,
        broker_w: asyncio.StreamWriter,
    ) -> tuple[Coroutine[Any, Any, None], Coroutine[Any, Any, None]]:
        return self._pipe(client_r, broker_w), self._pipe(broker_r, client_w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward chunks, each delivered `delay` after it arrived (so a pipe keeps its
        throughput and adds latency), or later after a stall; in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            held_until = 0.0
            while True:
                due, data = await queue.get()
                if not data:
                    break
                if self._random.random() < self.loss:
                    self.stalls += 1
                    held_until = max(due, loop.time()) + self._random.uniform(*self.stall)
                wait = max(due, held_until) - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                self.chunks += 1
            writer.close()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                await queue.put((loop.time() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
