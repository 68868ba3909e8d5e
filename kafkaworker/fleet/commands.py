"""Operator commands to the fleet, and what they add up to (pure).

A command is a JSON record on the commands topic, signed with an HMAC-SHA256 of the shared
`dashboard.token`: the dashboard signs what an operator with the token asked for, and a
worker obeys only what its own token verifies, so write access to the topic is not enough to
command the fleet. Commands are kept (audit_retention) and every worker reads them all from
the start; what they add up to (`Standing`) is a state, not a list of things to do:

- pause / resume: a partition, or a whole topic, held by every process that owns it, now and
  after any rebalance, and by processes that start later. Optionally only for one app or
  consumer group. The latest command (by the time it was issued) for a partition wins, a
  topic's included: resuming a topic resumes its partitions paused one by one before it.
- open_breaker / close_breaker: a handler's breaker, held open (or closed) likewise.
- quiet: a process stops taking new work (every partition it owns held), finishes what is in
  flight and stays in its group; stop: it shuts down gracefully. Both name one process, by
  its report's id, which no process started later has.

A command whose broker timestamp is far from its `issued_at` is ignored: an old signed command
written again (replayed by someone who copied it) is not obeyed.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson

from kafkaworker.errors import ConfigError

ACTIONS = ("pause", "resume", "open_breaker", "close_breaker", "quiet", "stop")
# How far a command's broker timestamp may be from when it says it was issued (clocks of the
# dashboard's host and the broker, plus the produce's own time).
MAX_SKEW = 60.0


class CommandRefused(ConfigError):  # noqa: N818 - what happened
    """A command that cannot be carried out as given: the message says what to change."""


@dataclass(frozen=True)
class Target:
    """What a command applies to; None: any."""

    app: str | None = None
    group: str | None = None
    handler: str | None = None
    topic: str | None = None
    partition: int | None = None
    process: str | None = None  # a report's id

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Command:
    action: str
    target: Target
    operator: str | None
    client: str | None
    issued_at: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action,
            "target": self.target.as_json(),
            "operator": self.operator,
            "client": self.client,
            "issued_at": self.issued_at,
        }

    def describe(self) -> str:
        """One line: the action and its target, as the log and the page say it."""
        parts = [f"{k}={v}" for k, v in self.target.as_json().items()]
        return f"{self.action} {' '.join(parts)}".strip()


def command(
    action: str, body: dict[str, Any], *, operator: str | None, client: str | None, issued_at: float
) -> Command:
    """A command from a request body (the dashboard's POST); CommandRefused in one line."""
    if action not in ACTIONS:
        raise CommandRefused(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    known = {f.name for f in fields(Target)}
    unknown = sorted(set(body) - known)
    if unknown:
        raise CommandRefused(
            f"unknown target field {unknown[0]!r}: the fields are {', '.join(sorted(known))}"
        )
    for name in ("app", "group", "handler", "topic", "process"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise CommandRefused(f"{name} must be a non-empty string")
    partition = body.get("partition")
    if partition is not None and (
        not isinstance(partition, int) or isinstance(partition, bool) or partition < 0
    ):
        raise CommandRefused("partition must be an integer >= 0")
    target = Target(**{k: body.get(k) for k in known})
    if action in ("pause", "resume") and target.topic is None:
        raise CommandRefused(f"{action} needs a topic (and a partition, or the whole topic)")
    if partition is not None and target.topic is None:
        raise CommandRefused("a partition needs its topic")
    if action in ("open_breaker", "close_breaker") and target.handler is None:
        raise CommandRefused(f"{action} needs a handler (and an app, or every app's)")
    if action in ("quiet", "stop") and target.process is None:
        raise CommandRefused(f"{action} needs a process (its id, as /api/fleet shows it)")
    return Command(action, target, operator, client, issued_at)


def sign(command: Command, token: str) -> bytes:
    """The record's value: the command and its signature."""
    body = orjson.dumps(command.as_json(), option=orjson.OPT_SORT_KEYS)
    return orjson.dumps({"command": body.decode(), "signature": _mac(body, token)})


def verify(value: bytes, token: str) -> Command:
    """The command of a record signed with `token`; ValueError when it is not."""
    envelope = orjson.loads(value)
    if not isinstance(envelope, dict) or not isinstance(envelope.get("command"), str):
        raise ValueError("not a kafkaworker command")
    body = envelope["command"].encode()
    # Constant time: the comparison must not tell how much of a forged signature was right.
    if not hmac.compare_digest(str(envelope.get("signature", "")), _mac(body, token)):
        raise ValueError("not signed with this worker's dashboard.token")
    data = orjson.loads(body)
    target = data.get("target") or {}
    return Command(
        action=str(data["action"]),
        target=Target(**{f.name: target.get(f.name) for f in fields(Target)}),
        operator=data.get("operator"),
        client=data.get("client"),
        issued_at=float(data["issued_at"]),
        id=str(data["id"]),
    )


def _mac(body: bytes, token: str) -> str:
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Where:
    """A partition as one process's handler owns it."""

    app: str
    group: str
    handler: str
    topic: str
    partition: int
    process: str


def _matches(target: Target, where: Where) -> bool:
    return (
        (target.app is None or target.app == where.app)
        and (target.group is None or target.group == where.group)
        and (target.handler is None or target.handler == where.handler)
        and (target.topic is None or target.topic == where.topic)
        and (target.partition is None or target.partition == where.partition)
        and (target.process is None or target.process == where.process)
    )


class Standing:
    """What the commands read so far add up to. Not thread-safe: one owner (a worker's
    fleet thread, or a test)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._holds: list[Command] = []  # pause/resume, latest issued last
        self._breakers: list[Command] = []  # open/close, latest issued last
        self._quiet: set[str] = set()
        self.stop_requested = False

    def add(self, command: Command, process: str) -> bool:
        """Fold one command in; False when it was seen already. `process`: this process's id
        (quiet and stop concern it only when they name it)."""
        if command.id in self._seen:
            return False
        self._seen.add(command.id)
        if command.action in ("pause", "resume"):
            _insert(self._holds, command)
        elif command.action in ("open_breaker", "close_breaker"):
            _insert(self._breakers, command)
        elif command.target.process == process:
            if command.action == "quiet":
                self._quiet.add(process)
            else:
                self.stop_requested = True
        return True

    def held(self, where: Where) -> bool:
        """Whether the partition is to be held: quiet, or the latest pause/resume naming it
        (itself or its topic) is a pause."""
        if where.process in self._quiet:
            return True
        for hold in reversed(self._holds):
            if _matches(hold.target, where):
                return hold.action == "pause"
        return False

    def breaker(self, app: str, handler: str) -> Command | None:
        """The latest open/close of the handler's breaker, if any."""
        for found in reversed(self._breakers):
            target = found.target
            if target.handler == handler and target.app in (None, app):
                return found
        return None

    def quiet(self, process: str) -> bool:
        return process in self._quiet

    def holds(self) -> list[dict[str, Any]]:
        """The pauses in force (no later pause or resume names their target or a wider one),
        for the reports and the page."""
        found = []
        for at, hold in enumerate(self._holds):
            later = self._holds[at + 1 :]
            if hold.action == "pause" and not any(_covers(c.target, hold.target) for c in later):
                found.append({"target": hold.target.as_json(), "issued_at": hold.issued_at})
        return found


def _covers(wider: Target, narrower: Target) -> bool:
    """Whether every partition `narrower` names is one `wider` names."""
    return all(
        value is None or value == getattr(narrower, name) for name, value in asdict(wider).items()
    )


def _insert(commands: list[Command], command: Command) -> None:
    """Keep `commands` ordered by issued_at (ties by arrival)."""
    at = len(commands)
    while at > 0 and commands[at - 1].issued_at > command.issued_at:
        at -= 1
    commands.insert(at, command)
