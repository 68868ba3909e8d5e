"""`kafkaworker offsets show | reset`: a group's committed offsets, lag, and moving them (by
offset or by time: replay, or skipping ahead)."""

from __future__ import annotations

import textwrap
from datetime import datetime

import click

from kafkaworker.cli.common import (
    JSON_OPTION,
    SETTINGS_OPTION,
    IsoDateTime,
    duration,
    echo_json,
    one_line,
    settings_from,
    table,
    terminal_width,
)
from kafkaworker.errors import StartupError
from kafkaworker.ops import SHARE_GROUP_NOT_DESCRIBED, GroupOffsets, KafkaAdmin, active_members
from kafkaworker.ops.groups import OffsetChange
from kafkaworker.ops.inbox import INBOX_TABLE, InboxRows
from kafkaworker.settings import Settings


@click.group()
def offsets() -> None:
    """Show a group's offsets and lag; move them."""


@offsets.command("show")
@click.argument("group")
@click.option("--topic", help="only this topic (and its partitions never committed)")
@SETTINGS_OPTION
@JSON_OPTION
def show(group: str, topic: str | None, settings_path: str | None, as_json: bool) -> None:
    """GROUP's state and members, and per partition the committed offset, log end, lag and
    time lag (how old the first record not consumed yet is)."""
    with one_line(), KafkaAdmin(settings_from(settings_path)) as admin:
        found = admin.group(group, topic)
    if as_json:
        echo_json(found)
        return
    click.echo(group_table(found))
    if found.state == "Dead" and not found.members:
        # Not a consumer group (or an empty one long gone): maybe a share group (queue mode),
        # which the Python client's admin API does not see.
        click.echo(f"if {group} is a share group: " + SHARE_GROUP_NOT_DESCRIBED.format(group=group))


def group_table(found: GroupOffsets) -> str:
    lines = [f"group {found.group}: {found.state}, {len(found.members)} member(s), lag {found.lag}"]
    width = terminal_width()
    for member in found.members:
        assigned = ", ".join(member.assignment) or "nothing"
        line = f"{member.client_id} ({member.host}): {assigned}"
        if width is None:
            lines.append(f"  {line}")
            continue
        lines.append(
            textwrap.fill(
                line,
                width,
                initial_indent="  ",
                subsequent_indent="    ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    if not found.partitions:
        lines.append("no committed offsets (give --topic to see a topic's lag)")
        return "\n".join(lines)
    rows = [
        {
            "topic": p.topic,
            "partition": p.partition,
            "committed": p.committed,
            "log_end": p.log_end,
            "lag": p.lag,
            "time_lag": duration(p.time_lag),
        }
        for p in found.partitions
    ]
    columns = ["topic", "partition", "committed", "log_end", "lag", "time_lag"]
    lines.append(table(rows, columns, right=columns[1:]))
    return "\n".join(lines)


@offsets.command("reset")
@click.argument("group")
@click.option("--topic", required=True, help="the topic whose offsets move")
@click.option("--to-earliest", is_flag=True, help="to the start of the log")
@click.option("--to-latest", is_flag=True, help="to the end of the log (skip everything)")
@click.option("--to-offset", type=click.IntRange(min=0), help="to this offset")
@click.option("--to-datetime", type=IsoDateTime(), help="to the first record at or after this time")
@click.option("--shift-by", type=int, help="by N (negative: back)")
@click.option(
    "--partition",
    "partitions",
    type=click.IntRange(min=0),
    multiple=True,
    help="only this partition (repeatable; default: all)",
)
@click.option("--execute", is_flag=True, help="apply it (without: a dry run)")
@click.option(
    "--inbox-table",
    help="the database inbox's table (default kafkaworker_inbox), read at postgres.url",
)
@click.option(
    "--forget-inbox",
    is_flag=True,
    help="with --execute: delete the inbox rows at and above the new positions (run them again)",
)
@click.option(
    "--yes",
    "new_group",
    is_flag=True,
    help="with --execute: go on although GROUP has no committed offsets (creates them)",
)
@SETTINGS_OPTION
@JSON_OPTION
def reset(  # noqa: PLR0917 - click passes every option by position
    group: str,
    topic: str,
    to_earliest: bool,
    to_latest: bool,
    to_offset: int | None,
    to_datetime: datetime | None,
    shift_by: int | None,
    partitions: tuple[int, ...],
    execute: bool,
    inbox_table: str | None,
    forget_inbox: bool,
    new_group: bool,
    settings_path: str | None,
    as_json: bool,
) -> None:
    """Move GROUP's committed offsets on --topic. A dry run unless --execute (the dry run
    also while the group has members). --execute is refused while the group has active
    members (stop its workers first), and needs --yes for a group with no committed offsets
    (a new group, or a typo of its name).

    With a database inbox (postgres.url set, or --inbox-table): the inbox's rows at and above
    the new positions are counted; the inbox finishes those messages without calling the
    handler. --forget-inbox deletes them with --execute, so that they run again."""
    selectors = [to_earliest, to_latest, to_offset is not None]
    selectors += [to_datetime is not None, shift_by is not None]
    if sum(selectors) != 1:
        raise click.UsageError(
            "give one of --to-earliest, --to-latest, --to-offset, --to-datetime, --shift-by"
        )
    if new_group and not execute:
        raise click.UsageError("--yes goes with --execute")
    notes: list[str] = []
    settings = settings_from(settings_path)
    inbox = inbox_rows(settings, inbox_table, forget_inbox, group, topic)
    with one_line(), KafkaAdmin(settings) as admin:
        if not execute:  # what --execute would meet, said beside the preview
            found = admin.group(group, time_lag=False)
            if found.members:
                notes.append(f"{active_members(group, found.members)}, then --execute")
            elif not found.partitions:
                notes.append(
                    f"group {group!r} has no committed offsets (a new group, or a typo of "
                    "its name?): --execute will need --yes"
                )
        changes = admin.reset_offsets(
            group,
            topic,
            to_earliest=to_earliest,
            to_latest=to_latest,
            to_offset=to_offset,
            to_datetime=to_datetime,
            shift_by=shift_by,
            partitions=partitions or None,
            execute=execute,
            allow_new_group=new_group,
        )
    inbox_report: dict[str, object] | None = None
    if inbox is not None:  # after the move: rows are only ever forgotten for a reset done
        with one_line():
            inbox_report, inbox_note = settle_inbox(inbox, changes, execute, forget_inbox)
        notes.append(inbox_note)
    if as_json:
        echo_json({"executed": execute, "changes": changes, "notes": notes, "inbox": inbox_report})
        return
    rows = [
        {
            "topic": c.topic,
            "partition": c.partition,
            "current": c.current,
            "target": c.target,
            "change": c.target - c.current if c.current is not None else None,
        }
        for c in changes
    ]
    columns = ["topic", "partition", "current", "target", "change"]
    click.echo(table(rows, columns, right=columns[1:]))
    if execute:
        click.echo(f"moved group {group} on {topic}")
    else:
        click.echo("dry run: nothing changed; add --execute to apply")
    for note in notes:
        click.echo(f"note: {note}")


def inbox_rows(
    settings: Settings, table: str | None, forget: bool, group: str, topic: str
) -> InboxRows | None:
    """The inbox a reset must tell about: asked for (--inbox-table, --forget-inbox), or
    there by the settings (postgres.url). None: no database inbox is known."""
    if table is None and not forget and settings.postgres.url is None:
        return None
    with one_line():
        rows = InboxRows(settings, table or INBOX_TABLE, group, topic)
        rows.check()  # before anything moves: a reset is never half done for want of it
    return rows


def settle_inbox(
    inbox: InboxRows, changes: list[OffsetChange], execute: bool, forget: bool
) -> tuple[dict[str, object], str]:
    """Count (and with --execute --forget-inbox delete) the inbox rows at and above the new
    positions; the report and the line that says it."""
    targets = {c.partition: c.target for c in changes}
    where = f"{inbox.table} at {inbox.where}"
    if execute and forget:
        try:
            forgotten = inbox.forget(targets)
        except StartupError as exc:
            raise StartupError(
                f"the offsets moved, but the inbox rows were not deleted ({exc}): run the "
                "same reset again"
            ) from None
        return (
            {"table": inbox.table, "rows": 0, "forgotten": forgotten},
            f"inbox: {forgotten} row(s) at and above the new positions deleted from {where}: "
            "those messages run again",
        )
    counted = inbox.at_or_above(targets)
    rows = sum(counted.values())
    report: dict[str, object] = {
        "table": inbox.table,
        "rows": rows,
        "per_partition": {str(p): n for p, n in counted.items()},  # JSON keys are text
        "forgotten": 0,
    }
    if not rows:
        return report, f"inbox: no rows at or above the new positions in {where}"
    then = "--forget-inbox with --execute deletes them" if not forget else "--execute deletes them"
    return report, (
        f"inbox: {rows} row(s) at or above the new positions in {where}: the inbox finishes "
        f"those messages without calling the handler; {then} to run them again"
    )
