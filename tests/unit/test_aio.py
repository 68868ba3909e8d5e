"""What only async handlers have: coroutines in flight up to `concurrency`, cancellation when a
revoke's wait runs out, backoffs that await, the blocked-loop watchdog, async hooks. No
broker: the memory source and the real event loop thread."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from kafkaworker import App, Backoff, BatchPolicy, ConfigError, Message, Settings
from kafkaworker.producer import _QueueFullError
from kafkaworker.runtime.execute.event_loop import BLOCKED_AFTER, EventLoopThread
from kafkaworker.runtime.execute.outputs import Outputs
from kafkaworker.runtime.source import Partition
from kafkaworker.runtime.source.memory import MemorySource
from kafkaworker.serialization import CODECS
from kafkaworker.testing.producer import MemoryProducer
from tests.unit.runtime_support import committed_to_the_end, running, spec_for

P0 = Partition("t", 0)


def source_with(count: int, partitions: int = 1) -> MemorySource:
    source = MemorySource({"t": partitions})
    for i in range(count):
        source.broker.append("t", b"%d" % i, key=b"k%d" % (i % 7), partition=i % partitions)
    return source


def test_concurrency_is_the_number_of_coroutines_in_flight() -> None:
    source = source_with(600)
    in_flight = 0
    most = 0

    async def handle(msg: Message[Any]) -> None:
        nonlocal in_flight, most
        in_flight += 1  # one loop thread: no lock needed
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1

    spec = spec_for(handle, ordering="none", concurrency=200)
    started = time.monotonic()
    with running(spec, source):
        assert source.wait_for(lambda s: committed_to_the_end(s, [P0]), 30)
    # 600 calls of 50 ms, 200 at a time: about three rounds, not 30 s one after another.
    assert most == 200
    assert time.monotonic() - started < 10


def test_async_handlers_default_to_100_coroutines_and_are_bounded() -> None:
    async def handle(msg: Message[Any]) -> None:
        pass

    assert spec_for(handle).concurrency == 100
    assert spec_for(handle, concurrency=100_000).concurrency == 100_000
    with pytest.raises(ConfigError, match=r"concurrency=100001 .* \(coroutines in flight\)"):
        spec_for(handle, concurrency=100_001)
    with pytest.raises(ConfigError, match=r"concurrency=5000 .* \(worker threads\)"):
        spec_for(lambda msg: None, concurrency=5000)


def test_a_revoke_cancels_what_outlives_its_wait_and_commits_nothing_past_it() -> None:
    source = source_with(5)
    cancelled = threading.Event()
    forever = asyncio.Event()

    async def handle(msg: Message[Any]) -> None:
        if msg.offset == 3:
            try:
                await forever.wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    with running(spec_for(handle), source, revoke_timeout=0.2):
        assert source.wait_for(lambda s: s.committed.get(P0) == 3, 10)
        source.revoke([P0])
        assert cancelled.wait(10), "the coroutine still running after revoke_timeout"
        assert source.wait_for(lambda s: P0 not in s.assigned, 10)
    assert source.committed[P0] == 3


def test_a_retry_backoff_awaits_and_a_revoke_cuts_it_short() -> None:
    source = source_with(1)
    calls: list[float] = []

    async def handle(msg: Message[Any]) -> None:
        calls.append(time.monotonic())
        raise ValueError("the service is down")

    spec = spec_for(handle, retries=3, backoff=Backoff(initial=60, max=60, jitter="none"))
    with running(spec, source):
        assert source.wait_for(lambda s: bool(s.assigned), 10)
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        source.revoke([P0])
        # The 60 s backoff ended with the revoke: the partition was let go within seconds.
        assert source.wait_for(lambda s: P0 not in s.assigned, 10)
    assert len(calls) == 1
    assert source.committed[P0] == 0  # nothing past the start, committed at assignment


def test_an_async_batch_handler_gets_its_batches_in_order() -> None:
    source = source_with(300, partitions=2)
    batches: list[list[tuple[int, int]]] = []

    async def store(messages: list[Message[Any]]) -> None:
        await asyncio.sleep(0)
        batches.append([(m.partition, m.offset) for m in messages])

    spec = spec_for(store, batch=BatchPolicy(max_size=40, max_wait=0.05))
    with running(spec, source):
        assert source.wait_for(lambda s: committed_to_the_end(s, [P0, Partition("t", 1)]), 30)
    assert max(len(b) for b in batches) <= 40
    for partition in (0, 1):
        offsets = [o for b in batches for p, o in b if p == partition]
        assert offsets == list(range(150))


def test_a_handler_blocking_the_loop_is_named_once_with_where_it_blocks() -> None:
    source = source_with(3)

    async def slow_lookup(msg: Message[Any]) -> None:
        time.sleep(BLOCKED_AFTER * 2)  # the mistake: a blocking call inside async def

    with capture_logs() as logs, running(spec_for(slow_lookup, concurrency=1), source):
        assert source.wait_for(lambda s: s.committed.get(P0) == 3, 30)
    blocked = [e for e in logs if "blocking the event loop" in e["event"]]
    assert len(blocked) == 1  # three blocking calls, one report
    assert blocked[0]["handler"] == "handler"
    assert "time.sleep" in blocked[0]["at"]
    assert "asyncio.to_thread" in blocked[0]["event"]


def test_async_hooks_run_on_the_loop_the_handlers_use() -> None:
    app = App("svc")
    loops: dict[str, Any] = {}

    @app.on_startup
    async def open_pool() -> None:
        loops["startup"] = asyncio.get_running_loop()

    @app.on_shutdown
    async def close_pool() -> None:
        loops["shutdown"] = asyncio.get_running_loop()

    loop = EventLoopThread().start()
    try:
        with app.lifespan(Settings(), run_async=loop.run):
            assert loops["startup"] is loop.loop
        assert loops["shutdown"] is loop.loop
    finally:
        loop.close()
    # Without the runtime's loop (a script), an async hook gets a loop of its own.
    with app.lifespan(Settings()):
        assert loops["startup"] is not loop.loop


class FullQueue(MemoryProducer):
    """librdkafka's queue is full until `room` is set: send() waits for room up to its
    timeout, blocking the calling thread, as the real Producer's does."""

    def __init__(self) -> None:
        super().__init__()
        self.room = threading.Event()

    def send(self, topic: str, value: Any, *, timeout: float = 30.0, **options: Any) -> Any:
        if not self.room.wait(timeout):
            raise _QueueFullError(f"librdkafka's queue stayed full for {timeout:g}s")
        return super().send(topic, value, timeout=timeout, **options)


def test_outputs_wait_for_room_in_the_producer_queue_without_blocking_the_loop() -> None:
    producer = FullQueue()
    outputs = Outputs(
        producer, topic="out", codec=CODECS["raw"], produce_timeout=2, write_timeout=2
    )
    msg: Message[Any] = Message("in", key=b"k")

    async def main() -> BaseException | None:
        emitting = asyncio.create_task(outputs.emit_async(msg, [b"a", b"b"]))
        await asyncio.sleep(0)  # the emit starts, and finds the queue full
        producer.room.set()  # running at all, this shows the loop was not blocked meanwhile
        return await emitting

    assert asyncio.run(main()) is None
    assert [(r.key, r.value) for r in producer.records] == [(b"k", b"a"), (b"k", b"b")]
