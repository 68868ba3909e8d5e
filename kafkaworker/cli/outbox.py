"""`kafkaworker outbox relay MODULE:APP`: the app's outbox relay alone, without its handlers
(a relay process beside web servers that add to the outbox, for one)."""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType

import click

from kafkaworker.cli.common import SETTINGS_OPTION, load_app, one_line, settings_from
from kafkaworker.errors import StartupError
from kafkaworker.observability.metrics import Metrics
from kafkaworker.observability.server import MetricsServer


@click.group()
def outbox() -> None:
    """The transactional outbox (app.outbox(PostgresOutbox(...)))."""


@outbox.command()
@click.argument("app_ref", metavar="MODULE:APP")
@SETTINGS_OPTION
@click.option(
    "--metrics-port",
    type=click.IntRange(min=1, max=65535),
    help="serve /metrics, /healthz and /readyz on this port (default: metrics.port, off)",
)
def relay(app_ref: str, settings_path: str | None, metrics_port: int | None) -> None:
    """Publish the outbox of MODULE:APP until SIGTERM or SIGINT: active while it holds the
    table's lock, standing by (and taking over within seconds) while another relay does."""
    stopped = threading.Event()
    metrics = Metrics()
    with contextlib.ExitStack() as stack, one_line():
        app = load_app(app_ref)
        declared = app.declared_outbox
        if declared is None:
            raise StartupError(
                f"app {app.name!r} declares no outbox: app.outbox(PostgresOutbox(url))"
            )
        settings = settings_from(settings_path, app)
        running = declared.relay(settings, client_id=f"{app.name}.outbox", metrics=metrics)
        port = metrics_port or settings.metrics.port
        if port is not None:
            # As `run` serves them (the relay's kafkaworker_outbox_* metrics, its health), on
            # a server this command owns and closes after the relay stopped (LIFO).
            server = stack.enter_context(
                MetricsServer(settings.metrics.host, port, metrics.registry, running.health)
            )
            click.echo(f"metrics on {server.urls()['metrics']}", err=True)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stopped.set()

        # Ours while the relay runs (the command group's would end the process at once): a
        # signal stops it, flushing what is in flight.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
        running.start()
        stack.callback(running.stop)
        click.echo(f"outbox relay of {app.name!r} running; SIGTERM or Ctrl+C stops it", err=True)
        while not stopped.wait(1.0):
            pass
