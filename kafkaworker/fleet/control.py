"""A worker's side of the fleet's commands: what the commands add up to, carried out here.

`FleetControl.reconcile()` compares the Standing (fleet/commands.py) with this process's
status and asks ProcessStatus for the operator actions that close the gap: the same actions
the worker's own dashboard takes, carried out by the poll threads at their next turn. It runs
on the fleet thread (its owner) when a command arrives and once a second; a partition assigned
after a fleet pause (a rebalance, a process started later) is held from its assignment on:
its poll thread asks `held_at_assignment` before its first fetch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from kafkaworker.fleet.commands import Command, Standing, Where
from kafkaworker.fleet.report import Identity

if TYPE_CHECKING:
    from kafkaworker.runtime.source import Partition
    from kafkaworker.runtime.status import ProcessStatus

log = structlog.get_logger("kafkaworker.fleet")

# How many commands a report lists as carried out here (the latest).
ACKNOWLEDGED = 10


class FleetControl:
    def __init__(self, identity: Identity, status: ProcessStatus, stop: Callable[[], None]) -> None:
        self.identity = identity
        self.standing = Standing()
        self._status = status
        self._stop = stop
        self._stopping = False
        # (handler, topic, partition) -> the assignment (assigned_at) it was held in: a new
        # assignment of the same partition is held again.
        self._held: dict[tuple[str, str, int], float] = {}
        self._breakers: dict[str, str] = {}  # handler -> id of the command carried out
        self.acknowledged: deque[dict[str, Any]] = deque(maxlen=ACKNOWLEDGED)

    def held_at_assignment(self, handler: str, group: str, partition: Partition) -> bool:
        """Whether a partition just assigned to `handler` is held by the commands in force.
        Asked by a poll thread (ProcessStatus.holding): Standing is written on the fleet
        thread only, and a read that races a write is set right by the next reconcile."""
        where = Where(self.identity.app, group, handler, *partition, process=self.identity.id)
        return self.standing.held(where)

    def receive(self, command: Command, status: dict[str, Any] | None) -> None:
        """Fold a command in; with `status` (caught up with the topic), carry it out now."""
        if not self.standing.add(command, self.identity.id):
            return
        if status is None:
            return  # read at start-up: carried out once every earlier command is read
        changes = self.reconcile(status)
        if command.issued_at >= self.identity.started_at:
            self.acknowledged.append(
                {"id": command.id, "action": command.action, "changes": changes}
            )
            log.warning(
                "fleet command",
                command=command.describe(),
                operator=command.operator,
                issued_at=command.issued_at,
                changes=changes,
            )

    def reconcile(self, status: dict[str, Any]) -> int:
        """Carry out what the commands add up to; how many actions that took."""
        changes = self._partitions(status) + self._breakers_of(status)
        if self.standing.stop_requested and not self._stopping:
            self._stopping = True
            log.warning("stopping: asked by a fleet command", process=self.identity.id)
            self._stop()
            changes += 1
        return changes

    def _partitions(self, status: dict[str, Any]) -> int:
        groups = {h["name"]: h.get("group") or self.identity.app for h in status["handlers"]}
        changes = 0
        seen = set()
        for row in status["partitions"]:
            key = (row["handler"], row["topic"], row["partition"])
            seen.add(key)
            where = Where(
                self.identity.app, groups.get(row["handler"], ""), *key, process=self.identity.id
            )
            wanted = self.standing.held(where)
            if wanted and self._held.get(key) != row["assigned_at"]:
                if self._act("pause", *key):
                    self._held[key] = row["assigned_at"]
                    changes += 1
            elif not wanted and key in self._held:
                del self._held[key]
                changes += self._act("resume", *key)
        for gone in set(self._held) - seen:  # revoked: the hold ended with the assignment
            del self._held[gone]
        return changes

    def _breakers_of(self, status: dict[str, Any]) -> int:
        changes = 0
        for handler in status["handlers"]:
            name = handler["name"]
            latest = self.standing.breaker(self.identity.app, name)
            if latest is None or self._breakers.get(name) == latest.id:
                continue
            self._breakers[name] = latest.id  # once, whatever the answer
            if handler.get("breaker", "none") == "none":
                continue  # no breaker here (no DLQ, or disabled, or queue mode)
            changes += self._act(latest.action, name)
        return changes

    def _act(self, action: str, handler: str, topic: str = "", partition: int = -1) -> bool:
        request: dict[str, Any] = {"action": action, "handler": handler}
        if topic:
            request |= {"topic": topic, "partition": partition}
        code, body = self._status.control(request)
        if code >= 400:  # revoked meanwhile, or queue mode: nothing to hold here
            log.info("fleet command not carried out here", **request, **body)
        return code < 400
