"""ClusterWatch: the consumer groups of the fleet as the cluster itself tells them.

Reports say what each process thinks (its committed position, its cached log end); a process
that is gone says nothing, and a group with no live member has no reports at all. So the
dashboard also asks the brokers, every REFRESH seconds, for each group the reports name: its
state and members, and per partition the committed offset, the log end, the lag and the time
lag (KafkaAdmin.group: the committed offsets, the log ends, and the first waiting record's
timestamp read by a consumer that joins no group). One thread ("kw-fleet-cluster") owns the
admin client and closes it in close().
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from kafkaworker.errors import KafkaWorkerError
from kafkaworker.ops import KafkaAdmin
from kafkaworker.owned_thread import OwnedThread
from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.fleet")

REFRESH = 10.0


class ClusterWatch:
    def __init__(
        self,
        settings: Settings,
        groups: Callable[[], list[str]],
        *,
        refresh: float = REFRESH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._groups = groups
        self._refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._found: dict[str, dict[str, Any]] = {}
        self._wake = threading.Event()
        self._thread = OwnedThread(self._run, "kw-fleet-cluster")

    def start(self) -> ClusterWatch:
        self._thread.start()
        return self

    def close(self) -> None:
        self._wake.set()
        self._thread.stop(self._settings.startup_timeout + 15)

    def refresh(self) -> None:
        """Ask again now (a command changed what the groups do)."""
        self._wake.set()

    def groups(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._found[g] for g in sorted(self._found)]

    def _run(self) -> None:
        admin = KafkaAdmin(self._settings)
        try:
            while not self._thread.stopping.is_set():
                wanted = self._groups()
                for group in wanted:
                    if self._thread.stopping.is_set():
                        break
                    self._describe(admin, group)
                with self._lock:
                    for old in set(self._found) - set(wanted):
                        del self._found[old]
                self._wake.wait(self._refresh if wanted else 1.0)  # none known yet: soon
                self._wake.clear()
        finally:
            admin.close()

    def _describe(self, admin: KafkaAdmin, group: str) -> None:
        try:
            found = dataclasses.asdict(admin.group(group))
            found["lag"] = sum(p["lag"] for p in found["partitions"])
            found["error"] = None
        except KafkaWorkerError as exc:
            found = _unknown(group, str(exc))
        except Exception as exc:  # noqa: BLE001 - shown on the page, tried again next time
            log.warning("describing a group failed", group=group, error=str(exc))
            found = _unknown(group, f"{type(exc).__name__}: {exc}")
        found["time"] = self._clock()
        with self._lock:
            self._found[group] = found


def _unknown(group: str, error: str) -> dict[str, Any]:
    return {
        "group": group,
        "state": "Unknown",
        "members": [],
        "partitions": [],
        "lag": None,
        "error": error,
    }
