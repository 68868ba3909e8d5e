"""`kafkaworker dlq inspect | replay`: read dead-letter topics and send their records back."""

from __future__ import annotations

import contextlib
import sys
from datetime import datetime
from typing import Any

import click
import orjson

from kafkaworker import tracing
from kafkaworker.cli.common import SETTINGS_OPTION, IsoDateTime, one_line, settings_from
from kafkaworker.ops import dlq as dlq_tools


@click.group()
def dlq() -> None:
    """Read and replay dead-letter topics."""


@dlq.command("inspect")
@click.argument("topic")
@click.option("--limit", type=click.IntRange(min=1), help="show at most N records")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per record")
@SETTINGS_OPTION
def inspect(topic: str, limit: int | None, as_json: bool, settings_path: str | None) -> None:
    """Show the records of a DLQ topic: where they came from and why they failed."""
    with one_line():
        settings = settings_from(settings_path)
        shown = without_headers = 0
        for record in dlq_tools.inspect(settings, topic, limit):
            shown += 1
            if not record.failure:
                without_headers += 1
            if as_json:
                click.echo(orjson.dumps(record.as_json(topic)).decode())
                continue
            f = record.failure
            if not f:
                click.echo(
                    f"{topic}[{record.partition}]@{record.offset}  (no kw.* failure headers)"
                )
                click.echo(f"  key={_preview(record.key)} value={_preview(record.value)}")
                continue
            click.echo(
                f"{topic}[{record.partition}]@{record.offset}  from {record.origin}  "
                f"handler {f.get('handler', '?')} (group {f.get('group', '?')})  "
                f"attempts {f.get('attempts', '?')}  failed {f.get('failed_at', '?')}"
            )
            click.echo(f"  {f.get('error.type', '?')}: {f.get('error.message', '')}")
            click.echo(f"  key={_preview(record.key)} value={_preview(record.value)}")
            if record.trace_id is not None:
                click.echo(f"  trace {record.trace_id}")
        if not as_json:
            if limit is not None and shown == limit:
                click.echo(f"the first {shown} record(s) of {topic} (--limit {limit})", err=True)
            else:
                click.echo(f"{shown} record(s) in {topic}", err=True)
        if without_headers:
            click.echo(
                f"{without_headers} of {shown} record(s) have no kw.* failure headers: "
                f"{topic} may not be a kafkaworker dead-letter topic",
                err=True,
            )


@dlq.command("replay")
@click.argument("topic")
@click.option("--to", help="publish to this topic instead of each record's original topic")
@click.option("--error-type", help="only records whose kw.error.type is NAME (or ends in .NAME)")
@click.option(
    "--since",
    type=IsoDateTime(),
    help="only records that failed at or after this time, e.g. 2026-11-28, "
    "2026-11-28T09:30:00, 2026-11-28T09:30:00+01:00 (UTC if no zone)",
)
@click.option("--limit", type=click.IntRange(min=1), help="replay at most N records")
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), help="at most N records per second"
)
@click.option("--dry-run", is_flag=True, help="list what would be replayed; publish nothing")
@click.option("--group", help="consumer group keeping the progress (default: derived)")
@SETTINGS_OPTION
def replay(  # noqa: PLR0917 - click passes every option by position
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
    selection = dlq_tools.ReplayFilter(error_type=error_type, since=since)
    with one_line():
        settings = settings_from(settings_path)
        bar: Any = None
        sent: list[str] = []

        def on_total(total: int) -> None:
            nonlocal bar
            bar = click.progressbar(length=total, label=f"replaying {topic}", file=sys.stderr)
            bar.__enter__()

        def on_record(record: dlq_tools.DeadLetterRecord, chosen: bool) -> None:
            if bar is not None:
                bar.update(1)
            if chosen:
                line = (
                    f"{topic}[{record.partition}]@{record.offset} -> "
                    f"{to or record.failure.get('original.topic')}  "
                    f"({record.failure.get('error.type', '?')})"
                )
                if dry_run:
                    click.echo(f"would replay {line}")
                else:
                    sent.append(f"sent {line}")  # told once the broker acknowledged them

        # Traced (tracing.enabled): its spans are flushed before the command exits.
        tracing_sdk = (
            tracing.sdk("kafkaworker-dlq-replay")
            if settings.tracing.enabled and not dry_run
            else contextlib.nullcontext()
        )
        try:
            with tracing_sdk:
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
    for line in sent:
        click.echo(line)
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


def _preview(data: bytes | None, size: int = 120) -> str:
    if data is None:
        return "null"
    text = data.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= size else text[:size] + "...")
