"""HandlerSpec: a frozen description of one handler, validated when it is declared."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

from pydantic import BaseModel

from kafkaworker.backoff import Backoff
from kafkaworker.errors import ConfigError
from kafkaworker.message import Message
from kafkaworker.serialization import RUNTIME_CODECS, Codec, get_codec
from kafkaworker.settings import Settings

if TYPE_CHECKING:
    from kafkaworker.app import App
    from kafkaworker.inbox import Inbox

Ordering = Literal["partition", "key", "none"]
AckMode = Literal["auto", "manual"]
# "stream": a consumer group (partitions owned by one member, offsets committed); "queue": a
# share group (KIP-932: records handed out one by one, acknowledged ACCEPT/RELEASE/REJECT).
Mode = Literal["stream", "queue"]
OnExhausted = Literal["stall", "skip"]
# With tracing on, how a message's process span joins the producer's trace: as its child (one
# trace in the APM), or as the root of a new trace with a link to it (a handler whose messages
# fan in from many traces, or whose producer's trace would grow without bound).
TraceParent = Literal["parent", "link"]
# What a crash, a rebalance or a fenced zombie may do to a handler's writes: "at_least_once"
# (outputs may be written again, never lost) or "exactly_once" (a Kafka transaction commits
# the writes of finished messages with their offsets: docs/exactly-once.md).
ProcessingGuarantee = Literal["at_least_once", "exactly_once"]
ORDERINGS: tuple[str, ...] = get_args(Ordering)
ACK_MODES: tuple[str, ...] = get_args(AckMode)
ON_EXHAUSTED: tuple[str, ...] = get_args(OnExhausted)
MODES: tuple[str, ...] = get_args(Mode)
TRACE_PARENTS: tuple[str, ...] = get_args(TraceParent)
PROCESSING_GUARANTEES: tuple[str, ...] = get_args(ProcessingGuarantee)
# Kafka's own rule (kafka.common.internals.Topic): legal characters and at most 249 of them.
_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
# Threads for a def handler; coroutines in flight for an async def one.
_MAX_THREADS = 4096
_MAX_COROUTINES = 100_000
_DEFAULT_THREADS = 8
_DEFAULT_COROUTINES = 100


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """Batch handlers get `list[Message]`: up to `max_size` messages, waiting at most
    `max_wait` seconds to fill a batch (for bulk sinks: one insert for many rows)."""

    max_size: int = 500
    max_wait: float = 0.5

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_size, int)
            or isinstance(self.max_size, bool)
            or (self.max_size < 1)
        ):
            raise ConfigError(f"BatchPolicy max_size={self.max_size!r}: an integer >= 1")
        if not isinstance(self.max_wait, int | float) or self.max_wait < 0:
            raise ConfigError(f"BatchPolicy max_wait={self.max_wait!r}: seconds >= 0")


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """Everything the runtime needs to run one handler; `replace()` re-validates."""

    name: str
    func: Callable[..., Any] = field(repr=False)
    topics: tuple[str, ...]
    group: str | None = None
    # Worker threads (def), or coroutines in flight (async def). Declared None, it is made 8
    # threads or 100 coroutines in __post_init__, so it is an int wherever it is read.
    concurrency: int = None  # type: ignore[assignment]
    # Declared None, it is made "partition" (stream mode) or "none" (queue mode) in
    # __post_init__; `ordering_defaulted` remembers it, so that switching the mode through the
    # settings does not leave stream mode's default behind.
    ordering: Ordering = None  # type: ignore[assignment]
    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    dlq: str | None = None
    codec: str | Codec = "json"
    ack: AckMode = "auto"
    # Which errors are worth retrying; any other error is fatal (straight to the DLQ).
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    # Without a DLQ, what to do once retries are spent: keep retrying at the maximum backoff
    # (the partition stalls, nothing is lost) or log the message and move on.
    on_exhausted: OnExhausted = "stall"
    # Delays (seconds) of the delayed retry topics, in order; () for none.
    retry_topics: tuple[float, ...] = ()
    # Where the handler's return value(s) are produced (with the input's key); None: nowhere.
    output: str | None = None
    # Batch handlers take list[Message]; None: one Message at a time.
    batch: BatchPolicy | None = None
    mode: Mode = "stream"
    trace_parent: TraceParent = "parent"
    # Declared None, it is made "at_least_once" in __post_init__; `guarantee_defaulted`
    # remembers it, so that the settings' app-wide `processing_guarantee` applies to it.
    processing_guarantee: ProcessingGuarantee = None  # type: ignore[assignment]
    # Where handled messages are recorded, in the transaction the handler's psycopg.Connection
    # parameter runs in (kafkaworker.postgres.PostgresInbox); None: no inbox.
    inbox: Inbox | None = None
    ordering_defaulted: bool = field(init=False, default=False, repr=False)
    guarantee_defaulted: bool = field(init=False, default=False, repr=False)
    # Derived from the handler's signature: the pydantic model its messages are validated
    # as, and whether it takes the model itself rather than a Message.
    model: type[BaseModel] | None = field(init=False, default=None, repr=False)
    takes_value: bool = field(init=False, default=False, repr=False)
    # An async def handler (or a callable object whose __call__ is one): it runs on the event
    # loop, and concurrency counts coroutines.
    is_async: bool = field(init=False, default=False, repr=False)
    # The parameter annotated psycopg.Connection, which gets the inbox transaction's
    # connection; None when the handler takes none.
    connection: str | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        def bad(option: str, value: object, allowed: str) -> ConfigError:
            return ConfigError(f"handler {self.name!r}: {option}={value!r} is invalid: {allowed}")

        if not callable(self.func):
            raise bad("func", self.func, "a handler must be callable")
        is_async = is_async_callable(self.func)
        object.__setattr__(self, "is_async", is_async)
        if _is_async_generator(self.func):
            raise bad(
                "func",
                self.func,
                "an async generator cannot be a handler: return the outputs as a list",
            )
        if self.concurrency is None:
            default = _DEFAULT_COROUTINES if is_async else _DEFAULT_THREADS
            object.__setattr__(self, "concurrency", default)
        if not self.topics:
            raise bad("topics", list(self.topics), "give at least one topic")
        for topic in self.topics:
            if not isinstance(topic, str) or not _TOPIC.fullmatch(topic) or topic in (".", ".."):
                raise bad("topics", topic, "a topic name is 1-249 of [a-zA-Z0-9._-]")
        if len(set(self.topics)) != len(self.topics):
            raise bad("topics", list(self.topics), "a topic is listed twice")
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise bad("group", self.group, "a non-empty string, or None for the app's name")
        most = _MAX_COROUTINES if is_async else _MAX_THREADS
        if (
            not isinstance(self.concurrency, int)
            or isinstance(self.concurrency, bool)
            or not 1 <= self.concurrency <= most
        ):
            kind = "coroutines in flight" if is_async else "worker threads"
            raise bad("concurrency", self.concurrency, f"an integer from 1 to {most} ({kind})")
        if self.mode not in MODES:
            raise bad("mode", self.mode, f"allowed are {', '.join(MODES)}")
        if self.trace_parent not in TRACE_PARENTS:
            raise bad("trace_parent", self.trace_parent, f"allowed are {', '.join(TRACE_PARENTS)}")
        object.__setattr__(self, "ordering_defaulted", self.ordering is None)
        if self.ordering is None:
            object.__setattr__(self, "ordering", "none" if self.mode == "queue" else "partition")
        if self.ordering not in ORDERINGS:
            raise bad("ordering", self.ordering, f"allowed are {', '.join(ORDERINGS)}")
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise bad("retries", self.retries, "an integer >= 0 (re-attempts after the first)")
        if not isinstance(self.backoff, Backoff):
            raise bad("backoff", self.backoff, "a kafkaworker.Backoff(...) or None")
        if self.dlq is not None:
            if not isinstance(self.dlq, str) or not _TOPIC.fullmatch(self.dlq):
                raise bad("dlq", self.dlq, "a topic name is 1-249 of [a-zA-Z0-9._-]")
            if self.dlq in self.topics:
                raise bad("dlq", self.dlq, "the dead-letter topic cannot be a source topic")
        if self.codec not in RUNTIME_CODECS:
            try:
                get_codec(self.codec)
            except LookupError as exc:
                raise bad("codec", self.codec, str(exc)) from None
        if self.ack not in ACK_MODES:
            raise bad("ack", self.ack, f"allowed are {', '.join(ACK_MODES)}")
        if (
            not isinstance(self.retry_on, tuple)
            or not self.retry_on
            or not all(isinstance(c, type) and issubclass(c, BaseException) for c in self.retry_on)
        ):
            raise bad("retry_on", self.retry_on, "a tuple of exception classes")
        if not isinstance(self.retry_topics, tuple) or not all(
            isinstance(d, int | float) and not isinstance(d, bool) and d > 0
            for d in self.retry_topics
        ):
            raise bad("retry_topics", self.retry_topics, "a list of delays in seconds, each > 0")
        if len(set(self.retry_topics)) != len(self.retry_topics):
            raise bad("retry_topics", list(self.retry_topics), "a delay is listed twice")
        if self.on_exhausted not in ON_EXHAUSTED:
            raise bad("on_exhausted", self.on_exhausted, f"allowed are {', '.join(ON_EXHAUSTED)}")
        if self.output is not None:
            if not isinstance(self.output, str) or not _TOPIC.fullmatch(self.output):
                raise bad("output", self.output, "a topic name is 1-249 of [a-zA-Z0-9._-]")
            if self.output in self.topics:
                raise bad("output", self.output, "a handler cannot produce to its own topic")
            if self.ack == "manual":
                raise bad(
                    "output",
                    self.output,
                    "outputs need ack='auto' (the runtime acks "
                    "the input once every output is acknowledged)",
                )
        if self.batch is not None:
            if not isinstance(self.batch, BatchPolicy):
                raise bad("batch", self.batch, "a kafkaworker.BatchPolicy(...) or None")
            if self.ack == "manual" or self.output is not None:
                raise bad("batch", self.batch, "batch handlers need ack='auto' and no output")
        object.__setattr__(self, "guarantee_defaulted", self.processing_guarantee is None)
        if self.processing_guarantee is None:
            object.__setattr__(self, "processing_guarantee", "at_least_once")
        if self.processing_guarantee not in PROCESSING_GUARANTEES:
            raise bad(
                "processing_guarantee",
                self.processing_guarantee,
                f"allowed are {', '.join(PROCESSING_GUARANTEES)}",
            )
        if self.processing_guarantee == "exactly_once":
            self._check_exactly_once(bad)
        if self.mode == "queue":
            self._check_queue_mode(bad)
        connection, kind = _connection_parameter(self.func)
        object.__setattr__(self, "connection", connection)
        if self.inbox is not None or connection is not None:
            self._check_inbox(bad, connection, kind)
        _check_signature(self.name, self.func, connection)
        model, takes_value = _payload_model(self.func, batch=self.batch is not None)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "takes_value", takes_value)

    def _check_exactly_once(self, bad: Callable[[str, object, str], ConfigError]) -> None:
        """What exactly-once cannot honour (yet) is refused here, in one line each: never
        run silently at-least-once."""
        guarantee = "processing_guarantee='exactly_once'"
        if self.mode == "queue":
            raise bad(
                "mode",
                self.mode,
                f"{guarantee} needs stream mode: a share group (KIP-932) has no transactions, "
                "its acknowledgements cannot commit with the outputs",
            )

    def _check_queue_mode(self, bad: Callable[[str, object, str], ConfigError]) -> None:
        """What a share group cannot honour is refused here, in one line each."""
        if self.ordering != "none":
            raise bad(
                "ordering",
                self.ordering,
                'mode="queue" needs ordering="none": a share group hands records of one '
                "partition to many members at once, so no order can be kept",
            )
        if self.retry_topics:
            raise bad(
                "retry_topics",
                list(self.retry_topics),
                'mode="queue" retries by releasing the record to the share group, which '
                "redelivers it: remove retry_topics (or use stream mode)",
            )
        if self.ack == "manual":
            raise bad(
                "ack",
                self.ack,
                'mode="queue" acknowledges each record when its handler returns: ack="manual" '
                "is for stream mode",
            )
        if self.batch is not None:
            raise bad(
                "batch",
                self.batch,
                'mode="queue" runs one record per call (each is acknowledged on its own): '
                "batch handlers are for stream mode",
            )

    def _check_inbox(
        self, bad: Callable[[str, object, str], ConfigError], connection: str | None, kind: str
    ) -> None:
        """What the inbox does not support yet is refused here, in one line each, rather than
        run without its guarantee."""
        if self.inbox is None:
            raise bad(
                connection or "func",
                kind,
                "a psycopg connection parameter needs an inbox: "
                "@app.handler(..., inbox=PostgresInbox(url)) (kafkaworker.postgres)",
            )
        if not callable(getattr(self.inbox, "open", None)):
            raise bad("inbox", self.inbox, "a kafkaworker.postgres.PostgresInbox(url)")
        if self.is_async and kind == "Connection":
            raise bad(
                connection or "func",
                kind,
                "an async def handler takes a psycopg.AsyncConnection (a psycopg.Connection "
                "would block the event loop)",
            )
        if not self.is_async and kind == "AsyncConnection":
            raise bad(
                connection or "func",
                kind,
                "a def handler takes a psycopg.Connection (psycopg.AsyncConnection is for "
                "async def handlers)",
            )
        if self.ack == "manual":
            # Not "yet": the row commits when the handler returns, before the ack it deferred.
            raise bad(
                "ack",
                self.ack,
                "an inbox records the message when the handler returns, so a message not "
                "acked yet that comes again (a crash, a rebalance) would be finished without "
                "the work the ack waited for, and a nack's retry would be a duplicate: do the "
                'work in the handler\'s transaction (ack="auto"), or hand it on through the '
                "outbox",
            )
        unsupported = (
            ("mode", self.mode, self.mode == "queue", "queue mode (share groups)"),
            (
                "output",
                self.output,
                self.output is not None,
                "outputs (the return value would be produced outside the database "
                "transaction; the outbox will do this)",
            ),
            (
                "processing_guarantee",
                self.processing_guarantee,
                self.processing_guarantee == "exactly_once",
                "processing_guarantee='exactly_once' (a Kafka transaction and the database's "
                "cannot commit as one; the inbox is the database's exactly-once)",
            ),
        )
        for option, value, used, what in unsupported:
            if used:
                raise bad(option, value, f"{what} cannot have an inbox yet")

    def value_codec(self, runtime_codecs: Mapping[str, Codec] | None = None) -> Codec:
        """The codec of the handler's values (without model validation).

        A codec named in RUNTIME_CODECS ("avro") comes from `runtime_codecs`, built by the
        runner (it needs the Schema Registry client).
        """
        if isinstance(self.codec, str) and self.codec in (runtime_codecs or {}):
            codec = (runtime_codecs or {})[self.codec]
        else:
            codec = get_codec(self.codec)
        # A codec that depends on the handler (a Schema Registry codec: the Protobuf message
        # class of its signature, a start-up check of the registry) binds to it here.
        bind = getattr(codec, "for_handler", None)
        return bind(self) if bind is not None else codec

    def call(self) -> Callable[[Message[Any]], Any]:
        """How the runtime calls the handler: with the Message, or with its validated value."""
        func = self.func
        if self.takes_value:
            return lambda msg: func(msg.value)
        return func

    def call_with_connection(self) -> Callable[[Message[Any], Any], Any]:
        """The call of a handler with an inbox: `call(msg, connection)`, the connection passed
        as the handler's psycopg.Connection parameter (when it has one)."""
        func, name, plain = self.func, self.connection, self.call()
        if name is None:
            return lambda msg, _connection: plain(msg)
        if self.takes_value:
            return lambda msg, connection: func(msg.value, **{name: connection})
        return lambda msg, connection: func(msg, **{name: connection})

    def replace(self, **changes: Any) -> HandlerSpec:
        """A copy with `changes` applied (None values ignored), validated again."""
        known = {f.name for f in dataclasses.fields(self) if f.init}
        for option in changes:
            if option not in known:
                raise ConfigError(f"handler {self.name!r}: unknown option {option!r}")
        given = {k: v for k, v in changes.items() if v is not None}
        if self.ordering_defaulted and "ordering" not in given:
            given["ordering"] = None  # the default of the (maybe new) mode
        if self.guarantee_defaulted and "processing_guarantee" not in given:
            given["processing_guarantee"] = None  # still the default (the app-wide setting's)
        return dataclasses.replace(self, **given)

    def describe(self) -> dict[str, Any]:
        """What `kafkaworker routes` shows (and prints as JSON): None where unset."""
        codec = self.codec if isinstance(self.codec, str) else type(self.codec).__name__
        return {
            "name": self.name,
            "mode": self.mode,
            "topics": list(self.topics),
            "group": self.group,
            "concurrency": self.concurrency,
            "ordering": self.ordering,
            "retries": self.retries,
            "dlq": self.dlq,
            "retry_topics": list(self.retry_topics),
            "output": self.output,
            "codec": codec,
            "batch": (
                {"max_size": self.batch.max_size, "max_wait": self.batch.max_wait}
                if self.batch is not None
                else None
            ),
            "ack": self.ack,
            "processing_guarantee": self.processing_guarantee,
        }


def _payload_model(
    func: Callable[..., Any], *, batch: bool = False
) -> tuple[type[BaseModel] | None, bool]:
    """(model, takes_value) from the first parameter's annotation.

    `def h(order: Order)` gets the validated Order; `def h(msg: Message[Order])` gets a
    Message whose value is validated as Order; anything else gets a plain Message.
    """
    try:
        parameter = next(iter(inspect.signature(func).parameters.values()))
    except (StopIteration, TypeError, ValueError):
        return None, False
    try:
        hints = get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable forward references: no typing then
        return None, False
    annotation = hints.get(parameter.name)
    if batch:  # list[Message[Model]]: each message's value is validated as Model
        (annotation,) = get_args(annotation) or (None,)
        if get_origin(annotation) is Message:
            (argument,) = get_args(annotation) or (None,)
            if isinstance(argument, type) and issubclass(argument, BaseModel):
                return argument, False
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, True
    if is_protobuf_message(annotation):
        return None, True  # the codec decodes into the class itself: nothing to validate
    if get_origin(annotation) is Message:
        (argument,) = get_args(annotation) or (None,)
        if isinstance(argument, type) and issubclass(argument, BaseModel):
            return argument, False
    return None, False


def is_protobuf_message(annotation: Any) -> bool:
    """A generated Protobuf message class (without importing protobuf, an optional extra)."""
    if not isinstance(annotation, type):
        return False
    return any(
        base.__module__.startswith("google.protobuf") and base.__name__ == "Message"
        for base in annotation.__mro__
    )


def is_async_callable(func: Callable[..., Any]) -> bool:
    """An async def function, or an object whose __call__ is one (functools.partial of one
    too: inspect unwraps it)."""
    return any(
        inspect.iscoroutinefunction(target)
        for target in (func, getattr(func, "__call__", None))  # noqa: B004 - the method itself
    )


def _is_async_generator(func: Callable[..., Any]) -> bool:
    return any(
        inspect.isasyncgenfunction(target)
        for target in (func, getattr(func, "__call__", None))  # noqa: B004 - the method itself
    )


def _check_signature(name: str, func: Callable[..., Any], connection: str | None = None) -> None:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # builtins and C callables: trust them
    try:
        signature.bind(object(), **({connection: object()} if connection else {}))
    except TypeError:
        also = f" and its {connection!r} connection" if connection else ""
        raise ConfigError(
            f"handler {name!r}: {func!r} must accept exactly one argument (the Message){also}, "
            f"but its signature is {signature}"
        ) from None


def check_exactly_once_settings(spec: HandlerSpec, settings: Settings) -> None:
    """Refuse, in one line, the settings that would break an exactly_once handler's
    transactions (librdkafka's transactional producer needs idempotence and acks=all; its
    transactional.id is the runtime's, see runtime/poll/transactions.py)."""
    where = f"handler {spec.name!r} (processing_guarantee='exactly_once')"
    producer = settings.kafka.producer
    consumer = settings.kafka.consumer
    if "transactional.id" in producer:
        raise ConfigError(
            f"{where}: remove kafka.producer.transactional.id; the runtime gives each "
            "handler and member its own (group.handler.member)"
        )
    if str(producer.get("enable.idempotence", True)).lower() in ("false", "0"):
        raise ConfigError(
            f"{where}: kafka.producer.enable.idempotence=false breaks transactions "
            "(a transactional producer is idempotent): remove it"
        )
    if str(producer.get("acks", "all")).lower() not in ("all", "-1"):
        raise ConfigError(
            f"{where}: kafka.producer.acks={producer['acks']!r}: transactions need acks=all"
        )
    if str(consumer.get("isolation.level", "read_committed")) != "read_committed":
        raise ConfigError(
            f"{where}: kafka.consumer.isolation.level must be read_committed: an aborted "
            "transaction's records must never be handled"
        )
    if str(consumer.get("enable.auto.commit", False)).lower() in ("true", "1"):
        raise ConfigError(
            f"{where}: remove kafka.consumer.enable.auto.commit: offsets commit inside the "
            "transactions, never on their own"
        )


def _connection_parameter(func: Callable[..., Any]) -> tuple[str | None, str]:
    """The parameter (after the first) annotated with a psycopg connection, and which class
    ("Connection" or "AsyncConnection"); (None, "") when there is none. Read from the
    annotations without importing psycopg, an optional extra."""
    try:
        parameters = list(inspect.signature(func).parameters.values())[1:]
        hints = get_type_hints(func)
    except Exception:  # noqa: BLE001 - no signature, or unresolvable annotations: none
        return None, ""
    for parameter in parameters:
        annotation = hints.get(parameter.name)
        annotation = get_origin(annotation) or annotation  # psycopg.Connection[TupleRow]
        module = getattr(annotation, "__module__", "") or ""
        kind = getattr(annotation, "__name__", "")
        if module.split(".")[0] == "psycopg" and kind in ("Connection", "AsyncConnection"):
            return parameter.name, kind
    return None, ""


def resolve_specs(app: App, settings: Settings, only: Sequence[str] = ()) -> list[HandlerSpec]:
    """The app's handlers with settings.handlers.<name> applied, limited to `only`."""
    handlers = app.handlers
    known = ", ".join(handlers) or "(none)"
    for name in settings.handlers:
        if name not in handlers:
            raise ConfigError(
                f"settings handlers.{name}: app {app.name!r} has no handler "
                f"{name!r}; its handlers are: {known}"
            )
    for name in only:
        if name not in handlers:
            raise ConfigError(
                f"--only {name}: app {app.name!r} has no such handler; its handlers are: {known}"
            )
    specs = []
    for name, declared in handlers.items():
        if only and name not in only:
            continue
        spec = declared
        override = settings.handlers.get(name)
        if override is not None:
            # circuit_breaker is a runtime setting, read by the HandlerRuntime: no spec field.
            changes = override.model_dump(
                exclude_none=True, exclude={"backoff", "circuit_breaker", "batch"}
            )
            if override.batch is not None:
                if spec.batch is None:
                    raise ConfigError(
                        f"settings handlers.{name}.batch: handler {name!r} is not a batch "
                        "handler (it takes one message); remove the batch settings, or declare "
                        "it with @app.handler(..., batch=BatchPolicy(...))"
                    )
                changes["batch"] = dataclasses.replace(
                    spec.batch, **override.batch.model_dump(exclude_none=True)
                )
            if override.backoff is not None:
                changes["backoff"] = Backoff(
                    **{
                        **dataclasses.asdict(spec.backoff),
                        **override.backoff.model_dump(exclude_none=True),
                    }
                )
            spec = spec.replace(**changes)
        app_wide = settings.processing_guarantee
        if app_wide is not None and spec.guarantee_defaulted:
            # The app-wide setting is the default of handlers that declare none; a handler's
            # own declaration, and handlers.<name>.processing_guarantee, win over it.
            spec = spec.replace(processing_guarantee=app_wide)
        if spec.processing_guarantee == "exactly_once":
            check_exactly_once_settings(spec, settings)
        specs.append(spec)
    if not specs:
        raise ConfigError(f"app {app.name!r} has no handlers: declare one with @app.handler(...)")
    modes: dict[str, HandlerSpec] = {}
    for spec in specs:
        group = spec.group or app.name
        other = modes.setdefault(group, spec)
        if other.mode != spec.mode:
            raise ConfigError(
                f"handlers {other.name!r} ({other.mode} mode) and {spec.name!r} ({spec.mode} "
                f"mode) both use group {group!r}: a consumer group and a share group cannot "
                "have one name; give one of them group=..."
            )
    return specs
