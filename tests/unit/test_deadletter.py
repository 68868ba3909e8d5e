"""The DLQ record's failure headers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kafkaworker import Message
from kafkaworker.runtime.execute.outputs import TRACEBACK_LIMIT, failure_headers


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:  # noqa: BLE001 - we want it with its traceback
        return caught


def test_headers_name_origin_handler_and_error() -> None:
    msg: Message[Any] = Message(
        "orders",
        None,
        partition=4,
        offset=17,
        attempt=3,
        timestamp=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    )
    headers = dict(failure_headers(msg, group="svc", handler="h", error=raised(KeyError("sku"))))
    assert headers["kw.original.topic"] == b"orders"
    assert headers["kw.original.partition"] == b"4"
    assert headers["kw.original.offset"] == b"17"
    assert headers["kw.original.timestamp"] == b"1767323045678"
    assert headers["kw.attempts"] == b"3"
    assert headers["kw.error.type"] == b"builtins.KeyError"
    assert headers["kw.error.message"] == b"'sku'"
    assert b"KeyError: 'sku'" in headers["kw.error.traceback"]
    assert list(headers)[-1] == "kw.failed_at"


def test_no_timestamp_is_minus_one_and_long_tracebacks_keep_their_tail() -> None:
    msg: Message[Any] = Message("orders", None)
    error = raised(ValueError("x" * (3 * TRACEBACK_LIMIT) + " the end"))
    headers = dict(failure_headers(msg, group="g", handler="h", error=error))
    assert headers["kw.original.timestamp"] == b"-1"
    traceback = headers["kw.error.traceback"]
    assert len(traceback) == TRACEBACK_LIMIT
    assert traceback.startswith(b"...\n")
    assert traceback.rstrip().endswith(b" the end")
