"""exactly_once against a real broker, in process: an abortable error (a record the broker
refuses) aborts the transaction, the partition is rewound to its committed position and its
messages delivered again; a read_committed reader never sees the aborted writes."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from kafkaworker import App, Message
from tests.conftest import TopicFactory
from tests.faults.test_exactly_once import read_committed
from tests.support import committed, make_settings, produce, running, wait_until

pytestmark = pytest.mark.kafka


def finished(bootstrap: str, group: str, topic: str) -> int:
    """Inputs committed by the group; 0 while an open transaction holds its offsets (a
    read_committed offset fetch waits for them to settle, KIP-447, and times out)."""
    try:
        return sum(committed(bootstrap, group, topic, 4).values())
    except KafkaException:
        return 0


def test_an_aborted_transaction_is_rewound_and_delivered_again_exactly_once(
    kafka_bootstrap: str, admin: AdminClient, new_topic: TopicFactory
) -> None:
    source = new_topic(4)
    # Record batches over 16 KB are refused by the broker (MESSAGE_TOO_LARGE): in a
    # transaction, an abortable error (librdkafka INTRODUCTION.md). The producer's batches
    # stay under 8 KB (batch.size), so only a batch with the 30 KB record is refused.
    output = f"out-{uuid.uuid4().hex[:12]}"
    small = {"max.message.bytes": "16000"}
    admin.create_topics([NewTopic(output, 4, 1, config=small)])[output].result(timeout=30)
    total = 400
    produce(
        kafka_bootstrap,
        source,
        [orjson.dumps({"id": i}) for i in range(total)],
        keys=[b"k%d" % (i % 13) for i in range(total)],
    )
    app = App("eos-abort")
    seen: Counter[int] = Counter()
    lock = threading.Lock()

    @app.handler(
        source,
        output=output,
        ordering="key",
        concurrency=4,
        processing_guarantee="exactly_once",
    )
    def copy(msg: Message[dict[str, Any]]) -> dict[str, Any]:
        number = msg.value["id"]
        with lock:
            seen[number] += 1
            first = seen[number] == 1
        # Input 150's first output is too large: its transaction aborts, and the redelivery's
        # output (and everything else the aborted transaction held) commits later.
        return {"id": number, "pad": "x" * (30_000 if number == 150 and first else 10)}

    settings = make_settings(
        kafka_bootstrap,
        kafka={"bootstrap_servers": kafka_bootstrap, "producer": {"batch.size": 8000}},
    )
    with running(app, settings) as runner:
        wait_until(
            lambda: finished(kafka_bootstrap, "eos-abort", source) == total,
            90,
            "every input committed",
        )
        aborted = runner.metrics.transactions.labels("copy", "aborted")._value.get()
    outputs = [o["id"] for o in map(orjson.loads, read_committed(kafka_bootstrap, output))]
    assert Counter(outputs) == Counter(range(total))  # each once, the aborted ones never
    assert aborted >= 1
    assert seen[150] >= 2  # delivered again after the abort
