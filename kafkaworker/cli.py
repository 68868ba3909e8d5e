"""The `kafkaworker` command line: run an app, list its routes."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from kafkaworker import __version__
from kafkaworker.app import App
from kafkaworker.errors import AppImportError, KafkaWorkerError


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
def run(
    app_ref: str, settings_path: str | None, only: tuple[str, ...], log_level: str | None
) -> None:
    """Run the handlers of MODULE:APP until SIGTERM or SIGINT."""
    overrides = {"log_level": log_level.upper()} if log_level else {}
    try:
        code = load_app(app_ref).run(settings_path=settings_path, only=only, overrides=overrides)
    except KafkaWorkerError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


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


def main() -> None:
    cli()
