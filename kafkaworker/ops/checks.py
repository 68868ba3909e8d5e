"""An app's view of the cluster: the topics it consumes and writes (created when missing, sized
as `run` creates them), and the preflight behind `kafkaworker check`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kafkaworker.errors import KafkaWorkerError, StartupError
from kafkaworker.handlers import HandlerSpec, resolve_specs
from kafkaworker.ops.access import Access
from kafkaworker.ops.connection import AdminConnection, exists
from kafkaworker.ops.groups import group_offsets
from kafkaworker.ops.topics import create_topic
from kafkaworker.settings import Settings

if TYPE_CHECKING:
    from kafkaworker.app import App


@dataclass(frozen=True)
class AppTopic:
    """A topic an app consumes or writes."""

    topic: str
    kind: str  # source, retry, dlq, output
    handler: str
    # Created with as many partitions as the largest of these (a retry topic: its source; a
    # DLQ: the handler's topics, unless dead_letter.partitions is set); () for a source or
    # an output: as asked, else the broker's default.
    sized_like: tuple[str, ...] = ()


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def app_topics(app: App, settings: Settings) -> list[AppTopic]:
    """See KafkaAdmin.app_topics."""
    from kafkaworker.runtime.failures.retrytopics import RetryRoutes  # noqa: PLC0415

    found: dict[str, AppTopic] = {}
    for spec in resolve_specs(app, settings):
        wanted = [AppTopic(t, "source", spec.name) for t in spec.topics]
        wanted += [
            AppTopic(s.topic, "retry", spec.name, (s.source,))
            for s in RetryRoutes(spec.topics, spec.retry_topics).stages
        ]
        if spec.dlq is not None:
            wanted.append(AppTopic(spec.dlq, "dlq", spec.name, spec.topics))
        if spec.output is not None:
            wanted.append(AppTopic(spec.output, "output", spec.name))
        for topic in wanted:
            found.setdefault(topic.topic, topic)
    return list(found.values())


def create_app_topics(
    connection: AdminConnection,
    access: Access,
    app: App,
    settings: Settings,
    *,
    partitions: int | None,
    replication_factor: int | None,
) -> list[tuple[AppTopic, bool]]:
    """See KafkaAdmin.create_app_topics."""
    wanted = app_topics(app, settings)
    done: list[tuple[AppTopic, bool]] = []
    # Sources and outputs first: retry topics and DLQs take their size from them.
    for group in ([t for t in wanted if not t.sized_like], [t for t in wanted if t.sized_like]):
        metadata = connection.metadata()
        for topic in group:
            if exists(metadata, topic.topic):
                done.append((topic, False))
                continue
            size, replicas = _shape(topic, metadata, settings)
            if not topic.sized_like:
                size, replicas = partitions, replication_factor
            created = create_topic(
                connection, topic.topic, size, replicas, None, validate_only=False, exist_ok=True
            )
            if created:
                access.forget(topic.topic)
            done.append((topic, created))
    return done


def _shape(topic: AppTopic, metadata: Any, settings: Settings) -> tuple[int | None, int | None]:
    """The partitions and replication factor `run` creates `topic` with (None: the broker's
    default)."""
    if topic.kind == "dlq":
        replicas = settings.dead_letter.replication_factor
        if settings.dead_letter.partitions:
            return settings.dead_letter.partitions, replicas
    else:
        replicas = None
    sizes = [
        len(metadata.topics[name].partitions) for name in topic.sized_like if exists(metadata, name)
    ]
    return (max(sizes) if sizes else None), replicas


def check(connection: AdminConnection, access: Access, app: App, settings: Settings) -> list[Check]:
    """See KafkaAdmin.check."""
    checks: list[Check] = []
    try:
        metadata = connection.metadata()
    except StartupError as exc:
        return [Check("brokers", False, str(exc))]
    brokers = len(metadata.brokers)
    checks.append(
        Check("brokers", True, f"{brokers} broker(s) at {settings.kafka.bootstrap_servers}")
    )

    for wanted in app_topics(app, settings):
        name = f"{wanted.kind} topic {wanted.topic} ({wanted.handler})"
        # What the app does with it, as the ACLs must allow.
        needs = {"source": ["READ"], "retry": ["READ", "WRITE"]}.get(wanted.kind, ["WRITE"])
        visible = exists(metadata, wanted.topic)
        if visible or access.topic_operations(wanted.topic) is not None:
            try:
                for operation in needs:
                    access.require("topic", wanted.topic, operation, wanted.kind)
            except StartupError as exc:
                checks.append(Check(name, False, str(exc)))
                continue
            found = metadata.topics.get(wanted.topic)
            counted = f"{len(found.partitions)} partition(s), " if found is not None else ""
            may = " and ".join(op.title() for op in needs)
            checks.append(Check(name, True, f"exists, {counted}may {may}"))
        elif wanted.kind in ("source", "output"):
            checks.append(
                Check(
                    name,
                    False,
                    "does not exist: create it (kafkaworker topics create --from MODULE:APP)",
                )
            )
        elif not settings.dead_letter.create_topics:
            checks.append(Check(name, False, "does not exist and dead_letter.create_topics is off"))
        else:
            try:
                size, replicas = _shape(wanted, metadata, settings)
                create_topic(
                    connection, wanted.topic, size, replicas, None, validate_only=True,
                    exist_ok=False,
                )  # fmt: skip
                checks.append(Check(name, True, "missing; it will be created at start-up"))
            except StartupError as exc:
                checks.append(Check(name, False, f"missing and cannot be created: {exc}"))

    specs = resolve_specs(app, settings)
    shares = sorted({spec.group or app.name for spec in specs if spec.mode == "queue"})
    for group in shares:
        checks.append(_share_group_check(group, settings))
    for group in sorted({spec.group or app.name for spec in specs if spec.mode != "queue"}):
        try:
            access.require("group", group, "READ", "consumer group")
            state = group_offsets(connection, group, time_lag=False).state
            # A group never used yet is described as Dead: new, not broken.
            shown = "new (no offsets or members yet)" if state == "Dead" else state
            checks.append(Check(f"group {group}", True, f"may Read; {shown}"))
        except KafkaWorkerError as exc:
            checks.append(Check(f"group {group}", False, str(exc)))
    checks += [_guarantee_check(app.name, spec, settings) for spec in specs]
    return checks


def _guarantee_check(app_name: str, spec: HandlerSpec, settings: Settings) -> Check:
    """What the handler promises (its settings were checked by resolve_specs): an operator
    reading the preflight sees which outputs need read_committed readers, and the
    transactional.id this process will use (the one an ACL must allow)."""
    from kafkaworker.runtime.poll.transactions import transactional_id  # noqa: PLC0415

    detail = f"processing guarantee {spec.processing_guarantee}"
    if spec.processing_guarantee == "exactly_once":
        detail += (
            f" (transactional.id {transactional_id(app_name, spec, settings)}; read its "
            "outputs with isolation.level=read_committed)"
        )
    return Check(f"handler {spec.name}", True, detail)


def _share_group_check(group: str, settings: Settings) -> Check:
    """A queue-mode handler's share group: its configs readable, and what start-up will
    write (share.auto.offset.reset), read only."""
    from kafkaworker.runtime.source.share_group import prepare_share_group  # noqa: PLC0415

    name = f"share group {group}"
    try:
        found = prepare_share_group(settings, group, change=False)
    except KafkaWorkerError as exc:
        return Check(name, False, str(exc))
    reset = f"share.auto.offset.reset {found.auto_offset_reset}"
    if found.reset_to_write is not None:
        reset += f" (start-up sets {found.reset_to_write}: not set on the group)"
    return Check(
        name,
        True,
        f"configs readable: delivery limit {found.delivery_limit}, lock "
        f"{found.lock_seconds:g}s, {reset}",
    )
