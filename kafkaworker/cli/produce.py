"""`kafkaworker produce TOPIC`: one message per line of standard input."""

from __future__ import annotations

import sys

import click
import orjson

from kafkaworker import clients
from kafkaworker.admin import KafkaAdmin
from kafkaworker.cli.common import SETTINGS_OPTION, one_line, settings_from
from kafkaworker.errors import KafkaWorkerError, StartupError
from kafkaworker.producer import Producer


@click.command()
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
    parsed_headers = [_header(text) for text in headers]
    with one_line():
        settings = settings_from(settings_path)
        # Asked before reading a line: a producer would only say "Message timed out" after
        # delivery.timeout.ms, and an unreachable cluster is told in one line.
        with KafkaAdmin(settings) as admin:
            if not admin.exists(topic):
                raise StartupError(
                    f"topic {topic!r} does not exist on {settings.kafka.bootstrap_servers}: "
                    f"create it (kafkaworker topics create {topic} --partitions N)"
                )
        producer = Producer(settings, client_id="kafkaworker.produce")
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
                clients.result(future, 60)
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
