"""`kafkaworker asyncapi MODULE:APP`: the app's AsyncAPI 3.0 document."""

from __future__ import annotations

from pathlib import Path

import click

from kafkaworker.asyncapi import build, render
from kafkaworker.cli.common import SETTINGS_OPTION, load_app, one_line, settings_from


@click.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="write the document to this file (default: standard output)",
)
@click.option("--only", multiple=True, metavar="HANDLER", help="only this handler (repeatable)")
@click.option(
    "--app-version",
    default="0.0.0",
    show_default=True,
    help="info.version: the version of the app (its API) the document describes",
)
@SETTINGS_OPTION
def asyncapi(  # noqa: PLR0917 - click passes every option by position
    app_ref: str,
    fmt: str,
    out: Path | None,
    only: tuple[str, ...],
    app_version: str,
    settings_path: str | None,
) -> None:
    """The AsyncAPI 3.0 document of MODULE:APP: a channel per topic it consumes or writes
    (sources, retry topics, DLQs, outputs), receive and send operations per handler, payload
    schemas from its models and codecs, the key, the kw.* headers of retry and dead-letter
    records, and the servers and security schemes of its settings (never a secret). Needs no
    cluster."""
    with one_line():
        app = load_app(app_ref)
        document = build(app, settings_from(settings_path, app), version=app_version, only=only)
    text = render(document, "json" if fmt == "json" else "yaml")
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror}: fix --out") from None
    click.echo(
        f"wrote {out}: AsyncAPI {document['asyncapi']}, {len(document['channels'])} channel(s), "
        f"{len(document['operations'])} operation(s)"
    )
