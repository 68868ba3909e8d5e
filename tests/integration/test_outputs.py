"""At-least-once outputs against a real broker, in process: a def handler's worker runs on
while its outputs wait for their acknowledgements, so a refused output is found after later
messages of its lane ran. Those run again after it, in order, and the input is finished only
once its output is acknowledged; a record the broker always refuses ends in the DLQ."""

from __future__ import annotations

from collections import defaultdict

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from kafkaworker import App
from tests.conftest import TopicFactory
from tests.faults.test_exactly_once import read_committed
from tests.integration.refused_outputs import (
    KEYS,
    PRODUCER,
    keyed_copier,
    poison_copier,
    refusing_topic,
)
from tests.support import committed, make_settings, running, wait_until

pytestmark = pytest.mark.kafka


def test_a_refused_output_runs_its_message_again_with_the_later_ones_of_its_key_in_order(
    kafka_bootstrap: str, admin: AdminClient, new_topic: TopicFactory
) -> None:
    source = new_topic(4)
    output = refusing_topic(admin, 4)
    total = 400
    app = App("alo-refused")
    seen = keyed_copier(kafka_bootstrap, app, source, output, total=total, refused=150)

    settings = make_settings(
        kafka_bootstrap,
        kafka={"bootstrap_servers": kafka_bootstrap, "producer": PRODUCER},
    )
    with running(app, settings):
        wait_until(
            lambda: sum(committed(kafka_bootstrap, "alo-refused", source, 4).values()) == total,
            90,
            "every input committed",
        )
    outputs = [o["id"] for o in map(orjson.loads, read_committed(kafka_bootstrap, output))]
    assert set(outputs) == set(range(total))  # at least once: every input, none lost
    assert seen[150] >= 2
    # Per key, the outputs' last copies are in input order: what ran after the refused one
    # ran again after its retry (a copy of a later input last would undo the order).
    last: dict[int, dict[int, int]] = defaultdict(dict)
    for position, number in enumerate(outputs):
        last[number % KEYS][number] = position
    for key, positions in last.items():
        in_output_order = sorted(positions, key=positions.__getitem__)
        assert in_output_order == sorted(positions), (key, in_output_order)


def test_an_output_the_broker_always_refuses_dead_letters_its_message_and_loses_no_other(
    kafka_bootstrap: str, admin: AdminClient, new_topic: TopicFactory
) -> None:
    source, dlq = new_topic(2), new_topic(1, prefix="dlq")
    app = App("alo-poison")
    output, total = poison_copier(kafka_bootstrap, admin, app, source, dlq)

    settings = make_settings(
        kafka_bootstrap,
        kafka={"bootstrap_servers": kafka_bootstrap, "producer": PRODUCER},
        circuit_breaker={"enabled": False},
    )
    with running(app, settings):
        wait_until(
            lambda: sum(committed(kafka_bootstrap, "alo-poison", source, 2).values()) == total,
            90,
            "every input committed",
        )
    outputs = [o["id"] for o in map(orjson.loads, read_committed(kafka_bootstrap, output, 2))]
    assert set(outputs) == set(range(total)) - {77}
    dead = [orjson.loads(v) for v in read_committed(kafka_bootstrap, dlq, 1)]
    assert dead == [{"id": 77}]
