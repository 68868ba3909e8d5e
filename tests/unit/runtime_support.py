"""Helpers for the core's unit tests: handler specs, messages on partition states, and a
HandlerRuntime over the in-memory source. No broker anywhere."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Message as Record

from kafkaworker import App, Settings
from kafkaworker.handlers import HandlerSpec
from kafkaworker.message import DispatchedMessage
from kafkaworker.runtime.compose import AppRuntime, GivenSources
from kafkaworker.runtime.handler_runtime import HandlerRuntime
from kafkaworker.runtime.handoff import Completion, CompletionQueue, Dispatched, Outcome
from kafkaworker.runtime.poll.partitions import PartitionState
from kafkaworker.runtime.source import Partition
from kafkaworker.runtime.source.memory import MemorySource
from kafkaworker.serialization import CODECS


def spec_for(func: Callable[..., Any], topic: str = "t", **options: Any) -> HandlerSpec:
    app = App("svc")
    app.handler(topic, name="handler", codec="raw", **options)(func)
    return app.handlers["handler"]


def messages(
    state: PartitionState, count: int, *, keys: list[bytes | None] | None = None
) -> list[Dispatched]:
    """The next `count` messages of a partition, as the poll thread builds them (tracked)."""
    start = state.last_dispatched + 1
    offsets = list(range(start, start + count))
    state.last_dispatched = offsets[-1]
    state.offsets.add_run(offsets)
    records = [
        Record(
            topic=state.topic,
            partition=state.partition,
            offset=offset,
            key=keys[i] if keys else None,
            value=b"%d" % offset,
        )
        for i, offset in enumerate(offsets)
    ]
    return DispatchedMessage.run_of(state.lease, records, offsets, CODECS["raw"])


def reports(completions: CompletionQueue, timeout: float = 5.0) -> list[Completion]:
    """Everything reported so far, waiting up to `timeout` for the first report."""
    done: list[Completion] = []
    try:
        done.extend(completions.get(timeout=timeout))
        while True:
            done.extend(completions.get_nowait())
    except queue.Empty:
        pass
    return done


def outcomes(completions: list[Completion]) -> dict[tuple[int, int], list[Outcome]]:
    """(partition, offset) -> every outcome reported for it."""
    seen: dict[tuple[int, int], list[Outcome]] = {}
    for lease, offsets, outcome in completions:
        for offset in offsets:
            seen.setdefault((lease.partition.partition, offset), []).append(outcome)
    return seen


def settings(**values: Any) -> Settings:
    return Settings.model_validate(
        {"shutdown_timeout": 5.0, "revoke_timeout": 5.0, "log_level": "WARNING", **values}
    )


@contextmanager
def running(
    spec: HandlerSpec, source: MemorySource, **setting_values: Any
) -> Iterator[HandlerRuntime]:
    """A HandlerRuntime over `source`, built by the composition root and started; stopped (its
    thread joined) on exit."""
    sources = GivenSources({spec.name: source})
    runtime = AppRuntime(App("svc"), settings(**setting_values), [spec], sources=sources)
    with runtime:
        [handler] = runtime.handlers
        handler.start()
        yield handler
        handler.request_stop()
        assert handler.join(30), "the poll thread did not stop"
    assert handler.error is None, handler.error


def committed_to_the_end(source: MemorySource, partitions: list[Partition]) -> bool:
    return all(source.committed.get(p) == source.log_size(p) for p in partitions)
