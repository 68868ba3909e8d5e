"""An app running against a real broker in a background thread, for tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kafkaworker.app import App
from kafkaworker.handlers import resolve_specs
from kafkaworker.runtime.runner import Runner
from kafkaworker.settings import Settings

# The kafka_worker fixture: kafka_worker(app, settings=None) -> the running Runner.
WorkerFactory = Callable[..., Runner]


class WorkerFailedError(AssertionError):
    """The app did not start, did not stop in time, or exited with a non-zero code."""


@contextmanager
def running(app: App, settings: Settings, *, stop_timeout: float = 60.0) -> Iterator[Runner]:
    """Run `app` in a background thread (started once it has joined its groups' start-up),
    stop it gracefully on exit, and fail if it did not exit 0."""
    runner = Runner(app, settings, resolve_specs(app, settings))
    result: list[int] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(runner.run())
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            failure.append(exc)
            runner.started.set()

    thread = threading.Thread(target=target, name=f"kafkaworker-{app.name}", daemon=True)
    thread.start()
    runner.started.wait(stop_timeout)
    if failure:
        raise failure[0]
    try:
        yield runner
    finally:
        runner.stop()
        thread.join(stop_timeout)
        if thread.is_alive():
            raise WorkerFailedError(f"app {app.name!r} did not stop within {stop_timeout:g}s")
        if failure:
            raise failure[0]
        if result != [0]:
            raise WorkerFailedError(f"app {app.name!r} exited with {result[0] if result else None}")
