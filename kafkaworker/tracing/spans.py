"""The spans: `process {topic}` (CONSUMER) around a handler's work on a message or a batch,
`send {topic}` (PRODUCER) around every record written, each injecting its context into the
record's headers.

A process span covers one delivery of a message to a handler: every attempt of it here (each
failed attempt is an `exception` event on the span, with its number and the policy's
decision), the outputs it produced and the retry or DLQ record written for it, whose send
spans are its children. A message that fails for good (dead-lettered, sent to a retry topic,
rejected) ends its span with `error.type` and an error status; one that succeeds at a retry
does not. A delivery from a retry topic is a new process span, the child of the retry
record's send span: the trace goes on.

The runtime (execute/core.py, execute/batches.py) starts and ends the spans; while one is
open its context is the current one, in the worker thread or in the event loop's task that
runs the handler, so that what the handler does (its log lines, its own spans, its sends)
joins the trace.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from kafkaworker.message import Message
from kafkaworker.tracing import conventions as sc
from kafkaworker.tracing.carrier import extract, inject
from kafkaworker.tracing.meters import MessagingMeters
from kafkaworker.version import VERSION

_SCOPE = "kafkaworker"
_EMPTY = Context()
_STATUS_MAX = 512  # characters of an error's message in a span's status
_PROCESSING = otel_context.create_key("kafkaworker.processing")


def tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """kafkaworker's tracer, from `provider` (tests) or the global TracerProvider (a proxy
    until one is set)."""
    return trace.get_tracer(_SCOPE, VERSION, tracer_provider=provider)


def _drops_unsampled_parents(
    provider: trace.TracerProvider | None, *, remote: bool
) -> Callable[[], int] | None:
    """The SDK's span id generator when its sampler drops every span whose parent (remote:
    a record's producer; else a span of this process) is not sampled: ParentBased's default,
    the `parentbased_*` samplers of OTEL_TRACES_SAMPLER. None for any other provider or
    sampler, whose decision only the SDK can make."""
    provider = provider or trace.get_tracer_provider()
    sampler = getattr(provider, "sampler", None)
    if not isinstance(sampler, ParentBased):
        return None
    # ParentBased keeps its delegates in private attributes; a version that renames them
    # makes this None: the SDK decides, as before.
    delegate = "_remote_parent_not_sampled" if remote else "_local_parent_not_sampled"
    if getattr(sampler, delegate, None) is not ALWAYS_OFF:
        return None
    generator = getattr(provider, "id_generator", None)
    return getattr(generator, "generate_span_id", None)


class _Unsampled:
    """Spans the SDK would drop, made without it: for a parent that is not sampled, when the
    SDK's sampler is sure to drop its children (_drops_unsampled_parents), a non-recording
    span in the parent's trace with a span id of its own, which is what start_span returns
    and what the context written into outputs carries. The SDK's start_span costs 46,600
    instructions for it (callgrind: the sampler's decision, objects for a span nobody sees);
    this 15,100. Looked up at the first span: the SDK is set up after the handlers are
    built."""

    __slots__ = ("_new_span_id", "_provider")

    def __init__(self, provider: trace.TracerProvider | None) -> None:
        self._provider = provider
        # By whether the parent is remote: the SDK's span id generator, or None.
        self._new_span_id: dict[bool, Callable[[], int] | None] = {}

    def child_of(self, parent: SpanContext) -> Span | None:
        """The child span of `parent` when it is dropped for sure; None: the SDK decides."""
        if parent.trace_flags.sampled or not parent.is_valid:
            return None
        remote = parent.is_remote
        try:
            new_span_id = self._new_span_id[remote]
        except KeyError:
            new_span_id = self._new_span_id[remote] = _drops_unsampled_parents(
                self._provider, remote=remote
            )
        if new_span_id is None:
            return None
        flags = TraceFlags(parent.trace_flags & TraceFlags.RANDOM_TRACE_ID)
        return NonRecordingSpan(
            SpanContext(parent.trace_id, new_span_id(), False, flags, parent.trace_state)
        )


class _Names:
    """Spans of one operation: the name and the attributes given at the start (the sampler
    sees them) per topic, built once per topic (a client has few)."""

    def __init__(self, operation: str, static: dict[str, Any]) -> None:
        self.operation = operation
        self.static: dict[str, Any] = {
            sc.SYSTEM: sc.KAFKA,
            sc.OPERATION_NAME: operation,
            sc.OPERATION_TYPE: operation,
            **static,
        }
        self._topics: dict[str, tuple[str, dict[str, Any]]] = {}

    def __call__(self, topic: str) -> tuple[str, dict[str, Any]]:
        found = self._topics.get(topic)
        if found is None:
            found = self._topics[topic] = (
                f"{self.operation} {topic}",
                {**self.static, sc.DESTINATION: topic},
            )
        return found


class Processing:
    """An open process span: the span, the token of its context attached, when it started,
    and (for the metrics) its attributes and the error type it ended with."""

    __slots__ = ("attributes", "error_type", "span", "started", "token")

    def __init__(self, span: Span, attributes: dict[str, Any]) -> None:
        self.span = span
        self.attributes = attributes
        self.started = time.monotonic()
        self.error_type: str | None = None
        self.token: object = None


class ProcessSpans:
    """A handler's process spans. `link`: a message's span starts a new trace with a link to
    the producer's context, instead of being its child (trace_parent="link")."""

    def __init__(
        self,
        *,
        handler: str,
        group: str,
        client_id: str,
        link: bool = False,
        batch_links: int = 128,
        meters: MessagingMeters | None = None,
        provider: trace.TracerProvider | None = None,
    ) -> None:
        self._tracer = tracer(provider)
        self._handler = handler
        self._link = link
        self._batch_links = batch_links
        self._meters = meters
        self._topic = _Names(
            sc.PROCESS, {sc.CONSUMER_GROUP: group, sc.CLIENT_ID: client_id, sc.HANDLER: handler}
        )
        self._unsampled = _Unsampled(provider)

    def start(self, msg: Message[Any]) -> Processing:
        """Open the span of one message's delivery and make it the current one."""
        record = msg.record
        name, attributes = self._topic(record.topic())  # type: ignore[arg-type]
        headers = msg.headers
        # A record without headers carries no context: nothing to extract (a fifth of the
        # span's cost when sampled out, measured).
        carried = extract(headers) if headers else _EMPTY
        if self._link:
            remote = trace.get_current_span(carried).get_span_context()
            links = (Link(remote),) if remote.is_valid else ()
            parent = trace.set_span_in_context(trace.INVALID_SPAN, carried)  # baggage kept
            span = self._tracer.start_span(
                name, parent, SpanKind.CONSUMER, attributes, links, record_exception=False
            )
        else:
            dropped = (
                self._unsampled.child_of(trace.get_current_span(carried).get_span_context())
                if headers
                else None
            )
            span = dropped or self._tracer.start_span(
                name, carried, SpanKind.CONSUMER, attributes, record_exception=False
            )
        if span.is_recording():
            # Set once sampled in: the sampler decides on the topic's attributes alone.
            per_message: dict[str, Any] = {
                sc.PARTITION: str(record.partition()),
                sc.OFFSET: msg.offset,
            }
            key = sc.text_key(record.key())
            if key is not None:
                per_message[sc.KEY] = key
            if record.value() is None:
                per_message[sc.TOMBSTONE] = True
            span.set_attributes(per_message)
        return self._open(span, attributes, carried, 1)

    def _open(
        self, span: Span, attributes: dict[str, Any], carried: Context, messages: int
    ) -> Processing:
        processing = Processing(span, attributes)
        current = trace.set_span_in_context(span, carried)
        meters = self._meters
        if meters is not None:
            meters.consumed.add(messages, attributes)
            # Where failed() finds it, for the error type of the duration's measurement.
            current = otel_context.set_value(_PROCESSING, processing, current)
        processing.token = otel_context.attach(current)
        return processing

    @contextlib.contextmanager
    def processing(self, msg: Message[Any]) -> Iterator[Processing]:
        """start() and end() around a block (a tool's, not the runtime's: its generators
        cannot use a with block across their yields)."""
        processing = self.start(msg)
        try:
            yield processing
        finally:
            self.end(processing)

    def start_batch(self, messages: Sequence[Message[Any]]) -> Processing:
        """Open the span of a batch handler's call: a new trace, linked to each message's
        context (at most tracing.batch_links of them), as the conventions have it for
        batches; the current one until it ends."""
        topics = {m.topic for m in messages}
        attributes = {**self._topic.static, sc.BATCH_COUNT: len(messages)}
        name = sc.PROCESS
        if len(topics) == 1:
            (topic,) = topics
            name, static = self._topic(topic)
            attributes.update(static)
            partitions = {m.partition for m in messages}
            if len(partitions) == 1:
                attributes[sc.PARTITION] = str(next(iter(partitions)))
        links: list[Link] = []
        for msg in messages:
            if len(links) >= self._batch_links:
                break
            headers = msg.headers
            if not headers:
                continue
            remote = trace.get_current_span(extract(headers)).get_span_context()
            if remote.is_valid:
                links.append(Link(remote, {sc.OFFSET: msg.offset}))
        span = self._tracer.start_span(
            name, _EMPTY, SpanKind.CONSUMER, attributes, links, record_exception=False
        )
        processing = self._open(span, attributes, _EMPTY, len(messages))
        # A metric's attributes stay few: no per-batch count.
        processing.attributes = {k: v for k, v in attributes.items() if k != sc.BATCH_COUNT}
        return processing

    def end(self, processing: Processing) -> None:
        """Close the span, giving the current context back."""
        span = processing.span
        try:
            otel_context.detach(processing.token)  # type: ignore[arg-type]
        finally:
            meters = self._meters
            if meters is not None:
                attributes = processing.attributes
                if processing.error_type is not None:
                    attributes = {**attributes, sc.ERROR_TYPE: processing.error_type}
                meters.process_duration.record(time.monotonic() - processing.started, attributes)
            span.end()

    def failed(
        self, error: BaseException, error_type: str, *, attempt: int, decision: str, final: bool
    ) -> None:
        """A handler call failed under the current process span: an exception event with the
        attempt's number and the decision; when the decision settles the message (a retry
        topic, the DLQ, a rejection, a skip on exhaustion), the span's error.type and an error
        status as well."""
        if final and self._meters is not None:
            processing = otel_context.get_value(_PROCESSING)
            if isinstance(processing, Processing):
                processing.error_type = error_type
        span = trace.get_current_span()
        if not span.is_recording():
            return
        span.record_exception(error, {sc.ATTEMPT: attempt, sc.DECISION: decision})
        if final:
            span.set_attribute(sc.ERROR_TYPE, error_type)
            span.set_status(Status(StatusCode.ERROR, f"{error_type}: {error}"[:_STATUS_MAX]))


class Sending:
    """An open send span, ended when the broker acknowledges the record (or refuses it)."""

    __slots__ = ("attributes", "span", "started")

    def __init__(self, span: Span, started: float, attributes: dict[str, Any]) -> None:
        self.span = span
        self.started = started
        self.attributes = attributes


class SendSpans:
    """A producer's send spans: each record written (outputs, DLQ and retry records,
    app.producer.send*) gets a `send {topic}` span, a child of the current context (the
    process span of the message being handled, or the caller's own), and carries its context
    in its headers."""

    def __init__(
        self,
        *,
        client_id: str,
        meters: MessagingMeters | None = None,
        provider: trace.TracerProvider | None = None,
    ) -> None:
        self._tracer = tracer(provider)
        self._meters = meters
        self._topic = _Names(sc.SEND, {sc.CLIENT_ID: client_id})
        self._unsampled = _Unsampled(provider)

    def start(
        self,
        topic: str,
        key: bytes | str | None,
        headers: Sequence[tuple[str, Any]],
        *,
        tombstone: bool,
        links: Sequence[Link] = (),
    ) -> tuple[Sending, list[Any]]:
        """Open a send span for a record to `topic`; the record's headers with its context."""
        name, attributes = self._topic(topic)
        span = (
            None if links else self._unsampled.child_of(trace.get_current_span().get_span_context())
        ) or self._tracer.start_span(
            name, None, SpanKind.PRODUCER, attributes, links, record_exception=False
        )
        if span.is_recording():
            key_text = sc.text_key(key)
            if key_text is not None:
                span.set_attribute(sc.KEY, key_text)
            if tombstone:
                span.set_attribute(sc.TOMBSTONE, True)
        written = inject(headers, trace.set_span_in_context(span))
        return Sending(span, time.monotonic(), attributes), written

    def delivered(self, sending: Sending, partition: int, offset: int) -> None:
        span = sending.span
        if span.is_recording():
            span.set_attributes({sc.PARTITION: str(partition), sc.OFFSET: offset})
        span.end()
        self._measure(sending, None)

    def failed(self, sending: Sending, error_type: str, message: str) -> None:
        """The record was not written (refused, timed out, could not be queued)."""
        span = sending.span
        if span.is_recording():
            span.set_attribute(sc.ERROR_TYPE, error_type)
            span.set_status(Status(StatusCode.ERROR, message[:_STATUS_MAX]))
        span.end()
        self._measure(sending, error_type)

    def _measure(self, sending: Sending, error_type: str | None) -> None:
        meters = self._meters
        if meters is None:
            return
        attributes = sending.attributes
        if error_type is not None:
            attributes = {**attributes, sc.ERROR_TYPE: error_type}
        meters.sent.add(1, attributes)
        meters.operation_duration.record(time.monotonic() - sending.started, attributes)


class TransactionSpans:
    """An exactly_once handler's spans (runtime/poll/transactions.py). Its records are held
    on the worker and produced later by the poll thread's transaction, so:

    - a record's `send {topic}` span starts when its message's call holds it, on the worker,
      a child of the message's process span (its context goes into the record's headers
      there), and ends when the transactional producer reports the record's delivery;
    - each transaction is a span of its own on the poll thread, `commit` (CLIENT, operation
      type `settle`), renamed `abort` with `error.type` when it is aborted; it carries the
      number of offsets and records it commits and links to the send spans of its records
      (at most `links`), which is how an APM gets from a message's trace to the transaction
      that made its writes visible. A root span: a transaction commits many messages'
      offsets, of as many traces.
    """

    def __init__(
        self,
        *,
        handler: str,
        group: str,
        client_id: str,
        links: int = 128,
        meters: MessagingMeters | None = None,
        provider: trace.TracerProvider | None = None,
    ) -> None:
        self.sends = SendSpans(client_id=client_id, meters=meters, provider=provider)
        self._tracer = tracer(provider)
        self._links = links
        self._attributes: dict[str, Any] = {
            sc.SYSTEM: sc.KAFKA,
            sc.OPERATION_NAME: sc.COMMIT,
            sc.OPERATION_TYPE: sc.SETTLE,
            sc.CONSUMER_GROUP: group,
            sc.CLIENT_ID: client_id,
            sc.HANDLER: handler,
        }

    def start_commit(self, offsets: int, records: Sequence[Sending | None]) -> Span:
        """Open the span of one transaction: `offsets` partitions' positions, `records` the
        open send spans of the records it produces (None: held without tracing)."""
        links: list[Link] = []
        for sending in records:
            if len(links) >= self._links:
                break
            if sending is not None:
                context = sending.span.get_span_context()
                if context.is_valid:
                    links.append(Link(context))
        attributes = {
            **self._attributes,
            sc.TRANSACTION_OFFSETS: offsets,
            sc.TRANSACTION_RECORDS: len(records),
        }
        return self._tracer.start_span(
            sc.COMMIT, _EMPTY, SpanKind.CLIENT, attributes, links, record_exception=False
        )

    @staticmethod
    def aborted(span: Span, error_type: str, message: str) -> None:
        if span.is_recording():
            span.update_name(sc.ABORT)
            span.set_attributes({sc.OPERATION_NAME: sc.ABORT, sc.ERROR_TYPE: error_type})
            span.set_status(Status(StatusCode.ERROR, message[:_STATUS_MAX]))
        span.end()
