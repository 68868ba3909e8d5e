"""The `kafkaworker` command line: run an app, list its routes."""

from __future__ import annotations

import importlib
import os
import sys
from datetime import UTC, datetime
from typing import Any

import click
import orjson

from kafkaworker import __version__
from kafkaworker import dlq as dlq_tools
from kafkaworker.app import App
from kafkaworker.errors import AppImportError, KafkaWorkerError
from kafkaworker.producer import Producer
from kafkaworker.settings import load_settings, settings_for_run


def load_app(reference: str) -> App:
    """Import `MODULE:APP` (the current directory is importable, as with uvicorn)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise AppImportError(f"{reference!r} is not MODULE:APP (for example myapp:app)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppImportError(
                f"cannot import module {module_name!r} (from {reference!r}): no module named "
                f"{exc.name!r}; run from the directory that holds it, or fix the name"
            ) from None
        raise AppImportError(f"importing {module_name!r} failed: {exc}") from exc
    except KafkaWorkerError:
        raise  # e.g. an invalid handler option: its own message says it all
    except Exception as exc:
        raise AppImportError(
            f"importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    try:
        app: Any = getattr(module, attribute)
    except AttributeError:
        apps = [name for name, value in vars(module).items() if isinstance(value, App)]
        hint = f"it defines: {', '.join(apps)}" if apps else "it defines no App"
        raise AppImportError(
            f"module {module_name!r} has no attribute {attribute!r}; {hint}"
        ) from None
    if not isinstance(app, App):
        raise AppImportError(f"{reference!r} is a {type(app).__name__}, not a kafkaworker.App")
    return app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kafkaworker")
def cli() -> None:
    """Run and operate kafkaworker apps."""


@cli.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option(
    "--settings",
    "settings_path",
    type=click.Path(dir_okay=False),
    help="settings file (default: $KAFKAWORKER_SETTINGS, else ./settings.yaml)",
)
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
    ).run()


@cli.command()
@click.argument("app_ref", metavar="MODULE:APP")
def routes(app_ref: str) -> None:
    """List the handlers of MODULE:APP: topics, group, concurrency, ordering, retries, dlq."""
    try:
        app = load_app(app_ref)
    except KafkaWorkerError as exc:
        raise click.ClickException(str(exc)) from None
    rows = [{**spec.describe(), "group": spec.group or app.name} for spec in app.handlers.values()]
    columns = ["name", "topics", "group", "concurrency", "ordering", "retries", "dlq", "codec"]
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())


SETTINGS_OPTION = click.option(
    "--settings",
    "settings_path",
    type=click.Path(dir_okay=False),
    help="settings file (default: $KAFKAWORKER_SETTINGS, else ./settings.yaml)",
)


@cli.group()
def dlq() -> None:
    """Read and replay dead-letter topics."""


@dlq.command("inspect")
@click.argument("topic")
@click.option("--limit", type=click.IntRange(min=1), help="show at most N records")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per record")
@SETTINGS_OPTION
def dlq_inspect(topic: str, limit: int | None, as_json: bool, settings_path: str | None) -> None:
    """Show the records of a DLQ topic: where they came from and why they failed."""
    try:
        settings = load_settings(settings_path)
        shown = 0
        for record in dlq_tools.inspect(settings, topic, limit):
            shown += 1
            if as_json:
                click.echo(orjson.dumps(record.as_json(topic)).decode())
                continue
            f = record.failure
            click.echo(
                f"{topic}[{record.partition}]@{record.offset}  from {record.origin}  "
                f"handler {f.get('handler', '?')} (group {f.get('group', '?')})  "
                f"attempts {f.get('attempts', '?')}  failed {f.get('failed_at', '?')}"
            )
            click.echo(f"  {f.get('error.type', '?')}: {f.get('error.message', '')}")
            click.echo(f"  key={_preview(record.key)} value={_preview(record.value)}")
        if not as_json:
            click.echo(f"{shown} record(s) in {topic}", err=True)
    except KafkaWorkerError as exc:
        raise click.ClickException(str(exc)) from None


@dlq.command("replay")
@click.argument("topic")
@click.option("--to", help="publish to this topic instead of each record's original topic")
@click.option("--error-type", help="only records whose kw.error.type is NAME (or ends in .NAME)")
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    help="only records that failed at or after this time (ISO 8601; UTC if no zone)",
)
@click.option("--limit", type=click.IntRange(min=1), help="replay at most N records")
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), help="at most N records per second"
)
@click.option("--dry-run", is_flag=True, help="list what would be replayed; publish nothing")
@click.option("--group", help="consumer group keeping the progress (default: derived)")
@SETTINGS_OPTION
def dlq_replay(  # noqa: PLR0917 - click passes every option by position
    topic: str,
    to: str | None,
    error_type: str | None,
    since: datetime | None,
    limit: int | None,
    rate: float | None,
    dry_run: bool,
    group: str | None,
    settings_path: str | None,
) -> None:
    """Re-publish DLQ records to their original topic, byte for byte, once."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    selection = dlq_tools.ReplayFilter(error_type=error_type, since=since)
    try:
        settings = load_settings(settings_path)
        bar: Any = None

        def on_total(total: int) -> None:
            nonlocal bar
            bar = click.progressbar(length=total, label=f"replaying {topic}", file=sys.stderr)
            bar.__enter__()

        def on_record(record: dlq_tools.DeadLetterRecord, chosen: bool) -> None:
            if bar is not None:
                bar.update(1)
            if dry_run and chosen:
                click.echo(
                    f"would replay {topic}[{record.partition}]@{record.offset} -> "
                    f"{to or record.failure.get('original.topic')}  "
                    f"({record.failure.get('error.type', '?')})"
                )

        try:
            result = dlq_tools.replay(
                settings,
                topic,
                to=to,
                selection=selection,
                limit=limit,
                rate=rate,
                dry_run=dry_run,
                group=group,
                on_record=on_record,
                on_total=on_total,
            )
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    except KafkaWorkerError as exc:
        raise click.ClickException(str(exc)) from None
    verb = "would replay" if dry_run else "replayed"
    click.echo(
        f"{verb} {result.replayed} of {result.scanned} record(s) from {topic} "
        f"({result.filtered_out} filtered out)"
    )
    if result.without_origin:
        raise click.ClickException(
            f"{result.without_origin} record(s) have no kw.original.topic header: "
            "replay them with --to TOPIC"
        )


@cli.command()
@click.argument("topic")
@click.option("--key", help="the key of every message")
@click.option(
    "--codec",
    type=click.Choice(["json", "text", "raw"]),
    default="json",
    show_default=True,
    help="json: each line must be a JSON document",
)
@click.option("--header", "headers", multiple=True, metavar="K=V", help="a header (repeatable)")
@SETTINGS_OPTION
def produce(
    topic: str, key: str | None, codec: str, headers: tuple[str, ...], settings_path: str | None
) -> None:
    """Produce one message per line of standard input to TOPIC."""
    try:
        parsed_headers = [_header(text) for text in headers]
        settings = load_settings(settings_path)
        producer = Producer(settings, client_id="kafkaworker.produce")
    except KafkaWorkerError as exc:
        raise click.ClickException(str(exc)) from None
    futures = []
    bad: str | None = None
    try:
        for number, line in enumerate(sys.stdin.buffer, start=1):
            payload = line.rstrip(b"\r\n")
            if codec == "json":
                try:
                    orjson.loads(payload)
                except orjson.JSONDecodeError as exc:
                    bad = (
                        f"line {number} is not JSON ({exc}): nothing from it on was sent; "
                        "fix it, or use --codec text"
                    )
                    break
            elif codec == "text":
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    bad = (
                        f"line {number} is not UTF-8: nothing from it on was sent; use --codec raw"
                    )
                    break
            futures.append(producer.send(topic, payload, key=key, headers=parsed_headers))
        failed, last_error = 0, ""
        for future in futures:
            try:
                future.result(60)
            except KafkaWorkerError as exc:
                failed += 1
                last_error = str(exc)
    finally:
        producer.close()
    click.echo(f"produced {len(futures) - failed} message(s) to {topic}", err=True)
    if failed:
        raise click.ClickException(f"{failed} message(s) were not delivered: {last_error}")
    if bad is not None:
        raise click.ClickException(bad)


def _header(text: str) -> tuple[str, bytes]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{text!r} is not K=V", param_hint="--header")
    return name, value.encode()


def _preview(data: bytes | None, size: int = 120) -> str:
    if data is None:
        return "null"
    text = data.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= size else text[:size] + "...")


def main() -> None:
    cli()
