"""The `kafkaworker` command line: run apps, and operate the cluster they run on.

One module per command family; each command reads the same settings as `run` (--settings,
KAFKAWORKER_* env) and exits 1 with one line on failure (cli/common.py).
"""

from __future__ import annotations

import click

from kafkaworker.cli.alerts import alerts
from kafkaworker.cli.asyncapi import asyncapi
from kafkaworker.cli.check import check
from kafkaworker.cli.common import Group, load_app
from kafkaworker.cli.dashboard import dashboard
from kafkaworker.cli.dlq import dlq
from kafkaworker.cli.lag import lag
from kafkaworker.cli.manifests import manifests
from kafkaworker.cli.offsets import offsets
from kafkaworker.cli.outbox import outbox
from kafkaworker.cli.produce import produce
from kafkaworker.cli.run import routes, run
from kafkaworker.cli.settings import settings
from kafkaworker.cli.topics import topics
from kafkaworker.version import VERSION

__all__ = ["cli", "load_app", "main"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="kafkaworker")
def cli() -> None:
    """Run and operate kafkaworker apps.

    Shell completion: eval "$(_KAFKAWORKER_COMPLETE=bash_source kafkaworker)" (zsh_source,
    fish_source for the other shells).
    """


for command in (
    run,
    routes,
    topics,
    offsets,
    lag,
    check,
    produce,
    dlq,
    manifests,
    settings,
    asyncapi,
    outbox,
):
    cli.add_command(command)
# The fleet: the standalone dashboard, and the alerting rules.
for command in (dashboard, alerts):
    cli.add_command(command)


def main() -> None:
    cli()
