"""`kafkaworker topics list | describe | create`: the topics, and creating an app's topics."""

from __future__ import annotations

import click

from kafkaworker.cli import common
from kafkaworker.ops import KafkaAdmin


@click.group()
def topics() -> None:
    """List, describe and create topics."""


@topics.command("list")
@common.SETTINGS_OPTION
@common.JSON_OPTION
def list_topics(settings_path: str | None, as_json: bool) -> None:
    """The cluster's topics (internal ones, __*, left out)."""
    with common.one_line(), KafkaAdmin(common.settings_from(settings_path)) as admin:
        found = admin.topics()
    if as_json:
        common.echo_json(found)
        return
    rows = [
        {"topic": t.name, "partitions": t.partitions, "replication": t.replication_factor}
        for t in found
    ]
    click.echo(common.table(rows, ["topic", "partitions", "replication"], right=["partitions"]))


@topics.command("describe")
@click.argument("name")
@common.SETTINGS_OPTION
@common.JSON_OPTION
def describe(name: str, settings_path: str | None, as_json: bool) -> None:
    """NAME's partitions: leader, replicas, in-sync replicas, log start and end."""
    with common.one_line(), KafkaAdmin(common.settings_from(settings_path)) as admin:
        found = admin.describe(name)
    if as_json:
        common.echo_json(found)
        return
    rows = [
        {
            "partition": p.partition,
            "leader": p.leader,
            "replicas": ",".join(map(str, p.replicas)),
            "isr": ",".join(map(str, p.isr)),
            "log_start": p.log_start,
            "log_end": p.log_end,
            "records": p.log_end - p.log_start,
        }
        for p in found.partitions
    ]
    columns = ["partition", "leader", "replicas", "isr", "log_start", "log_end", "records"]
    click.echo(common.table(rows, columns, right=["partition", "log_start", "log_end", "records"]))


@topics.command("create")
@click.argument("name", required=False)
@click.option("--partitions", type=click.IntRange(min=1), help="default: the broker's")
@click.option("--replication-factor", type=click.IntRange(min=1), help="default: the broker's")
@click.option(
    "--config", "configs", multiple=True, metavar="K=V", help="a topic config (repeatable)"
)
@click.option(
    "--if-not-exists",
    is_flag=True,
    help="a topic NAME that exists already is not an error (its size is not checked)",
)
@click.option(
    "--from",
    "app_ref",
    metavar="MODULE:APP",
    help="create every topic the app consumes or writes that is missing",
)
@common.SETTINGS_OPTION
def create(  # noqa: PLR0917 - click passes every option by position
    name: str | None,
    partitions: int | None,
    replication_factor: int | None,
    configs: tuple[str, ...],
    if_not_exists: bool,
    app_ref: str | None,
    settings_path: str | None,
) -> None:
    """Create topic NAME, or with --from MODULE:APP the app's missing topics: its sources and
    outputs (with --partitions), its retry topics and DLQs (sized as `run` creates them)."""
    with common.one_line():
        if (name is None) == (app_ref is None):
            raise click.UsageError("give a topic NAME or --from MODULE:APP (one of them)")
        if app_ref is not None:
            if configs:
                raise click.UsageError("--config applies to one topic: create it by NAME")
            app = common.load_app(app_ref)
            settings = common.settings_from(settings_path, app)
            with KafkaAdmin(settings) as admin:
                done = admin.create_app_topics(
                    app, partitions=partitions, replication_factor=replication_factor
                )
            for topic, created in done:
                verb = "created" if created else "exists "
                click.echo(f"{verb}  {topic.kind:<6}  {topic.topic}  (handler {topic.handler})")
            return
        assert name is not None
        config = dict(_pair(text) for text in configs)
        with KafkaAdmin(common.settings_from(settings_path)) as admin:
            created = admin.create_topic(
                name, partitions, replication_factor, config, exist_ok=if_not_exists
            )
            size = len(admin.metadata().topics[name].partitions)
        click.echo(f"{'created' if created else 'exists'} {name} ({size} partition(s))")


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not K=V", param_hint="--config")
    return key, value
