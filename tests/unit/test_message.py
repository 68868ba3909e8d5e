"""Message: fields, headers, decoding, acknowledgement."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Message as KafkaRecord

from kafkaworker import DeserializationError, Message
from kafkaworker.message import DispatchedMessage
from kafkaworker.runtime.handoff import Lease
from kafkaworker.runtime.source import Partition
from kafkaworker.serialization import CODECS

LEASE = Lease(Partition("orders", 3))


def test_a_message_built_by_hand_for_unit_tests() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    msg: Message[dict[str, Any]] = Message(
        "orders",
        {"id": 1},
        partition=2,
        offset=9,
        key=b"k",
        timestamp=at,
        headers=[("trace", b"a"), ("trace", b"b"), ("empty", None)],
    )
    assert (msg.topic, msg.partition, msg.offset, msg.attempt) == ("orders", 2, 9, 1)
    assert msg.value == {"id": 1}
    assert msg.key == b"k"
    assert msg.timestamp == at
    assert msg.header("trace") == b"b"  # the last one wins, as with Kafka's lastHeader()
    assert msg.header("empty") is None
    assert msg.header("missing", b"default") == b"default"


def test_ack_hands_over_to_the_runtime_callback_once() -> None:
    calls = []
    [msg] = DispatchedMessage.run_of(
        LEASE, [KafkaRecord(topic="t", value=b"1")], [0], CODECS["raw"]
    )
    msg.bind_acks(lambda: calls.append(1), lambda error: None)
    threads = [threading.Thread(target=msg.ack) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1]
    assert msg.acked
    assert not msg.claim()  # the runtime cannot report it a second time either


def test_ack_on_a_message_built_by_hand_is_harmless() -> None:
    msg: Message[Any] = Message("t", None)
    msg.ack()
    msg.ack()
    assert msg.acked


@pytest.mark.parametrize(
    ("codec", "payload", "expected"),
    [
        ("json", b'{"a": [1, 2]}', {"a": [1, 2]}),
        ("raw", b"\x00\xff", b"\x00\xff"),
        ("text", "zürich".encode(), "zürich"),
    ],
)
def test_codecs_round_trip(codec: str, payload: bytes, expected: object) -> None:
    assert CODECS[codec].decode(payload, []) == expected
    assert CODECS[codec].decode(CODECS[codec].encode(expected), []) == expected


@pytest.mark.parametrize("payload", [b"{not json", b"", b"\xff\xfe"])
def test_undecodable_json_is_a_deserialization_error_naming_the_record(payload: bytes) -> None:
    [msg] = DispatchedMessage.run_of(
        LEASE,
        [KafkaRecord(topic="orders", partition=3, offset=41, value=payload)],
        [41],
        CODECS["json"],
    )
    with pytest.raises(DeserializationError, match=r"orders\[3\]@41 with the json codec"):
        _ = msg.value


def test_an_empty_value_says_so() -> None:
    [msg] = DispatchedMessage.run_of(
        LEASE,
        [KafkaRecord(topic="orders", partition=3, offset=41, value=b"")],
        [41],
        CODECS["json"],
    )
    with pytest.raises(DeserializationError, match=r"orders\[3\]@41 .*: the value is empty"):
        _ = msg.value


def test_messages_of_a_run_carry_their_record_and_coordinates() -> None:
    records = [
        KafkaRecord(topic="t", partition=2, offset=o, key=b"k%d" % o, value=b'{"n": %d}' % o)
        for o in (5, 9)
    ]
    lease = Lease(Partition("t", 2))
    messages = DispatchedMessage.run_of(lease, records, [5, 9], CODECS["json"])
    assert [(m.topic, m.partition, m.offset, m.attempt) for m in messages] == [
        ("t", 2, 5, 1),
        ("t", 2, 9, 1),
    ]
    assert [(m.key, m.value) for m in messages] == [(b"k5", {"n": 5}), (b"k9", {"n": 9})]
    assert all(m.lease is lease for m in messages)


def test_a_message_built_with_a_raw_value_decodes_it_like_a_fetched_one() -> None:
    msg: Message[Any] = Message("orders", raw_value=b'{"id": 7}', key=b"k", partition=2)
    assert (msg.value, msg.raw_value, msg.key) == ({"id": 7}, b'{"id": 7}', b"k")
    assert (msg.topic, msg.partition, msg.offset) == ("orders", 2, 0)
    given: Message[Any] = Message("orders", {"id": 8}, raw_value=b'{"id": 7}')
    assert given.value == {"id": 8}  # a value given wins: nothing is decoded
    assert Message("orders").value is None


def test_a_fetched_message_reads_its_fields_from_the_record_and_caches_headers() -> None:
    record = KafkaRecord(
        topic="orders",
        partition=1,
        offset=9,
        key=b"k",
        value=b"{}",
        headers=[("trace", b"a")],
        timestamp=(1, 1_700_000_000_123),
    )
    [msg] = DispatchedMessage.run_of(LEASE, [record], [9], CODECS["json"])
    assert (msg.topic, msg.partition, msg.offset, msg.key, msg.raw_value) == (
        "orders",
        1,
        9,
        b"k",
        b"{}",
    )
    assert msg.headers is msg.headers  # built once
    assert msg.header("trace") == b"a"
    assert msg.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert not msg.acked
