"""Cluster operations: what a team running workers does to the cluster beside running them,
behind `kafkaworker topics | offsets | lag | check | dlq | manifests` and usable from Python.

Public: `KafkaAdmin` and the types its calls return (import them from here), `ops.dlq`
(reading and replaying dead-letter topics) and `ops.kubernetes` (manifests). The other
modules are KafkaAdmin's parts, private to this package: connection.py (one AdminClient and
its waits), topics.py, groups.py (offsets, resets, lag), access.py (ACL checks), checks.py
(an app's topics and the preflight); their names may move.

Nothing here is imported by the runtime's hot path; the runtime's start-up (the preflight,
creating DLQ and retry topics) uses KafkaAdmin.
"""

from kafkaworker.ops.admin import KafkaAdmin
from kafkaworker.ops.checks import AppTopic, Check
from kafkaworker.ops.groups import (
    SHARE_GROUP_NOT_DESCRIBED,
    GroupOffsets,
    Member,
    OffsetChange,
    OffsetResetRefused,
    PartitionLag,
    active_members,
    share_groups,
)
from kafkaworker.ops.topics import PartitionInfo, TopicDescription, TopicSummary

__all__ = [
    "SHARE_GROUP_NOT_DESCRIBED",
    "AppTopic",
    "Check",
    "GroupOffsets",
    "KafkaAdmin",
    "Member",
    "OffsetChange",
    "OffsetResetRefused",
    "PartitionInfo",
    "PartitionLag",
    "TopicDescription",
    "TopicSummary",
    "active_members",
    "share_groups",
]
