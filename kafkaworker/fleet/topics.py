"""The fleet's four topics: names (fleet: settings), how each is kept, and creating them.

One partition each: a report is ~1-2 KB every 5 s per process (a thousand processes are a few
hundred KB/s), and commands need one order. The reports topic is compacted *and* deleted:
compaction keeps each process's latest report (the dashboard reads the topic from the start
when it starts), deletion lets a stopped or killed process's last report go after `retention`.
Its timestamps are the broker's (LogAppendTime): "last seen" then compares one clock across
the fleet with the dashboard's, instead of every host's own. Commands are stamped by the
broker too: a worker compares that with the time the command says it was issued, and a
command written long after it was issued (an old one written again) is not obeyed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from kafkaworker.errors import StartupError
from kafkaworker.ops import KafkaAdmin
from kafkaworker.ops.access import principal
from kafkaworker.settings import FleetSettings, Settings

log = structlog.get_logger("kafkaworker.fleet")

REPORTS, ERRORS, COMMANDS, AUDIT = "reports", "errors", "commands", "audit"
# The setting naming each topic, for the one-line errors.
_SETTING = {
    REPORTS: "fleet.topic",
    ERRORS: "fleet.errors_topic",
    COMMANDS: "fleet.commands_topic",
    AUDIT: "fleet.audit_topic",
}
# The errors topic holds at most this much (a failure flood must not fill the brokers' disks),
# in segments small enough that the oldest go one by one.
ERRORS_BYTES = 64 * 1024 * 1024
ERRORS_SEGMENT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class FleetTopic:
    role: str  # reports, errors, commands, audit
    name: str
    config: dict[str, str]


def fleet_topics(settings: FleetSettings) -> dict[str, FleetTopic]:
    def ms(seconds: float) -> str:
        return str(round(seconds * 1000))

    # Deletion and compaction only touch closed segments: roll them often enough that the
    # retention holds to within a sixth of itself.
    def segment(seconds: float) -> str:
        return ms(max(60.0, seconds / 6))

    return {
        REPORTS: FleetTopic(
            REPORTS,
            settings.topic,
            {
                "cleanup.policy": "compact,delete",
                "retention.ms": ms(settings.retention),
                "segment.ms": segment(settings.retention),
                "message.timestamp.type": "LogAppendTime",
                # Compact soon: a dashboard starting reads what compaction left.
                "min.cleanable.dirty.ratio": "0.1",
            },
        ),
        ERRORS: FleetTopic(
            ERRORS,
            settings.errors_topic,
            {
                "cleanup.policy": "delete",
                "retention.ms": ms(settings.errors_retention),
                "retention.bytes": str(ERRORS_BYTES),
                "segment.bytes": str(ERRORS_SEGMENT_BYTES),
                "segment.ms": segment(settings.errors_retention),
            },
        ),
        COMMANDS: FleetTopic(
            COMMANDS,
            settings.commands_topic,
            {
                "cleanup.policy": "delete",
                "retention.ms": ms(settings.audit_retention),
                "message.timestamp.type": "LogAppendTime",
            },
        ),
        AUDIT: FleetTopic(
            AUDIT,
            settings.audit_topic,
            {"cleanup.policy": "delete", "retention.ms": ms(settings.audit_retention)},
        ),
    }


def ensure(admin: KafkaAdmin, settings: Settings, needs: Iterable[tuple[str, str]]) -> None:
    """Create the fleet topics that are missing among `needs` ((role, operation): READ or
    WRITE), then check that the ACLs allow each operation; one line when they do not."""
    needs = list(needs)
    topics = fleet_topics(settings.fleet)
    wanted = {role for role, _ in needs}
    admin.describe_access(topics[role].name for role in wanted)
    for role in sorted(wanted):
        topic = topics[role]
        if admin.topic_operations(topic.name) is None:  # missing (not merely hidden from us)
            _create(admin, settings, topic)
    for role, operation in needs:
        role_text = f"the fleet's {role} topic, setting {_SETTING[role]}"
        admin.require("topic", topics[role].name, operation, role_text)


def _create(admin: KafkaAdmin, settings: Settings, topic: FleetTopic) -> None:
    try:
        created = admin.create_topic(
            topic.name, 1, settings.fleet.replication_factor, topic.config, exist_ok=True
        )
    except StartupError as exc:
        bootstrap = settings.kafka.bootstrap_servers
        if "authoriz" in str(exc).lower():
            raise StartupError(
                f"{principal(settings)} is not authorized to create the fleet's {topic.role} "
                f"topic {topic.name!r} on {bootstrap}: create it beforehand (one partition; "
                f"see docs/fleet.md), grant Create, or set {_SETTING[topic.role]} to a topic "
                "it may use"
            ) from None
        raise StartupError(
            f"cannot create the fleet's {topic.role} topic {topic.name!r} on {bootstrap} "
            f"({str(exc).partition(': ')[2].split('; fix')[0] or exc}): fix "
            f"fleet.replication_factor, or create it beforehand"
        ) from None
    if created:  # else another process created it first
        log.info("created topic", topic=topic.name, role=f"fleet {topic.role}")
