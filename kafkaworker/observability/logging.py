"""structlog setup: key-value lines for people (console) or JSON for log pipelines."""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import structlog


def _add_pid(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    # With --processes N, lines from N processes interleave: say which one wrote each.
    event.setdefault("pid", os.getpid())
    return event


def configure(level: str = "INFO", fmt: Literal["console", "json"] = "console") -> None:
    """Route kafkaworker's and librdkafka's logs to stderr at `level`."""
    numeric = logging.getLevelName(level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_pid,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            # The console renderer formats exceptions itself; JSON wants them as a string.
            *([structlog.processors.format_exc_info] if fmt == "json" else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # librdkafka logs through the stdlib logger handed to each client.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    rdkafka = logging.getLogger("kafkaworker.librdkafka")
    rdkafka.handlers[:] = [handler]
    # librdkafka's INFO is chatty (every broker disconnect); show it only when debugging.
    rdkafka.setLevel(logging.DEBUG if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
    rdkafka.propagate = False
