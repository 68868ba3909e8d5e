"""`kafkaworker run` and `kafkaworker routes`: run an app, and show what would run."""

from __future__ import annotations

import sys
from typing import Any

import click

from kafkaworker.app import App
from kafkaworker.cli.common import (
    JSON_OPTION,
    SETTINGS_OPTION,
    echo_json,
    load_app,
    one_line,
    settings_from,
    table,
)
from kafkaworker.errors import KafkaWorkerError
from kafkaworker.handlers import resolve_specs
from kafkaworker.settings import settings_for_run


@click.command()
@click.argument("app_ref", metavar="MODULE:APP")
@SETTINGS_OPTION
@click.option("--only", multiple=True, metavar="HANDLER", help="run only this handler (repeatable)")
@click.option(
    "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="worker processes, each its own group member (for CPU-bound handlers)",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=1, max=65535),
    help="serve /metrics, /healthz and /readyz on this port (default: metrics.port, off)",
)
# A child of the supervisor: the supervisor serves the metrics of all its children.
@click.option("--child", is_flag=True, hidden=True)
def run(  # noqa: PLR0917 - click passes every option by position
    app_ref: str,
    settings_path: str | None,
    only: tuple[str, ...],
    log_level: str | None,
    processes: int,
    metrics_port: int | None,
    child: bool,
) -> None:
    """Run the handlers of MODULE:APP until SIGTERM or SIGINT."""
    overrides: dict[str, Any] = {"log_level": log_level.upper()} if log_level else {}
    if metrics_port is not None:
        overrides["metrics"] = {"port": metrics_port}
    if child:
        overrides["metrics"] = {"port": None}
    try:
        app = load_app(app_ref)  # fail here, once, rather than in every child
        if processes > 1:
            sys.exit(_supervise(app, app_ref, settings_path, only, log_level, processes, overrides))
        code = app.run(settings_path=settings_path, only=only, overrides=overrides)
    except KafkaWorkerError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


def _supervise(  # noqa: PLR0917
    app: App,
    app_ref: str,
    settings_path: str | None,
    only: tuple[str, ...],
    log_level: str | None,
    processes: int,
    overrides: dict[str, Any],
) -> int:
    from kafkaworker.observability import logging as kw_logging  # noqa: PLC0415
    from kafkaworker.runtime.processes.supervisor import Supervisor  # noqa: PLC0415
    from kafkaworker.runtime.runner import stale_after  # noqa: PLC0415

    settings = settings_for_run(app.settings, settings_path, overrides)
    command = [sys.executable, "-m", "kafkaworker", "run", app_ref, "--child"]
    if settings_path:
        command += ["--settings", settings_path]
    for name in only:
        command += ["--only", name]
    if log_level:
        command += ["--log-level", log_level]
    kw_logging.configure(settings.log_level, settings.log_format)
    return Supervisor(
        command,
        processes,
        metrics_host=settings.metrics.host,
        metrics_port=settings.metrics.port,
        stale_after=stale_after(settings),
        dashboard=settings.dashboard,
    ).run()


@click.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option("--only", multiple=True, metavar="HANDLER", help="only this handler (repeatable)")
@SETTINGS_OPTION
@JSON_OPTION
def routes(app_ref: str, only: tuple[str, ...], settings_path: str | None, as_json: bool) -> None:
    """List the handlers of MODULE:APP as they will run: mode (when some handler is in queue
    mode), topics, group, concurrency, ordering, retries, DLQ, output, codec, the processing
    guarantee (when some handler is exactly_once) (settings file and environment applied)."""

    with one_line():
        app = load_app(app_ref)
        specs = resolve_specs(app, settings_from(settings_path, app), only)
    rows = [{**spec.describe(), "group": spec.group or app.name} for spec in specs]
    if as_json:
        echo_json(rows)
        return
    shown = [_shown(row) for row in rows]
    columns = ["name", "topics", "group", "concurrency", "ordering", "retries", "dlq"]
    if any(r["mode"] == "queue" for r in rows):
        columns.insert(1, "mode")  # stream (a consumer group) or queue (a share group)
    # Only where some handler has one: a column of dashes would only cost width.
    columns += [c for c in ("retry_topics", "output", "batch") if any(r[c] for r in shown)]
    columns += ["codec"]
    if any(r["processing_guarantee"] == "exactly_once" for r in rows):
        columns += ["guarantee"]
    click.echo(table(shown, columns, right=["concurrency", "retries"]))


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    """A routes row as table cells."""
    batch = row["batch"]
    return {
        **row,
        "topics": ",".join(row["topics"]),
        "retry_topics": ",".join(f"{d:g}s" for d in row["retry_topics"]) or None,
        "batch": f"{batch['max_size']}/{batch['max_wait']:g}s" if batch else None,
        "guarantee": row["processing_guarantee"],
    }
