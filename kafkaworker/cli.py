"""The `kafkaworker` command line."""

from __future__ import annotations

import click

from kafkaworker import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kafkaworker")
def cli() -> None:
    """Run and operate kafkaworker apps."""


def main() -> None:
    cli()
