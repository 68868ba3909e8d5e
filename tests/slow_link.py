"""A slow network link between clients and a broker: a TCP proxy on loopback that delays every
chunk, each way, and now and then stalls a connection as a lost segment would.

This kernel has no netem (nor the prio qdisc: `tc qdisc add dev lo root prio` answers "qdisc
kind is unknown"), so the link is emulated in user space. TCP hides a lost segment from the
application: what the client sees is its retransmission, the stream held up for a
retransmission timeout, with everything behind it (head-of-line blocking). That is what the
stall emulates; order within a connection is kept.

The broker must advertise the proxy's address (advertised.listeners), so that clients reach
it through the proxy after bootstrap too. One thread owns the proxy's event loop; `close()`
stops it.
"""

from __future__ import annotations

import asyncio
import random
import threading

CHUNK = 65536


class SlowLink:
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
        self.listen_port, self.target_port = listen_port, target_port
        self.delay, self.loss, self.stall = delay, loss, stall
        self.chunks = 0
        self.stalls = 0
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="slow-link", daemon=True)

    def start(self) -> SlowLink:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the slow link did not start")
        return self

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", self.listen_port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            self._pipe(client_r, broker_w), self._pipe(broker_r, client_w), return_exceptions=True
        )
        for writer in (client_w, broker_w):
            writer.close()

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
