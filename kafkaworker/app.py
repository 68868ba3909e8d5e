"""App: the handler registry (the decorator), settings and lifecycle hooks."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from kafkaworker.backoff import Backoff
from kafkaworker.errors import ConfigError
from kafkaworker.handlers import (
    AckMode,
    BatchPolicy,
    HandlerSpec,
    Mode,
    OnExhausted,
    Ordering,
    ProcessingGuarantee,
    TraceParent,
)
from kafkaworker.producer import Producer
from kafkaworker.serialization import Codec
from kafkaworker.settings import Settings, load_settings

if TYPE_CHECKING:
    from pathlib import Path

    from kafkaworker.inbox import Inbox, Outbox

F = TypeVar("F", bound=Callable[..., Any])
# A lifecycle hook: a plain function, or an async def one (run on the process's event loop).
Hook = Callable[[], Awaitable[None] | None]
RunAsync = Callable[[Coroutine[Any, Any, Any]], Any]

log = structlog.get_logger("kafkaworker.app")


@dataclass
class Lifespan:
    """What became of a run's lifespan (see App.lifespan)."""

    shutdown_failed: bool = False


class App:
    """A named set of handlers. The name is the default consumer group id and client.id prefix.

    >>> app = App("orders-service")
    >>> @app.handler("orders", concurrency=8)
    ... def handle_order(msg): ...
    """

    def __init__(self, name: str, *, settings: Settings | None = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"App name {name!r} is invalid: a non-empty string (the group id)")
        self.name = name
        self.settings = settings
        self._handlers: dict[str, HandlerSpec] = {}
        self._producer: Producer | None = None
        self._run_settings: Settings | None = None  # a run's settings, during its lifespan
        # A Schema Registry client for codec="avro" handlers; None: built from the settings'
        # schema_registry. (Set it to share one client, e.g. a mock:// one in tests.)
        self.schema_registry: Any = None
        self.startup_hooks: list[Hook] = []
        self.shutdown_hooks: list[Hook] = []
        # The outbox whose relay `kafkaworker run` runs beside the handlers (app.outbox).
        self.declared_outbox: Outbox | None = None

    @property
    def handlers(self) -> Mapping[str, HandlerSpec]:
        return dict(self._handlers)

    def handler(
        self,
        topics: str | Sequence[str],
        *,
        group: str | None = None,
        name: str | None = None,
        concurrency: int | None = None,
        ordering: Ordering | None = None,
        retries: int = 0,
        backoff: Backoff | None = None,
        dlq: str | None = None,
        codec: str | Codec = "json",
        ack: AckMode = "auto",
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        on_exhausted: OnExhausted = "stall",
        retry_topics: Sequence[float] = (),
        output: str | None = None,
        batch: BatchPolicy | None = None,
        mode: Mode = "stream",
        trace_parent: TraceParent = "parent",
        processing_guarantee: ProcessingGuarantee | None = None,
        inbox: Inbox | None = None,
    ) -> Callable[[F], F]:
        """Register a handler for `topics`; returns the function unchanged (unit-testable)."""
        if callable(topics) and not isinstance(topics, str):
            # `@app.handler` without parentheses: Python passed the function as the topics.
            func_name = getattr(topics, "__name__", repr(topics))
            raise ConfigError(
                f"handler {func_name!r}: @app.handler needs its topic(s), as in "
                f'@app.handler("orders"); it was used without parentheses'
            )
        topic_tuple = (topics,) if isinstance(topics, str) else tuple(topics)

        def register(func: F) -> F:
            handler_name = name or getattr(func, "__name__", None) or repr(func)
            if handler_name in self._handlers:
                raise ConfigError(
                    f"handler {handler_name!r} is registered twice in app {self.name!r}: "
                    "give one of them another name with @app.handler(..., name=...)"
                )
            self._handlers[handler_name] = HandlerSpec(
                name=handler_name,
                func=func,
                topics=topic_tuple,
                group=group,
                concurrency=concurrency,  # type: ignore[arg-type]  # None: the default
                ordering=ordering,  # type: ignore[arg-type]  # None: the mode's default
                retries=retries,
                backoff=backoff or Backoff(),
                dlq=dlq,
                codec=codec,
                ack=ack,
                retry_on=retry_on if isinstance(retry_on, tuple) else (retry_on,),
                on_exhausted=on_exhausted,
                retry_topics=tuple(retry_topics),
                output=output,
                batch=batch,
                mode=mode,
                trace_parent=trace_parent,
                # None: at_least_once, unless the settings' app-wide processing_guarantee
                # says otherwise.
                processing_guarantee=processing_guarantee,  # type: ignore[arg-type]
                inbox=inbox,
            )
            return func

        return register

    @property
    def producer(self) -> Producer:
        """The process's one Producer, shared by handlers, outputs and the DLQ.

        While the app runs it is the runner's (built from the same settings); outside a run
        (a web service, a script) it is built on first use from the app's settings, or
        settings.yaml and the environment.
        """
        if self._producer is None:
            settings = self._run_settings or self.settings or load_settings()
            self._producer = Producer(
                settings, client_id=f"{self.name}.producer", schema_registry=self.schema_registry
            )
        return self._producer

    @contextlib.contextmanager
    def lifespan(
        self,
        settings: Settings,
        *,
        run_async: RunAsync | None = None,
        producer: Producer | None = None,
    ) -> Iterator[Lifespan]:
        """The app's part of a run: app.producer is built from the run's `settings`, the
        startup hooks run on entry, and on exit (once every consumer has stopped) the
        shutdown hooks run and then the producer is flushed and closed. A startup hook that
        raises fails the run; one at shutdown is logged and marks `shutdown_failed`.
        `run_async` runs an async hook to completion on the event loop the async handlers
        use (what a hook creates, a connection pool, belongs to that loop); without one, an
        async hook gets a loop of its own. `producer`: app.producer for the run (the test
        client's, which keeps what is produced in memory)."""
        lifespan = Lifespan()
        self._run_settings = settings
        if producer is not None:
            self._producer = producer

        def call(hook: Hook) -> None:
            result = hook()
            if inspect.isawaitable(result):
                (run_async or asyncio.run)(_awaiting(result))

        try:
            for hook in self.startup_hooks:
                call(hook)
            yield lifespan
        finally:
            for hook in self.shutdown_hooks:
                try:
                    call(hook)
                except Exception:
                    log.exception(
                        "shutdown hook failed", hook=getattr(hook, "__name__", repr(hook))
                    )
                    lifespan.shutdown_failed = True
            producer, self._producer, self._run_settings = self._producer, None, None
            if producer is not None:
                undelivered = producer.close(timeout=10)
                if undelivered:
                    log.warning("producer closed with undelivered records", count=undelivered)

    def outbox(self, outbox: Outbox) -> Outbox:
        """Declare the app's outbox (kafkaworker.postgres.PostgresOutbox): `kafkaworker run`
        runs its relay beside the handlers (one relay active per outbox table, whatever the
        number of workers), and `kafkaworker outbox relay MODULE:APP` runs it alone."""
        if not callable(getattr(outbox, "relay", None)):
            raise ConfigError(f"app.outbox({outbox!r}): a PostgresOutbox")
        if self.declared_outbox is not None:
            raise ConfigError(f"app {self.name!r} declares an outbox already")
        self.declared_outbox = outbox
        return outbox

    def on_startup(self, func: Hook) -> Hook:
        """Run `func` once before any consumer starts (e.g. open a connection pool); an
        async def hook runs on the event loop the async handlers use."""
        self.startup_hooks.append(func)
        return func

    def on_shutdown(self, func: Hook) -> Hook:
        """Run `func` once after every consumer has stopped and committed (app.producer is
        still open then)."""
        self.shutdown_hooks.append(func)
        return func

    def run(
        self,
        *,
        settings_path: str | Path | None = None,
        only: Sequence[str] = (),
        overrides: Mapping[str, Any] | None = None,
    ) -> int:
        """Run every handler (or `only` these) until SIGTERM/SIGINT; returns the exit code."""
        from kafkaworker.runtime.runner import Runner  # noqa: PLC0415 - keeps import light

        return Runner.from_app(
            self, settings_path=settings_path, only=only, overrides=overrides
        ).run()

    def __repr__(self) -> str:
        return f"<App {self.name!r} handlers={list(self._handlers)}>"


async def _awaiting(result: Awaitable[Any]) -> Any:
    return await result
