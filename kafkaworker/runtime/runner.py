"""Runner: one per process. One HandlerRuntime per handler, signals, exit codes.

Exit codes: 0 after a graceful shutdown; 1 when a worker failed or start-up was refused;
128 + signal number when a second signal cut the shutdown short.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from kafkaworker import tracing
from kafkaworker.errors import StartupError
from kafkaworker.handlers import HandlerSpec, resolve_specs
from kafkaworker.observability import logging as kw_logging
from kafkaworker.observability.dashboard import Dashboard
from kafkaworker.observability.health import Health, evaluate
from kafkaworker.observability.metrics import MULTIPROC_ENV, Metrics
from kafkaworker.observability.server import MetricsServer
from kafkaworker.ops.admin import KafkaAdmin
from kafkaworker.runtime.compose import AppRuntime, KafkaSources
from kafkaworker.runtime.failures.retrytopics import RetryRoutes
from kafkaworker.runtime.handler_runtime import HandlerRuntime
from kafkaworker.runtime.status import ProcessStatus, StatusFiles
from kafkaworker.serialization import RUNTIME_CODECS, Codec
from kafkaworker.settings import Settings, settings_for_run

if TYPE_CHECKING:
    from kafkaworker.app import App

log = structlog.get_logger("kafkaworker.runner")


class Runner:
    def __init__(self, app: App, settings: Settings, specs: list[HandlerSpec]) -> None:
        self.app = app
        self.settings = settings
        self.specs = specs
        self.handlers: list[HandlerRuntime] = []
        self.metrics = Metrics()
        self.metrics_server: MetricsServer | None = None
        self._stop = threading.Event()
        self._signals = 0
        self.started = threading.Event()
        # The dashboard's view of this process (observability/dashboard/, runtime/status.py).
        self.status = ProcessStatus(app.name, self.metrics, self._state)

    @classmethod
    def from_app(
        cls,
        app: App,
        *,
        settings_path: str | os.PathLike[str] | None = None,
        only: Sequence[str] = (),
        overrides: Mapping[str, Any] | None = None,
    ) -> Runner:
        settings = settings_for_run(app.settings, settings_path, overrides or {})
        return cls(app, settings, resolve_specs(app, settings, only))

    # -- running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Start every handler, block until a signal (or `stop()`), shut down; the exit code."""
        kw_logging.configure(self.settings.log_level, self.settings.log_format)
        # Up before start-up, so that probes see "not ready" rather than "refused" meanwhile.
        port = self.settings.metrics.port
        dashboard_settings = self.settings.dashboard
        with contextlib.ExitStack() as stack:
            if self.settings.tracing.enabled:
                # Before the app's producer and handlers exist, flushed after they stopped.
                stack.enter_context(
                    tracing.sdk(self.app.name, metrics=self.settings.tracing.metrics)
                )
            if port is not None:
                dashboard = None
                if dashboard_settings.enabled:
                    dashboard = Dashboard(
                        dashboard_settings,
                        self.metrics.registry,
                        lambda: [self.status.status()],
                        control=self.status.control,
                        asyncapi=self._asyncapi,
                    )
                self.metrics_server = stack.enter_context(
                    MetricsServer(
                        self.settings.metrics.host,
                        port,
                        self.metrics.registry,
                        self.health,
                        dashboard,
                    )
                )
            status_dir = os.environ.get(MULTIPROC_ENV)
            if status_dir and dashboard_settings.enabled:
                # A supervised child: the supervisor's dashboard reads this process's status.
                stack.enter_context(StatusFiles(status_dir, self.status))
            if self.settings.fleet.enabled:
                # Reports to the fleet's topics, and its commands (kafkaworker/fleet/): a thread
                # and clients of its own, stopped after the handlers, with a final report.
                from kafkaworker.fleet.reporter import FleetReporter  # noqa: PLC0415 - opt-in

                reporter = FleetReporter(
                    self.settings, self.status, self.metrics.registry, stop=self.stop
                )
                stack.enter_context(reporter)
            return self._run()

    def _asyncapi(self) -> str:
        """The app's AsyncAPI document as this run runs it (made when the dashboard asks)."""
        from kafkaworker.asyncapi import build, render  # noqa: PLC0415 - on request only

        return render(build(self.app, self.settings, only=[spec.name for spec in self.specs]))

    def health(self) -> Health:
        return evaluate(self.metrics.registry, stale_after=stale_after(self.settings))

    def _state(self) -> str:
        """starting / ready / draining, as the dashboard shows the process."""
        if self._stop.is_set():
            return "draining"
        return "ready" if self.started.is_set() and self.health().ready else "starting"

    def _run(self) -> int:
        self.preflight()
        runtime = AppRuntime(
            self.app,
            self.settings,
            self.specs,
            sources=KafkaSources(self.app.name, self.settings),
            metrics=self.metrics,
            codecs=self._runtime_codecs(),
        )
        with runtime:
            self.handlers = runtime.handlers
            # The dashboard reads the recent failures: on the metrics port, or from a supervised
            # child's status file.
            # The fleet's errors topic reads them too.
            shown = self.settings.fleet.enabled or (
                self.settings.dashboard.enabled
                and (self.settings.metrics.port is not None or bool(os.environ.get(MULTIPROC_ENV)))
            )
            self.status.attach(self.handlers, failures=shown)
            self._install_signal_handlers()
            runtime.start()
            log.info(
                "worker started",
                app=self.app.name,
                handlers=[s.name for s in self.specs],
                bootstrap=self.settings.kafka.bootstrap_servers,
                pid=os.getpid(),
                **(self.metrics_server.urls() if self.metrics_server is not None else {}),
            )
            self.started.set()
            with tuned_gc(self.settings.tune_gc):
                failed = False
                while not self._stop.wait(0.2):
                    if any(not h.alive for h in self.handlers):
                        failed = True
                        break
                stopping = time.monotonic()
                runtime.stop()
        failed = failed or runtime.shutdown_failed
        errors = [h for h in self.handlers if h.error is not None or h.alive]
        unfinished = {
            h.spec.name: h.poller.unfinished_at_exit
            for h in self.handlers
            if h.poller.unfinished_at_exit
        }
        log.info(
            "worker stopped",
            app=self.app.name,
            seconds=round(time.monotonic() - stopping, 2),
            # Messages in flight when shutdown_timeout ran out (not committed: delivered again).
            unfinished=sum(sum(counts.values()) for counts in unfinished.values()),
            **({"unfinished_by_partition": unfinished} if unfinished else {}),
        )
        return 1 if failed or errors else 0

    def _runtime_codecs(self) -> dict[str, Codec]:
        """Codecs named in handlers that need the running app: "avro", "json_schema" and
        "protobuf", on one Schema Registry client (kafkaworker.serialization.registry)."""
        users = {
            spec.name: spec.codec
            for spec in self.specs
            if isinstance(spec.codec, str) and spec.codec in RUNTIME_CODECS
        }
        if not users:
            return {}
        from kafkaworker.serialization.named import runtime_codecs  # noqa: PLC0415 - extra

        registry = self.settings.schema_registry
        return dict(
            runtime_codecs(
                users,
                self.app.schema_registry,
                registry.url if registry is not None else None,
                registry.config if registry is not None else None,
            )
        )

    def stop(self) -> None:
        """Ask for a graceful shutdown (what the first SIGTERM/SIGINT does)."""
        self._stop.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled there; the embedding program owns them

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals == 1:
                log.info(
                    "shutting down: finishing in-flight messages (signal again to exit at once)",
                    signal=signal.Signals(signum).name,
                    timeout=self.settings.shutdown_timeout,
                )
                self._stop.set()
            else:
                # Exit without committing anything more: unfinished work is redelivered.
                os.write(2, b"second signal: exiting at once without committing\n")
                os._exit(128 + signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # -- start-up checks ---------------------------------------------------------------------

    def preflight(self) -> None:
        """Fail fast, in one line, on an unreachable cluster or a topic that does not exist;
        create missing DLQ and retry topics. Every wait is sliced (clients.py): Ctrl+C while
        the brokers do not answer yet exits at once, not after startup_timeout."""
        bootstrap = self.settings.kafka.bootstrap_servers
        with KafkaAdmin(self.settings) as admin:
            metadata = admin.metadata(tell_waiting=True)

            def exists(topic: str) -> bool:
                found = metadata.topics.get(topic)
                return found is not None and found.error is None

            # What the ACLs allow on every topic involved, asked in one request.
            admin.describe_access(
                topic
                for spec in self.specs
                for topic in (
                    *spec.topics,
                    *(s.topic for s in RetryRoutes(spec.topics, spec.retry_topics).stages),
                    *(t for t in (spec.dlq, spec.output) if t is not None),
                )
            )
            for spec in self.specs:
                role = f"source of handler {spec.name!r}"
                for topic in spec.topics:
                    # A topic this client may not describe is left out of the metadata too.
                    if not exists(topic) and admin.topic_operations(topic) is None:
                        raise StartupError(
                            f"topic {topic!r} (handler {spec.name!r}) does not exist on "
                            f"{bootstrap}: create it (kafkaworker topics create {topic} "
                            "--partitions N), or fix the handler's topics"
                        )
                    admin.require("topic", topic, "READ", role)
                group = spec.group or self.app.name
                admin.require("group", group, "READ", f"group of handler {spec.name!r}")
            if not all(exists(t) for spec in self.specs for t in spec.topics):
                # Describable but not in the metadata yet (created a moment ago, no leader).
                metadata = admin.metadata()
            for spec in self.specs:
                sizes = {topic: _partition_count(metadata, topic) for topic in spec.topics}
                wanted = [  # (topic, kind, partitions when created)
                    (stage.topic, "retry topic", sizes[stage.source])
                    for stage in RetryRoutes(spec.topics, spec.retry_topics).stages
                ]
                if spec.dlq is not None:
                    dlq_size = self.settings.dead_letter.partitions or max(sizes.values())
                    wanted.append((spec.dlq, "dead-letter topic", dlq_size))
                if (
                    spec.output is not None
                    and not exists(spec.output)
                    and admin.topic_operations(spec.output) is None
                ):
                    raise StartupError(
                        f"output topic {spec.output!r} (handler {spec.name!r}) does not exist "
                        f"on {bootstrap}: create it, or fix the handler's output"
                    )
                if spec.output is not None:
                    admin.require("topic", spec.output, "WRITE", f"output of handler {spec.name!r}")
                for topic, kind, partitions in wanted:
                    if not exists(topic) and admin.topic_operations(topic) is None:
                        if not self.settings.dead_letter.create_topics:
                            raise StartupError(
                                f"{kind} {topic!r} (handler {spec.name!r}) does not exist on "
                                f"{bootstrap}: create it, or set dead_letter.create_topics: true"
                            )
                        self._create_topic(admin, topic, partitions, spec.name)
                    # Found missing at the first failure instead, it would stall a partition.
                    role = f"{kind} of handler {spec.name!r}"
                    admin.require("topic", topic, "WRITE", role)
                    if kind == "retry topic":  # the handler consumes it too
                        admin.require("topic", topic, "READ", role)

    def _create_topic(self, admin: KafkaAdmin, topic: str, partitions: int, handler: str) -> None:
        try:
            created = admin.create_topic(
                topic, partitions, self.settings.dead_letter.replication_factor, exist_ok=True
            )
        except StartupError as exc:
            raise StartupError(
                f"{exc} (handler {handler!r}); create it yourself, or fix "
                "dead_letter.partitions/replication_factor"
            ) from None
        if created:  # else another worker of the group created it first
            log.info("created topic", topic=topic, partitions=partitions, handler=handler)


def _partition_count(metadata: Any, topic: str) -> int:
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise StartupError(
            f"topic {topic!r} has no partitions with a leader yet: try again in a moment"
        )
    return len(found.partitions)


def stale_after(settings: Settings) -> float:
    """How long a poll thread may go without a turn before it counts as hung: a revoke waits
    up to revoke_timeout for in-flight messages, inside the rebalance callback."""
    return max(settings.revoke_timeout, settings.shutdown_timeout) + 30.0


# The young generation is collected after this many net allocations of container objects
# (Python: 700). A worker allocates a Message per record; most are freed by reference counting
# soon after, so a rarer young collection finds fewer of them still alive to walk.
_GC_YOUNG_THRESHOLD = 10_000


@contextlib.contextmanager
def tuned_gc(enabled: bool) -> Iterator[None]:
    """While the worker runs: start-up's objects frozen, young collections rarer; restored after.

    Frozen objects (modules, settings, handler specs, librdkafka's wrappers) are never garbage;
    without freezing, each full collection walks all of them again. Cycles are still collected.
    """
    if not enabled or gc.get_freeze_count():
        # Frozen already: by another Runner in this process (whose exit restores Python's
        # settings) or by the application itself. Its objects are not ours to unfreeze.
        yield
        return
    previous = gc.get_threshold()
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(max(previous[0], _GC_YOUNG_THRESHOLD), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
