"""The decorator: registration, validation at import time, one-line errors."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from kafkaworker import App, Backoff, ConfigError, Message


def handler(msg: Message[Any]) -> None:
    pass


def test_decorator_returns_the_function_unchanged_and_registers_it() -> None:
    app = App("svc")
    decorated = app.handler("orders", concurrency=3, ordering="key", retries=2, dlq="orders.dlq")(
        handler
    )
    assert decorated is handler
    spec = app.handlers["handler"]
    assert spec.topics == ("orders",)
    assert (spec.concurrency, spec.ordering, spec.retries, spec.dlq) == (3, "key", 2, "orders.dlq")
    assert spec.backoff == Backoff()
    assert (spec.codec, spec.ack, spec.group) == ("json", "auto", None)


def test_a_list_of_topics_and_an_explicit_name() -> None:
    app = App("svc")
    app.handler(["a", "b"], name="both")(handler)
    assert app.handlers["both"].topics == ("a", "b")


def test_two_handlers_with_one_name_fail_at_import_naming_it() -> None:
    app = App("svc")
    app.handler("a")(handler)
    with pytest.raises(ConfigError, match="handler 'handler' is registered twice"):
        app.handler("b")(handler)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"concurrency": 0}, "concurrency=0"),
        ({"concurrency": True}, "concurrency=True"),
        ({"ordering": "random"}, "ordering='random'"),
        ({"retries": -1}, "retries=-1"),
        ({"ack": "later"}, "ack='later'"),
        ({"codec": "yaml"}, "codec='yaml'"),
        ({"dlq": "orders"}, "dlq='orders'"),
        ({"dlq": "bad topic"}, "dlq='bad topic'"),
        ({"backoff": 5}, "backoff=5"),
        ({"group": ""}, "group=''"),
        ({"on_exhausted": "drop"}, "on_exhausted='drop'"),
        ({"retry_on": (ValueError, int)}, "retry_on=(<class 'ValueError'>, <class 'int'>)"),
    ],
)
def test_invalid_options_name_the_handler_and_the_option(
    options: dict[str, Any], option: str
) -> None:
    app = App("svc")
    with pytest.raises(ConfigError) as error:
        app.handler("orders", **options)(handler)
    message = str(error.value)
    assert message.startswith(f"handler 'handler': {option} is invalid: ")
    assert "\n" not in message


def test_retry_on_takes_one_class_or_a_tuple() -> None:
    app = App("svc")
    app.handler("a", name="one", retry_on=TimeoutError)(handler)
    app.handler("b", name="two", retry_on=(TimeoutError, ConnectionError))(handler)
    assert app.handlers["one"].retry_on == (TimeoutError,)
    assert app.handlers["two"].retry_on == (TimeoutError, ConnectionError)


def test_invalid_topic_name() -> None:
    with pytest.raises(ConfigError, match=r"topics='a/b' is invalid"):
        App("svc").handler("a/b")(handler)


def test_a_handler_must_take_one_argument() -> None:
    def no_args() -> None:
        pass

    with pytest.raises(ConfigError, match="must accept exactly one argument"):
        App("svc").handler("orders")(no_args)


def test_backoff_is_validated() -> None:
    with pytest.raises(ConfigError, match="jitter='half'"):
        Backoff(jitter="half")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"max=0\.1"):
        Backoff(initial=1, max=0.1)


def test_app_name_must_be_a_non_empty_string() -> None:
    with pytest.raises(ConfigError, match="App name ''"):
        App("")


async def async_handler(msg: Message[Any]) -> None:
    pass


class AsyncCallable:
    async def __call__(self, msg: Message[Any]) -> None:
        pass


async def async_generator(msg: Message[Any]) -> Any:
    yield msg


@pytest.mark.parametrize(
    ("func", "name"),
    [
        (async_handler, "async_handler"),
        (functools.partial(async_handler), "partial"),
        (AsyncCallable(), "callable"),
    ],
)
def test_async_handlers_are_recognised_and_default_to_100_coroutines(func: Any, name: str) -> None:
    app = App("svc")
    app.handler("orders", name=name)(func)
    spec = app.handlers[name]
    assert spec.is_async
    assert spec.concurrency == 100  # coroutines in flight
    app.handler("orders", name="plain")(handler)
    assert (app.handlers["plain"].is_async, app.handlers["plain"].concurrency) == (False, 8)


def test_an_async_generator_is_refused_in_one_line() -> None:
    app = App("svc")
    with pytest.raises(ConfigError) as raised:
        app.handler("orders")(async_generator)
    message = str(raised.value)
    assert "\n" not in message
    assert "handler 'async_generator'" in message
    assert "return the outputs as a list" in message
    assert app.handlers == {}


def test_decorator_without_parentheses_is_a_one_line_error_showing_the_right_form() -> None:
    app = App("svc")
    with pytest.raises(ConfigError) as raised:
        app.handler(handler)  # type: ignore[arg-type]  # `@app.handler` with no arguments
    message = str(raised.value)
    assert "\n" not in message
    assert "'handler'" in message
    assert '@app.handler("orders")' in message
    assert app.handlers == {}
