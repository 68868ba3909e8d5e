"""Batch handlers: `def store(messages: list[Message])`, under the same failure policy.

Outcomes are per message. The messages that failed are decided one by one (failures/policy.py):
those with a final decision (retry topic, DLQ, skip) are settled; the rest run again together
after the wait the policy gives them together. A fatal error raised for a batch of several
(one undecodable record, say) cannot say which message it is about: the policy has them run
again one at a time, so that only the bad ones are settled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import structlog

from kafkaworker.errors import BatchFailures, Skip
from kafkaworker.handlers import HandlerSpec
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.execute.attempts import Attempts
from kafkaworker.runtime.execute.outputs import error_type
from kafkaworker.runtime.failures.policy import Action
from kafkaworker.runtime.handoff import Completion, Dispatched, Outcome

if TYPE_CHECKING:
    from kafkaworker.tracing.spans import ProcessSpans

log = structlog.get_logger("kafkaworker.pool")

NOT_FINISHED, FINISHED = Outcome.NOT_FINISHED, Outcome.FINISHED

# Yields steps (and an async handler's awaitables); returns an outcome per message and the
# seconds spent in handler calls.
BatchSteps = Generator[Any, Any, tuple[list[Outcome], float]]


class BatchRunner:
    def __init__(
        self,
        spec: HandlerSpec,
        attempts: Attempts,
        *,
        metrics: Metrics,
        spans: ProcessSpans | None = None,
    ) -> None:
        assert spec.batch is not None
        self.spec = spec
        # With tracing on, each batch runs in a process span linking its messages.
        self._spans = spans
        self.max_size = spec.batch.max_size
        self._attempts = attempts
        # The call of the batch handler with a list; the composition root wraps it in the
        # inbox's transaction when the handler has one.
        self.call: Callable[[list[Dispatched]], Any] = spec.func
        self._handler_seconds = metrics.handler_seconds.labels(spec.name)
        self._handler_failures = metrics.handler_failures.labels(spec.name)
        self._skipped = metrics.skipped.labels(spec.name)
        # Mean handler time per message of the latest batch (see Executor).
        self.recent_handler_seconds = 0.0

    def run(
        self, chunk: list[Dispatched], report: Callable[[list[Completion]], None]
    ) -> Generator[Any, Any, None]:
        """Run `chunk` in batches of at most max_size; report every message's outcome.

        Reported messages are taken off the front of `chunk`: when the executor closes the
        generator early (a cancelled coroutine), what is left in it was not reported, and the
        executor reports it."""
        while chunk:
            batch = chunk[: self.max_size]
            done = [Completion(m.lease, [m.offset], NOT_FINISHED) for m in batch if m.lease.revoked]
            live = [m for m in batch if not m.lease.revoked]
            if live:
                execute = self.execute if self._spans is None else self._traced
                try:
                    outcomes, seconds = yield from execute(live)
                except Exception:  # not GeneratorExit: closed early, nothing is reported here
                    log.exception("failed to run the batch handler", handler=self.spec.name)
                    outcomes, seconds = [NOT_FINISHED] * len(live), 0.0
                self._handler_seconds.inc(seconds)
                self.recent_handler_seconds = seconds / len(live)
                done += [
                    Completion(m.lease, [m.offset], o) for m, o in zip(live, outcomes, strict=True)
                ]
            report(done)
            del chunk[: len(batch)]

    def execute(self, batch: list[Dispatched]) -> BatchSteps:
        """Run the batch handler until every message is settled; an outcome per message."""
        attempts = self._attempts
        policy = attempts.policy
        outcome: dict[int, Outcome] = {}
        remaining = batch
        failures = 0
        seconds = 0.0
        while remaining:
            # Only messages of a revoked partition are given up (with ordering="none" a batch
            # mixes partitions): the next owner gets them.
            for msg in remaining:
                if msg.lease.revoked:
                    outcome[id(msg)] = NOT_FINISHED
            remaining = [m for m in remaining if id(m) not in outcome]
            if not remaining:
                break
            started = time.monotonic()
            error: BaseException | None = None
            try:
                # A copy: the handler may change its list.
                yield from attempts.calling(self.call, list(remaining))
            except GeneratorExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - the failure policy decides
                error = exc
            seconds += time.monotonic() - started
            errors = self._errors(remaining, error)
            for msg in remaining:
                if msg not in errors:
                    outcome[id(msg)] = FINISHED
            remaining = [m for m in remaining if m in errors]
            if not remaining:
                break
            self._handler_failures.inc(len(remaining))
            failures += 1
            decisions = {id(m): policy.decide(m.topic, errors[m], failures) for m in remaining}
            for msg in remaining:
                attempts.observe(msg, errors[msg], decisions[id(msg)])
            if policy.one_at_a_time(list(decisions.values())):
                for msg in remaining:  # find the bad ones: one message at a time
                    [outcome[id(msg)]], called = yield from self.execute([msg])
                    seconds += called
                break
            for msg in remaining:
                decision = decisions[id(msg)]
                if decision.final:
                    outcome[id(msg)] = yield from attempts.settle(msg, errors[msg], decision)
            remaining = [m for m in remaining if id(m) not in outcome]
            if not remaining:
                break
            decision = policy.together([decisions[id(m)] for m in remaining])
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
            if (yield from attempts.wait(decision, {m.lease for m in remaining})):
                continue  # the revoked check at the top settles them
            for msg in remaining:
                msg.attempt += 1
        return [outcome.get(id(m), NOT_FINISHED) for m in batch], seconds

    def _traced(self, batch: list[Dispatched]) -> BatchSteps:
        """`execute` in the batch's process span, the current context meanwhile."""
        spans = self._spans
        assert spans is not None
        processing = spans.start_batch(batch)
        try:
            return (yield from self.execute(batch))
        finally:
            spans.end(processing)

    def _errors(
        self, batch: list[Dispatched], error: BaseException | None
    ) -> dict[Dispatched, BaseException]:
        """The messages that failed in a call of the batch handler, with their errors."""
        if error is None:
            return {}
        if isinstance(error, Skip):
            log.info("batch skipped", reason=str(error), handler=self.spec.name, size=len(batch))
            self._skipped.inc(len(batch))
            return {}
        if isinstance(error, BatchFailures):
            members = set(batch)
            unknown = [key for key in error.failures if key not in members]
            if unknown or not error.failures:
                # Keys that are not this batch's messages cannot say which ones failed:
                # count every message as failed rather than finish a failed one.
                log.error(
                    "BatchFailures must map messages of the batch to errors; "
                    "treating the whole batch as failed",
                    handler=self.spec.name,
                    unknown_keys=len(unknown),
                )
                return dict.fromkeys(batch, error)
            return {m: e for m, e in error.failures.items() if m in members}
        return dict.fromkeys(batch, error)
