"""`kafkaworker outbox relay MODULE:APP`: the app's outbox relay alone, without its handlers
(a relay process beside web servers that add to the outbox, for one)."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from kafkaworker.cli.common import SETTINGS_OPTION, load_app, one_line, settings_from
from kafkaworker.errors import StartupError


@click.group()
def outbox() -> None:
    """The transactional outbox (app.outbox(PostgresOutbox(...)))."""


@outbox.command()
@click.argument("app_ref", metavar="MODULE:APP")
@SETTINGS_OPTION
def relay(app_ref: str, settings_path: str | None) -> None:
    """Publish the outbox of MODULE:APP until SIGTERM or SIGINT: active while it holds the
    table's lock, standing by (and taking over within seconds) while another relay does."""
    stopped = threading.Event()
    with one_line():
        app = load_app(app_ref)
        declared = app.declared_outbox
        if declared is None:
            raise StartupError(
                f"app {app.name!r} declares no outbox: app.outbox(PostgresOutbox(url))"
            )
        running = declared.relay(settings_from(settings_path, app), client_id=f"{app.name}.outbox")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    # Ours while the relay runs (the command group's would end the process at once): a signal
    # stops it, flushing what is in flight.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    running.start()
    click.echo(f"outbox relay of {app.name!r} running; SIGTERM or Ctrl+C stops it", err=True)
    while not stopped.wait(1.0):
        pass
    running.stop()
