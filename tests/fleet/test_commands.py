"""Fleet commands (kafkaworker/fleet/commands.py): the signature a worker checks, the one-line
refusals of a bad command, and what a sequence of commands adds up to (Standing)."""

from __future__ import annotations

import orjson
import pytest

from kafkaworker.fleet.commands import (
    Command,
    CommandRefused,
    Standing,
    Where,
    command,
    sign,
    verify,
)

ME = "orders:host-a:10:aaaa"


def cmd(action: str, at: float, **target: object) -> Command:
    return command(action, dict(target), operator="ann", client="127.0.0.1:1", issued_at=at)


def where(topic: str = "orders", partition: int = 0, **kw: str) -> Where:
    fields = {"app": "orders", "group": "orders", "handler": "h", "process": ME, **kw}
    return Where(topic=topic, partition=partition, **fields)  # type: ignore[arg-type]


def test_a_signed_command_verifies_with_the_same_token_only() -> None:
    issued = cmd("pause", 100.0, topic="orders", partition=3)
    value = sign(issued, "secret")
    assert verify(value, "secret") == issued
    with pytest.raises(ValueError, match=r"not signed with this worker's dashboard\.token"):
        verify(value, "another")
    # A command changed after signing (another partition) is refused too.
    envelope = orjson.loads(value)
    envelope["command"] = envelope["command"].replace('"partition":3', '"partition":4')
    with pytest.raises(ValueError, match="not signed"):
        verify(orjson.dumps(envelope), "secret")
    assert "secret" not in value.decode()


@pytest.mark.parametrize(
    ("action", "body", "message"),
    [
        ("drop", {"topic": "t"}, "unknown action 'drop'"),
        ("pause", {}, "pause needs a topic"),
        ("pause", {"topic": "t", "partition": -1}, "partition must be an integer >= 0"),
        ("pause", {"topic": "t", "partition": True}, "partition must be an integer"),
        ("resume", {"partition": 1}, "resume needs a topic"),
        ("pause", {"topic": "t", "color": "red"}, "unknown target field 'color'"),
        ("open_breaker", {"app": "a"}, "open_breaker needs a handler"),
        ("quiet", {"app": "a"}, "quiet needs a process"),
        ("stop", {"process": ""}, "process must be a non-empty string"),
    ],
)
def test_a_bad_command_is_refused_in_one_line(
    action: str, body: dict[str, object], message: str
) -> None:
    with pytest.raises(CommandRefused, match=message) as refused:
        command(action, body, operator=None, client=None, issued_at=0.0)
    assert "\n" not in str(refused.value)


def test_a_topic_pause_holds_every_partition_until_resumed() -> None:
    standing = Standing()
    assert not standing.held(where())
    standing.add(cmd("pause", 1.0, topic="orders"), ME)
    assert standing.held(where(partition=0)) and standing.held(where(partition=7))
    assert not standing.held(where(topic="payments"))
    standing.add(cmd("resume", 2.0, topic="orders"), ME)
    assert not standing.held(where(partition=7))


def test_the_latest_command_naming_a_partition_wins() -> None:
    standing = Standing()
    standing.add(cmd("pause", 1.0, topic="orders"), ME)
    standing.add(cmd("resume", 2.0, topic="orders", partition=1), ME)  # one partition back
    assert standing.held(where(partition=0)) and not standing.held(where(partition=1))
    standing.add(cmd("pause", 3.0, topic="orders", partition=2), ME)
    standing.add(cmd("resume", 4.0, topic="orders"), ME)  # the topic: all of it
    assert not any(standing.held(where(partition=p)) for p in range(3))
    assert standing.holds() == []


def test_commands_are_ordered_by_when_they_were_issued_not_read() -> None:
    standing = Standing()
    standing.add(cmd("resume", 5.0, topic="orders"), ME)
    standing.add(cmd("pause", 4.0, topic="orders"), ME)  # issued before the resume
    assert not standing.held(where())


def test_a_command_seen_twice_counts_once() -> None:
    standing = Standing()
    pause = cmd("pause", 1.0, topic="orders")
    assert standing.add(pause, ME)
    assert not standing.add(pause, ME)


def test_an_app_or_group_target_holds_only_its_own_partitions() -> None:
    standing = Standing()
    standing.add(cmd("pause", 1.0, topic="orders", group="billing"), ME)
    assert not standing.held(where(group="orders"))
    assert standing.held(where(group="billing"))
    standing.add(cmd("pause", 2.0, topic="orders", app="shipping"), ME)
    assert not standing.held(where(app="orders", group="orders"))
    assert standing.holds() == [
        {"target": {"group": "billing", "topic": "orders"}, "issued_at": 1.0},
        {"target": {"app": "shipping", "topic": "orders"}, "issued_at": 2.0},
    ]


def test_quiet_and_stop_concern_the_process_they_name() -> None:
    standing = Standing()
    standing.add(cmd("quiet", 1.0, process="someone-else"), ME)
    standing.add(cmd("stop", 1.0, process="someone-else"), ME)
    assert not standing.quiet(ME) and not standing.stop_requested
    assert not standing.held(where())
    standing.add(cmd("quiet", 2.0, process=ME), ME)
    assert standing.quiet(ME) and standing.held(where(topic="anything", partition=9))
    standing.add(cmd("stop", 3.0, process=ME), ME)
    assert standing.stop_requested


def test_the_latest_breaker_command_of_a_handler() -> None:
    standing = Standing()
    assert standing.breaker("orders", "h") is None
    opened = cmd("open_breaker", 1.0, handler="h")
    standing.add(opened, ME)
    standing.add(cmd("close_breaker", 2.0, handler="h", app="billing"), ME)
    standing.add(cmd("close_breaker", 3.0, handler="other"), ME)
    assert standing.breaker("orders", "h") == opened
    closed = standing.breaker("billing", "h")
    assert closed is not None and closed.action == "close_breaker"
