"""The OpenTelemetry messaging semantic conventions' names, as kafkaworker writes them.

The names of the current conventions for Kafka (messaging.operation.name/type,
messaging.consumer.group.name, messaging.destination.partition.id, messaging.kafka.offset),
not the older ones opentelemetry-python-contrib's confluent-kafka instrumentation still
writes (messaging.kafka.partition, messaging.kafka.consumer.group...). Plain strings: no
import of the semantic-conventions package, whose incubating names move between releases.
"""

from __future__ import annotations

SYSTEM = "messaging.system"
OPERATION_NAME = "messaging.operation.name"
OPERATION_TYPE = "messaging.operation.type"
DESTINATION = "messaging.destination.name"
PARTITION = "messaging.destination.partition.id"
CONSUMER_GROUP = "messaging.consumer.group.name"
OFFSET = "messaging.kafka.offset"
KEY = "messaging.kafka.message.key"
TOMBSTONE = "messaging.kafka.message.tombstone"
CLIENT_ID = "messaging.client.id"
BATCH_COUNT = "messaging.batch.message_count"
ERROR_TYPE = "error.type"

KAFKA = "kafka"
PROCESS = "process"
SEND = "send"
# A transaction's commit settles (operation type) the offsets of the messages it commits.
COMMIT = "commit"
ABORT = "abort"
SETTLE = "settle"

# kafkaworker's own, beside the conventions': the handler that ran, and on each failed
# attempt's exception event its number and what the failure policy decided.
HANDLER = "kafkaworker.handler"
ATTEMPT = "kafkaworker.attempt"
DECISION = "kafkaworker.decision"
# On an exactly_once handler's commit span: how many partitions' offsets and records it held.
TRANSACTION_OFFSETS = "kafkaworker.transaction.offsets"
TRANSACTION_RECORDS = "kafkaworker.transaction.records"

# The metrics of the conventions (the OpenTelemetry meter, tracing.metrics: true).
PROCESS_DURATION = "messaging.process.duration"
OPERATION_DURATION = "messaging.client.operation.duration"
SENT_MESSAGES = "messaging.client.sent.messages"
CONSUMED_MESSAGES = "messaging.client.consumed.messages"

# A key longer than this is left out of the span (a key is an id, not a payload).
KEY_MAX = 256


def text_key(key: bytes | str | None) -> str | None:
    """A record key as the conventions want it: when it is text (valid UTF-8, printable, at
    most KEY_MAX characters); None otherwise (binary keys have no canonical string form)."""
    if key is None:
        return None
    if isinstance(key, bytes):
        if len(key) > KEY_MAX * 4:
            return None
        try:
            key = key.decode()
        except UnicodeDecodeError:
            return None
    if len(key) > KEY_MAX or not key.isprintable():
        return None
    return key
