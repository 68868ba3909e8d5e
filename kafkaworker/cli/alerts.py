"""`kafkaworker alerts`: the Prometheus alerting rules, with the thresholds of the settings."""

from __future__ import annotations

import click

from kafkaworker.alerts import rules_file
from kafkaworker.cli.common import SETTINGS_OPTION, one_line, settings_from


@click.command()
@click.option(
    "--selector",
    default="",
    help="label matchers every metric is read with, e.g. 'job=~\"orders|billing\"' "
    "(default: every kafkaworker the Prometheus scrapes)",
)
@SETTINGS_OPTION
def alerts(selector: str, settings_path: str | None) -> None:
    """Print a Prometheus rules file: lag growing, time lag, dead letters, stalled retries,
    an open breaker, a worker not ready, commits not moving (thresholds: alerts: settings)."""
    with one_line():
        settings = settings_from(settings_path)
    click.echo(rules_file(settings.alerts, selector), nl=False)
