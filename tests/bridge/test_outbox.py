"""The bridge with --outbox, a real process against the suite's broker and a real PostgreSQL:
an RPC answered OK is committed to the outbox, and its relay publishes it with the answer's
outbox_id as kw.outbox.id, in order per key; a bridge killed -9 while RPCs come in loses no
acknowledged record: another bridge on the same table publishes what the dead one had not."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import grpc
import psycopg
import pytest

from apps.bridge.proto import bridge_pb2 as pb
from apps.bridge.proto import bridge_pb2_grpc
from tests.bridge.conftest import BridgeFactory, committed_records
from tests.conftest import TopicFactory
from tests.support import read_topic, wait_until

pytestmark = pytest.mark.kafka


def outbox_id(record: Any) -> int:
    return int(dict(record.headers() or [])["kw.outbox.id"])


def unpublished(url: str) -> int:
    with psycopg.connect(url) as db:
        row = db.execute(
            "select count(*) from kafkaworker_outbox where published_at is null"
        ).fetchone()
    return int(row[0]) if row else -1


def test_an_rpc_is_answered_with_its_outbox_id_and_the_relay_publishes_it_in_key_order(
    start_bridge: BridgeFactory, new_topic: TopicFactory, kafka_bootstrap: str, postgres_url: str
) -> None:
    topic = new_topic(3)
    bridge = start_bridge("--outbox", env={"KAFKAWORKER_POSTGRES__URL": postgres_url})
    replies: dict[int, tuple[bytes, bytes]] = {}
    with grpc.insecure_channel(bridge.address) as channel:
        stub = bridge_pb2_grpc.OrderBridgeStub(channel)
        for i in range(60):
            key, value = f"k{i % 4}".encode(), str(i).encode()
            reply = stub.Publish(pb.PublishRequest(topic=topic, key=key, value=value), timeout=10)
            assert (reply.partition, reply.offset) == (-1, -1)
            assert reply.outbox_id > 0
            replies[reply.outbox_id] = (key, value)
        with pytest.raises(grpc.RpcError) as missing:
            stub.Publish(pb.PublishRequest(topic="no-such-topic", value=b"x"), timeout=10)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    records = read_topic(kafka_bootstrap, topic, 60)
    assert {outbox_id(r): (r.key(), r.value()) for r in records} == replies
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition(), r.offset())):
        by_key[record.key()].append(int(record.value()))
    assert all(values == sorted(values) for values in by_key.values()), by_key
    wait_until(lambda: unpublished(postgres_url) == 0, 30, "every row marked published")


def test_a_bridge_killed_mid_stream_loses_no_acknowledged_record(
    start_bridge: BridgeFactory, new_topic: TopicFactory, kafka_bootstrap: str, postgres_url: str
) -> None:
    """Callers keep calling the first bridge until it is killed -9 (about 200 answered OK);
    a second bridge's relay then publishes whatever the first had committed and not sent."""
    topic = new_topic(3)
    env = {"KAFKAWORKER_POSTGRES__URL": postgres_url}
    first = start_bridge("--outbox", env=env)
    acknowledged: set[int] = set()
    lock = threading.Lock()
    enough = threading.Event()

    def call(caller: int) -> None:
        with grpc.insecure_channel(first.address) as channel:
            stub = bridge_pb2_grpc.OrderBridgeStub(channel)
            for i in range(10_000):
                request = pb.PublishRequest(topic=topic, key=f"c{caller}".encode(), value=b"%d" % i)
                try:
                    reply = stub.Publish(request, timeout=5)
                except grpc.RpcError:
                    return  # the bridge is gone: this answer was never OK
                with lock:
                    acknowledged.add(reply.outbox_id)
                    if len(acknowledged) >= 200:
                        enough.set()

    callers = [threading.Thread(target=call, args=(c,)) for c in range(4)]
    for caller in callers:
        caller.start()
    assert enough.wait(60), first.output()
    first.kill()
    for caller in callers:
        caller.join(30)
    start_bridge("--outbox", env=env)
    wait_until(lambda: unpublished(postgres_url) == 0, 60, "the second relay drains the table")
    with psycopg.connect(postgres_url) as db:
        rows = db.execute("select count(*) from kafkaworker_outbox").fetchone()
    assert rows is not None
    # All of them: a row the first relay had sent and not marked is on the topic twice.
    published = {outbox_id(r) for r in committed_records(kafka_bootstrap, topic, 3)}
    assert acknowledged <= published, sorted(acknowledged - published)[:10]
    # A committed row whose answer the kill cut off is published too: at least once.
    assert len(published) == int(rows[0])


def test_a_write_the_database_refuses_is_unavailable_and_not_written(
    start_bridge: BridgeFactory, new_topic: TopicFactory, postgres_url: str
) -> None:
    """The outbox table renamed away under the bridge: its insert fails before any commit, so
    the answer is UNAVAILABLE (certainly not written); with the table back, OK again."""
    topic = new_topic(1)
    bridge = start_bridge("--outbox", env={"KAFKAWORKER_POSTGRES__URL": postgres_url})
    with grpc.insecure_channel(bridge.address) as channel:
        stub = bridge_pb2_grpc.OrderBridgeStub(channel)
        first = stub.Publish(pb.PublishRequest(topic=topic, value=b"1"), timeout=10)
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute("alter table kafkaworker_outbox rename to kafkaworker_outbox_away")
        with pytest.raises(grpc.RpcError) as refused:
            stub.Publish(pb.PublishRequest(topic=topic, value=b"2"), timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "not written to the outbox" in str(refused.value.details())
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute("alter table kafkaworker_outbox_away rename to kafkaworker_outbox")
            ids = [r[0] for r in db.execute("select id from kafkaworker_outbox").fetchall()]
        assert ids == [first.outbox_id]
        again = stub.Publish(pb.PublishRequest(topic=topic, value=b"3"), timeout=10)
        assert again.outbox_id > first.outbox_id
