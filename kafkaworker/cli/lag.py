"""`kafkaworker lag MODULE:APP | --group G`: offset and time lag per handler and partition."""

from __future__ import annotations

import sys
import time

import click

from kafkaworker.cli import common
from kafkaworker.cli.offsets import group_table
from kafkaworker.ops import SHARE_GROUP_NOT_DESCRIBED, GroupOffsets, KafkaAdmin, share_groups


def _one_group(admin: KafkaAdmin, group: str | None) -> dict[str, GroupOffsets]:
    assert group is not None
    return {group: admin.group(group)}


# Cursor home, clear to the end of the screen: a refresh redraws in place.
_REDRAW = "\x1b[H\x1b[J"


@click.command()
@click.argument("app_ref", metavar="[MODULE:APP]", required=False)
@click.option("--group", help="a consumer group instead of an app's handlers")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.5),
    metavar="SECONDS",
    help="refresh every SECONDS until Ctrl+C",
)
@common.SETTINGS_OPTION
@common.JSON_OPTION
def lag(
    app_ref: str | None,
    group: str | None,
    watch: float | None,
    settings_path: str | None,
    as_json: bool,
) -> None:
    """Offset lag and time lag per handler (or of --group) and partition."""
    with common.one_line():
        if (app_ref is None) == (group is None):
            raise click.UsageError("give MODULE:APP or --group GROUP (one of them)")
        app = common.load_app(app_ref) if app_ref is not None else None
        settings = common.settings_from(settings_path, app)
        # Queue-mode handlers' share groups: said what is known of them, not shown as lag.
        shares = share_groups(app, settings) if app is not None else {}
        with KafkaAdmin(settings) as admin:
            while True:
                found = admin.lag(app) if app is not None else _one_group(admin, group)
                if as_json:
                    common.echo_json(
                        {
                            **found,
                            **{
                                name: {
                                    "group": share,
                                    "mode": "queue",
                                    "described": False,
                                    "reason": SHARE_GROUP_NOT_DESCRIBED.format(group=share),
                                }
                                for name, share in shares.items()
                            },
                        }
                    )
                else:
                    text = "\n\n".join(
                        [
                            *(
                                (f"handler {name}: " if app is not None else "")
                                + group_table(offsets)
                                for name, offsets in found.items()
                            ),
                            *(
                                f"handler {name}: share group {share} (queue mode): "
                                + SHARE_GROUP_NOT_DESCRIBED.format(group=share)
                                for name, share in shares.items()
                            ),
                        ]
                    )
                    if watch is not None and sys.stdout.isatty():
                        text = _REDRAW + time.strftime("%H:%M:%S ") + f"every {watch:g}s\n" + text
                    click.echo(text)
                if watch is None:
                    return
                time.sleep(watch)
