"""Batch handlers: `def store(messages: list[Message])`, under the same failure policy.

Outcomes are per message. The messages that failed are decided one by one (failures/policy.py):
those with a final decision (retry topic, DLQ, skip) are settled; the rest run again together
after the backoff (or while the breaker holds them, or stalled). A fatal error raised for a
batch of several (one undecodable record, say) cannot say which message it is about: they are
run again one at a time, so that only the bad ones are settled.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from kafkaworker.errors import BatchFailures, Skip
from kafkaworker.handlers import HandlerSpec
from kafkaworker.message import Message
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.execute.attempts import Attempts
from kafkaworker.runtime.failures.deadletter import error_type
from kafkaworker.runtime.failures.policy import Action, Decision
from kafkaworker.runtime.handoff import Completion, CompletionQueue, Outcome

log = structlog.get_logger("kafkaworker.pool")

NOT_FINISHED, FINISHED = Outcome.NOT_FINISHED, Outcome.FINISHED


class BatchRunner:
    def __init__(
        self,
        spec: HandlerSpec,
        attempts: Attempts,
        completions: CompletionQueue,
        *,
        metrics: Metrics,
    ) -> None:
        assert spec.batch is not None
        self.spec = spec
        self.max_size = spec.batch.max_size
        self._attempts = attempts
        self._completions = completions
        self._handler_seconds = metrics.handler_seconds.labels(spec.name)
        self._handler_failures = metrics.handler_failures.labels(spec.name)
        self._skipped = metrics.skipped.labels(spec.name)
        # Mean handler time per message of the latest batch (see Executor).
        self.recent_handler_seconds = 0.0

    def run(self, chunk: list[Message[Any]]) -> None:
        """Run `chunk` in batches of at most max_size; report every message's outcome."""
        for start in range(0, len(chunk), self.max_size):
            batch = chunk[start : start + self.max_size]
            report = [
                Completion(m._state, [m.offset], NOT_FINISHED) for m in batch if m._state.revoked
            ]
            live = [m for m in batch if not m._state.revoked]
            if live:
                started = time.monotonic()
                try:
                    outcomes = self.execute(live)
                except BaseException:
                    log.exception("failed to run the batch handler", handler=self.spec.name)
                    outcomes = [NOT_FINISHED] * len(live)
                elapsed = time.monotonic() - started
                self._handler_seconds.inc(elapsed)
                self.recent_handler_seconds = elapsed / len(live)
                report += [
                    Completion(m._state, [m.offset], o) for m, o in zip(live, outcomes, strict=True)
                ]
            self._completions.put(report)

    def execute(self, batch: list[Message[Any]]) -> list[Outcome]:
        """Run the batch handler until every message is settled; an outcome per message."""
        attempts = self._attempts
        outcome: dict[int, Outcome] = {}
        remaining = batch
        failures = 0
        while remaining:
            # Only messages of a revoked partition are given up (with ordering="none" a batch
            # mixes partitions): the next owner gets them.
            for msg in remaining:
                if msg._state.revoked:
                    outcome[id(msg)] = NOT_FINISHED
            remaining = [m for m in remaining if id(m) not in outcome]
            if not remaining:
                break
            errors = self._call(remaining)
            for msg in remaining:
                if msg not in errors:
                    outcome[id(msg)] = FINISHED
            remaining = [m for m in remaining if m in errors]
            if not remaining:
                break
            self._handler_failures.inc(len(remaining))
            failures += 1
            decide = attempts.policy.decide
            decisions = {id(m): decide(m.topic, errors[m], failures) for m in remaining}
            if len(remaining) > 1 and all(d.fatal for d in decisions.values()):
                for msg in remaining:  # find the bad ones: one message at a time
                    outcome[id(msg)] = self.execute([msg])[0]
                break
            for msg in remaining:
                decision = decisions[id(msg)]
                if decision.final:
                    outcome[id(msg)] = attempts.settle(
                        msg, errors[msg], decision, before_wait=_nothing
                    )
            remaining = [m for m in remaining if id(m) not in outcome]
            if not remaining:
                break
            decision = _wait_for([decisions[id(m)] for m in remaining])
            first = errors[remaining[0]]
            log.warning(
                "batch handler failed; retrying",
                failed=len(remaining),
                stalled=decision.action is Action.STALL,
                held=decision.action is Action.HOLD,
                error=f"{error_type(first)}: {first}",
                retry_in=round(decision.delay, 3),
                handler=self.spec.name,
            )
            if not attempts.wait(decision, {m._state for m in remaining}):
                continue  # the revoked check at the top settles them
            for msg in remaining:
                msg.attempt += 1
        return [outcome.get(id(m), NOT_FINISHED) for m in batch]

    def _call(self, batch: list[Message[Any]]) -> dict[Message[Any], BaseException]:
        """Call the batch handler; the messages that failed, with their errors."""
        try:
            self.spec.func(list(batch))  # a copy: the handler may change its list
        except Skip as exc:
            log.info("batch skipped", reason=str(exc), handler=self.spec.name, size=len(batch))
            self._skipped.inc(len(batch))
            return {}
        except BatchFailures as exc:
            members = set(batch)
            unknown = [key for key in exc.failures if key not in members]
            if unknown or not exc.failures:
                # Keys that are not this batch's messages cannot say which ones failed:
                # count every message as failed rather than finish a failed one.
                log.error(
                    "BatchFailures must map messages of the batch to errors; "
                    "treating the whole batch as failed",
                    handler=self.spec.name,
                    unknown_keys=len(unknown),
                )
                return dict.fromkeys(batch, exc)
            return dict(exc.failures)
        except BaseException as exc:  # noqa: BLE001 - the failure policy decides
            return dict.fromkeys(batch, exc)
        return {}


def _wait_for(decisions: list[Decision]) -> Decision:
    """How the messages left to run again wait together: held while the breaker is open,
    else stalled if one has nowhere to go, else the first one's backoff."""
    for action in (Action.HOLD, Action.STALL):
        for decision in decisions:
            if decision.action is action:
                return decision
    return decisions[0]


def _nothing() -> None:
    """A batch reports when it is done: nothing to flush before a wait."""
