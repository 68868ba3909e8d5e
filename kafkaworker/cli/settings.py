"""`kafkaworker settings [MODULE:APP]`: the effective settings, each with where it came from."""

from __future__ import annotations

import click

from kafkaworker.cli import common
from kafkaworker.settings import resolve_settings_path
from kafkaworker.settings_sources import Sources, leaves, masked


@click.command("settings")
@click.argument("app_ref", metavar="[MODULE:APP]", required=False)
@common.SETTINGS_OPTION
@common.JSON_OPTION
def settings(app_ref: str | None, settings_path: str | None, as_json: bool) -> None:
    """Print the settings `run` would use (of MODULE:APP, when its App has settings of its
    own), each with its source: command line, environment (the variable), settings file,
    App(settings=...) or default. Secrets are masked."""
    with common.one_line():
        app = common.load_app(app_ref) if app_ref is not None else None
        found = common.settings_from(settings_path, app)
        if app is not None and app.settings is not None and settings_path is None:
            sources = Sources(app_values=app.settings.model_dump(exclude_unset=True))
        else:
            sources = Sources.read(resolve_settings_path(settings_path), {})
    rows = [
        {"setting": ".".join(path), "value": masked(path[-1], value), "source": sources.of(path)}
        for path, value in leaves(found.model_dump(mode="json"))
    ]
    if as_json:
        common.echo_json(rows)
        return
    click.echo(common.table(rows, ["setting", "value", "source"]))
