"""`kafkaworker check MODULE:APP`: a preflight that consumes nothing (an init container, a CI
step): one line per check, exit 1 on any failure."""

from __future__ import annotations

import sys

import click

from kafkaworker.cli import common
from kafkaworker.ops import KafkaAdmin


@click.command()
@click.argument("app_ref", metavar="MODULE:APP")
@common.SETTINGS_OPTION
@common.JSON_OPTION
def check(app_ref: str, settings_path: str | None, as_json: bool) -> None:
    """Check that MODULE:APP can run: brokers reachable (and the credentials accepted),
    source topics exist, DLQ, retry and output topics exist or can be created, and the ACLs
    let it read and write them and use its groups."""
    with common.one_line():
        app = common.load_app(app_ref)
        settings = common.settings_from(settings_path, app)
        with KafkaAdmin(settings) as admin:
            checks = admin.check(app)
    failed = [c for c in checks if not c.ok]
    if as_json:
        common.echo_json({"ok": not failed, "checks": checks})
    else:
        for c in checks:
            click.echo(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
        click.echo(f"{len(checks) - len(failed)} of {len(checks)} checks passed", err=True)
    if failed:
        sys.exit(1)
