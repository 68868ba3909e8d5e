"""A TCP proxy on loopback in front of a broker, for tests that put something between clients
and the broker (a slow link, a held answer). One thread owns the proxy's event loop; start()
starts it, close() stops it. Subclasses say what one connection does (`_pipes`); the
broker must advertise the proxy's address (advertised.listeners), so that clients reach it
only through the proxy.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any


class LoopbackProxy:
    def __init__(self, listen_port: int, target_port: int, *, name: str) -> None:
        self.listen_port, self.target_port = listen_port, target_port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> LoopbackProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the {self._thread.name} proxy did not start")
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
            *self._pipes(client_r, client_w, broker_r, broker_w), return_exceptions=True
        )
        for writer in (client_w, broker_w):
            writer.close()

    def _pipes(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        broker_r: asyncio.StreamReader,
        broker_w: asyncio.StreamWriter,
    ) -> tuple[Coroutine[Any, Any, None], Coroutine[Any, Any, None]]:
        """What one connection does: its client-to-broker and broker-to-client pipes."""
        raise NotImplementedError
