"""structlog setup: key-value lines for people (console) or JSON for log pipelines.

librdkafka's own lines (handed to a stdlib logger by every client, see clients.py) go through
the same processors and renderer: one timestamp format, one level vocabulary, one stream.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Literal

import structlog

from kafkaworker.tracing import current_ids

LIBRDKAFKA_LOGGER = "kafkaworker.librdkafka"


def _add_pid(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    # With --processes N, lines from N processes interleave: say which one wrote each.
    event.setdefault("pid", os.getpid())
    return event


def _add_trace(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    # A line written in a span (a handler's call, with tracing on) says which: the trace_id
    # finds it in the tracing backend, and the trace's log lines by it.
    ids = current_ids()
    if ids is not None:
        event.setdefault("trace_id", ids[0])
        event.setdefault("span_id", ids[1])
    return event


def _librdkafka_fields(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """confluent-kafka logs `"%s [%s] %s" % (facility, client, text)`: kept apart as fields,
    so that a line reads `<text> facility=FAIL client=rdkafka#consumer-1`."""
    record = event.get("_record")
    args = event.pop("positional_args", None)  # ProcessorFormatter(pass_foreign_args=True)
    if isinstance(record, logging.LogRecord) and record.name.startswith(LIBRDKAFKA_LOGGER):
        if isinstance(args, tuple) and len(args) == 3:
            facility, client, text = args
            # "[thrd:main]: " says which librdkafka thread wrote it: noise to a reader.
            text = str(text)
            if text.startswith("[thrd:"):
                text = text.partition("]: ")[2] or text
            event["event"] = text
            event["facility"] = facility
            event["client"] = client
        event["logger"] = "librdkafka"
    return event


def _traceback_at(numeric: int) -> structlog.typing.Processor:
    """A line logged with `traceback_at="debug"` carries its traceback on the console only at
    DEBUG (a dead letter: its file:line is on the line itself); JSON keeps it as a field."""

    def processor(
        logger: object, method: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        if event.pop("traceback_at", None) == "debug" and numeric > logging.DEBUG:
            event.pop("exc_info", None)
        return event

    return processor


_PROCESSORS: list[structlog.typing.Processor] = []


class _Stderr:
    """sys.stderr as it is when a line is written, not when logging was configured. pytest's
    capsys puts a file of its own there for one test and closes it afterwards: a worker that
    logs after it (a fixture stopping it at teardown, its threads meanwhile) would write to
    a closed file. A line that still meets a closed stream goes to the process's own."""

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except ValueError:  # closed meanwhile
            return sys.__stderr__.write(text) if sys.__stderr__ is not None else 0

    def flush(self) -> None:
        with contextlib.suppress(ValueError):
            sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


_STDERR = _Stderr()


def configure(level: str = "INFO", fmt: Literal["console", "json"] = "console") -> None:
    """Route kafkaworker's and librdkafka's logs to stderr at `level`."""
    numeric = logging.getLevelName(level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_pid,
        _add_trace,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Refilled in place: a logger cached on first use keeps the list it was built with, and
    # must follow a later configure() (a second Runner in one process; structlog's
    # capture_logs, which swaps the processors of the list it finds configured).
    _PROCESSORS[:] = [
        *shared,
        structlog.processors.StackInfoRenderer(),
        _traceback_at(numeric if fmt == "console" else logging.DEBUG),
        # The console renderer formats exceptions itself; JSON wants them as a string.
        *([structlog.processors.format_exc_info] if fmt == "json" else []),
        renderer,
    ]
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(_STDERR),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(_STDERR)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, _librdkafka_fields],
            pass_foreign_args=True,
        )
    )
    rdkafka = logging.getLogger(LIBRDKAFKA_LOGGER)
    rdkafka.handlers[:] = [handler]
    # librdkafka's INFO is chatty (every broker disconnect); show it only when debugging.
    rdkafka.setLevel(logging.DEBUG if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
    rdkafka.propagate = False
