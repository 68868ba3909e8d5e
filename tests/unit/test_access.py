"""Access checks over a connection that answers as a loading group coordinator does: not at
all (a cluster just started), or with a refusal of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kafkaworker import clients
from kafkaworker.errors import StartupError
from kafkaworker.ops.access import Access
from kafkaworker.settings import Settings


class _Watch:
    def __init__(self, failure: StartupError | None = None) -> None:
        self.failure = failure
        self.last = failure


class _Silent:
    """An AdminConnection whose requests time out, as ops/connection.py reports it."""

    timeout = 60.0

    def __init__(self, failure: StartupError | None = None) -> None:
        self.watch = _Watch(failure)
        self.settings = Settings()

    def wait(self, request: Callable[[], Any]) -> Any:
        raise self.watch.failure or clients.unreachable(
            self.settings, self.timeout, TimeoutError("no answer")
        )


def test_a_group_coordinator_that_does_not_answer_does_not_stop_the_start() -> None:
    access = Access(_Silent())  # type: ignore[arg-type]
    # READ on the group is not refused: the consumer finds out when it joins.
    access.require("group", "orders-service", "READ", "group of handler 'h'")
    assert "READ" in access.group_operations("orders-service")


def test_a_refusal_seen_while_waiting_is_still_the_line_to_stop_with() -> None:
    refused = StartupError("Kafka refused the credentials (SASL authentication failed)")
    access = Access(_Silent(refused))  # type: ignore[arg-type]
    with pytest.raises(StartupError, match="refused the credentials"):
        access.group_operations("orders-service")
