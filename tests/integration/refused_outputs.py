"""What the tests of refused outputs share (test_outputs.py at least once, test_exactly_once.py
in transactions): an output topic whose broker refuses large records, and a keyed copier
whose first output of one input is too large for it.

Record batches over 16 KB are refused by the broker (MESSAGE_TOO_LARGE: in a transaction, an
abortable error, librdkafka INTRODUCTION.md). The producer's batches stay under 8 KB
(`PRODUCER`'s batch.size), so only the batch with the 30 KB record is refused.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

import orjson
from confluent_kafka.admin import AdminClient, NewTopic

from kafkaworker import App, Backoff, Message
from tests.support import produce

PRODUCER = {"batch.size": 8000}
KEYS = 13


def refusing_topic(admin: AdminClient, partitions: int) -> str:
    output = f"out-{uuid.uuid4().hex[:12]}"
    small = {"max.message.bytes": "16000"}
    admin.create_topics([NewTopic(output, partitions, 1, config=small)])[output].result(30)
    return output


def keyed_copier(
    bootstrap: str, app: App, source: str, output: str, *, total: int, refused: int, **options: Any
) -> Counter[int]:
    """`total` inputs on KEYS keys, copied by a key-ordered handler of `app` (retries=1: the
    refusal counts as a failed attempt, the retry's output is written) whose first output of
    input `refused` is too large; how often each input was handled."""
    produce(
        bootstrap,
        source,
        [orjson.dumps({"id": i}) for i in range(total)],
        keys=[b"k%d" % (i % KEYS) for i in range(total)],
    )
    seen: Counter[int] = Counter()
    lock = threading.Lock()

    @app.handler(
        source,
        output=output,
        ordering="key",
        concurrency=4,
        retries=1,
        backoff=Backoff(initial=0.01),
        **options,
    )
    def copy(msg: Message[dict[str, Any]]) -> dict[str, Any]:
        number = msg.value["id"]
        with lock:
            seen[number] += 1
            first = seen[number] == 1
        return {"id": number, "pad": "x" * (30_000 if number == refused and first else 10)}

    return seen


POISON = 77


def poison_copier(
    bootstrap: str, admin: AdminClient, app: App, source: str, dlq: str, **options: Any
) -> tuple[str, int]:
    """200 inputs on `source` (2 partitions), copied by a handler of `app` (retries=2, then
    `dlq`) whose output of input POISON the broker always refuses; its output topic and the
    input count."""
    output = refusing_topic(admin, 2)
    total = 200
    produce(bootstrap, source, [orjson.dumps({"id": i}) for i in range(total)])

    @app.handler(
        source, output=output, dlq=dlq, retries=2, backoff=Backoff(initial=0.01), **options
    )
    def copy(msg: Message[dict[str, Any]]) -> dict[str, Any]:
        number = msg.value["id"]
        return {"id": number, "pad": "x" * (30_000 if number == POISON else 10)}

    return output, total
