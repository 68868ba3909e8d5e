"""A test app for tracing: run with `--only` one handler per process, so that each worker of a
chain is a process (and a service) of its own.

Configured by environment (topics): TRACED_ORDERS (input of `orders`, which outputs to
TRACED_SHIPMENTS), TRACED_SHIPMENTS (input of `shipments`), TRACED_FAILING (input of
`failing`: a record whose value has "fail" true fails, retried once, then to TRACED_DLQ),
TRACED_RETRIED (input of `retried`, which fails the same way: to a retry topic, then to
TRACED_RETRIED_DLQ),
TRACED_LINKED (input of `linked`, trace_parent="link"), TRACED_BATCH (input of the batch
handler `batched`), TRACED_QUEUE (input of `queued`, in queue mode: the share group
TRACED_QUEUE_GROUP). TRACED_ASYNC=1: the handlers are async def. TRACED_OWN_PROVIDER=1: the
app installs a TracerProvider of its own at import (service.name "own-provider"), which
kafkaworker must use rather than set up one. Each handler logs a line
(kafkaworker's logger, so it is written as the worker's lines are) with the value's id.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import structlog

from kafkaworker import App, BatchPolicy, Message

if os.environ.get("TRACED_OWN_PROVIDER") == "1":
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "own-provider"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)

app = App("traced")
log = structlog.get_logger("tests.traced")
ASYNC = os.environ.get("TRACED_ASYNC") == "1"


def _env(name: str) -> str:
    return os.environ.get(name, name.lower())


def orders(msg: Message[dict[str, Any]]) -> dict[str, Any]:
    log.info("order handled", order=msg.value["id"])
    return {"id": msg.value["id"], "shipped": True}


def shipments(msg: Message[dict[str, Any]]) -> None:
    log.info("shipment handled", order=msg.value["id"])


def failing(msg: Message[dict[str, Any]]) -> None:
    log.info("failing handled", order=msg.value["id"])
    if msg.value.get("fail"):
        raise ValueError(f"order {msg.value['id']} cannot be handled")


def linked(msg: Message[dict[str, Any]]) -> None:
    log.info("linked handled", order=msg.value["id"])


def queued(msg: Message[dict[str, Any]]) -> None:
    log.info("queued handled", order=msg.value["id"])


def batched(messages: list[Message[dict[str, Any]]]) -> None:
    log.info("batch handled", orders=[m.value["id"] for m in messages])


def _kind(func: Any) -> Any:
    """The handler as an async def when TRACED_ASYNC=1: it awaits once, so that the loop runs
    other coroutines in the middle of its call, as a real one would."""
    if not ASYNC:
        return func

    async def handler(arg: Any) -> Any:
        await asyncio.sleep(0)
        return func(arg)

    handler.__name__ = func.__name__
    handler.__annotations__ = func.__annotations__
    return handler


app.handler(_env("TRACED_ORDERS"), output=_env("TRACED_SHIPMENTS"), name="orders")(_kind(orders))
app.handler(_env("TRACED_SHIPMENTS"), name="shipments")(_kind(shipments))
app.handler(_env("TRACED_FAILING"), retries=1, dlq=_env("TRACED_DLQ"), name="failing")(
    _kind(failing)
)
app.handler(
    _env("TRACED_RETRIED"), retry_topics=[0.2], dlq=_env("TRACED_RETRIED_DLQ"), name="retried"
)(_kind(failing))
app.handler(_env("TRACED_LINKED"), trace_parent="link", name="linked")(_kind(linked))
app.handler(_env("TRACED_BATCH"), batch=BatchPolicy(max_size=10, max_wait=0.2), name="batched")(
    _kind(batched)
)
app.handler(
    _env("TRACED_QUEUE"),
    mode="queue",
    group=os.environ.get("TRACED_QUEUE_GROUP", "traced-queue"),
    name="queued",
)(_kind(queued))
