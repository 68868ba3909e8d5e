"""exactly_once end to end, with real `kafkaworker run` processes on a real broker: workers
killed with kill -9 mid-stream and restarted, members leaving and joining; a read_committed
reader of the output topic must see every input's output exactly once, in each key's order.
Modelled on Kafka's transactions system test (tests/kafkatest/tests/core/transactions_test.py):
hard bounces of the clients, then a read_committed consumer checks set equality."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from tests.conftest import TopicFactory
from tests.support import ROOT, Feed, committed, end_offsets, report_fault, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 4
# EOS_GUARANTEE=at_least_once runs the same tests at least once: they must fail (duplicates).
GUARANTEE = os.environ.get("EOS_GUARANTEE", "exactly_once")


def start(bootstrap: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A copier worker, once its topics are in the cluster's metadata: a topic created a
    moment ago may not be yet, and the worker's start-up check then refuses its output (seen
    once in a run of the whole file)."""
    topics = [env[name] for name in ("EOS_TOPIC", "EOS_OUTPUT", "EOS_SIDE") if name in env]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wait_until(
        lambda: set(topics) <= set(admin.list_topics(timeout=10).topics),
        30,
        f"{topics} in the metadata",
    )
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kafkaworker", "run", "tests.apps.eos_copier:app"],
            cwd=ROOT,
            env={
                **os.environ,
                "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "KAFKAWORKER_KAFKA__CONSUMER": '{"session.timeout.ms": 6000}',
                **env,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def finished(bootstrap: str, group: str, topic: str) -> int:
    """Inputs committed by the group (the sum of its positions)."""
    return sum(max(0, offset) for offset in committed(bootstrap, group, topic, PARTITIONS).values())


def settled(bootstrap: str, topic: str, partitions: int, timeout: float) -> None:
    """Until each partition's last stable offset is its log end: a killed member's open
    transaction holds it until the next producer of its transactional.id fences it, or the
    coordinator aborts it (transaction.timeout.ms, then its clean-up pass: 10 s + 10 s here)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tps = [TopicPartition(topic, p) for p in range(partitions)]

    def ends(isolation: IsolationLevel) -> dict[int, int]:
        request = {tp: OffsetSpec.latest() for tp in tps}
        found = admin.list_offsets(request, isolation_level=isolation, request_timeout=10)
        return {tp.partition: future.result().offset for tp, future in found.items()}

    wait_until(
        lambda: ends(IsolationLevel.READ_COMMITTED) == ends(IsolationLevel.READ_UNCOMMITTED),
        timeout,
        f"no transaction open on {topic}",
    )


def read_committed(
    bootstrap: str, topic: str, partitions: int = PARTITIONS, timeout: float = 60
) -> list[bytes]:
    """Every record of `topic` a read_committed consumer sees, in each partition's order, once
    no transaction is open on it (a read_committed reader's end of a partition is its last
    stable offset, so before then it would stop short of what later transactions committed)."""
    settled(bootstrap, topic, partitions, timeout)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.monotonic_ns()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[bytes] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"{topic} not read to its end in {timeout}s"
            for record in consumer.consume(1000, timeout=0.5):
                error = record.error()
                if error is None:
                    records.append(record.value() or b"")
                    at_end.discard(record.partition())
                elif error.code() == error._PARTITION_EOF:
                    at_end.add(record.partition())
    finally:
        consumer.close()
    return records


def check_exactly_once(
    outputs: list[int], total: int, scenario: str, recovery: float | None = None
) -> None:
    """Inputs 0..total-1 (Feed's values, keyed k{value % 64}) each output once, each key's
    outputs in input order; the row goes to the fault table."""
    counts = Counter(outputs)
    lost = total - len(counts)
    duplicates = sum(n - 1 for n in counts.values())
    report_fault(scenario, total, lost, duplicates, recovery)
    assert (lost, duplicates) == (0, 0), f"{lost} lost, {duplicates} duplicated"
    assert set(counts) == set(range(total))
    by_key: dict[int, list[int]] = {}
    for output in outputs:  # a key's outputs are in one partition, read in its order
        by_key.setdefault(output % 64, []).append(output)
    assert all(ids == sorted(ids) for ids in by_key.values()), "a key's outputs out of order"


def copier(new_topic: TopicFactory, **env: str) -> tuple[str, str, str, dict[str, str]]:
    """A source and an output topic, the group, and the copier's environment with `env`."""
    source, output = new_topic(PARTITIONS), new_topic(PARTITIONS, prefix="out")
    group = f"eos-{source}"
    env = {"EOS_TOPIC": source, "EOS_OUTPUT": output, "EOS_GROUP": group, **env}
    return source, output, group, env


def await_finished(  # noqa: PLR0917 - the group's and the wait's
    bootstrap: str, group: str, topic: str, alive: Callable[[], bool], count: int, what: str
) -> None:
    """Until the group committed `count` inputs of `topic`, its members `alive` meanwhile."""
    wait_until(lambda: alive() and finished(bootstrap, group, topic) >= count, 120, what)


def drained(
    bootstrap: str,
    feed: Feed,
    source: tuple[str, str],
    alive: Callable[[], bool],
    what: str = "every input committed",
) -> int:
    """Stop the feed and wait until the group committed all of it: the inputs fed."""
    group, topic = source
    total = fed(feed)
    await_committed_to_end(bootstrap, group, topic, alive, what)
    return total


def bounce(
    bootstrap: str, env: dict[str, str], log: Path, until: tuple[str, str, int], how: str
) -> None:
    """A worker started and, once the group committed `until`'s count of its topic, and at
    least 500 more than before it started (so it is past its start-up and working: a SIGTERM
    before its handlers are installed kills it), killed (how="kill": kill -9) or stopped
    (how="term": SIGTERM, which must exit 0)."""
    group, topic, count = until
    count = max(count, finished(bootstrap, group, topic) + 500)
    worker = start(bootstrap, env, log)
    try:
        await_finished(
            bootstrap,
            group,
            topic,
            lambda: running(worker, log),
            count,
            f"{count} inputs committed before {how}",
        )
    finally:
        if how == "term":
            stop(worker)
        else:
            worker.kill()
            worker.wait()


def fed(feed: Feed) -> int:
    """Stop the feed: the inputs the broker acknowledged (all it was given)."""
    feed.stop()
    assert (feed.failed, feed.unplaced) == (0, 0), feed.status()
    return len(feed.acked)


def await_committed_to_end(
    bootstrap: str, group: str, topic: str, alive: Callable[[], bool], what: str
) -> None:
    """Until the group committed every input of `topic`, its members `alive` meanwhile."""
    ends = end_offsets(bootstrap, topic, PARTITIONS)
    wait_until(
        lambda: alive() and committed(bootstrap, group, topic, PARTITIONS) == ends, 120, what
    )


def aborted(log: Path) -> int:
    """Transactions the worker aborted (its log: one line each, renewed producers included)."""
    text = log.read_text()
    return text.count("transaction aborted") + text.count("starting a fresh one")


def check_output_once(
    bootstrap: str,
    output: str,
    total: int,
    scenario: str,
    *,
    log: Path | None = None,
    recovery: float | None = None,
) -> int:
    """check_exactly_once of what a read_committed reader of `output` sees; with the workers'
    `log`, the row says how many transactions they aborted. Returns that count (0 without)."""
    outputs = [int(v) for v in read_committed(bootstrap, output)]
    if log is None:
        check_exactly_once(outputs, total, scenario, recovery)
        return 0
    aborts = aborted(log)
    check_exactly_once(outputs, total, f"{scenario} ({aborts} transactions aborted)", recovery)
    return aborts


def running(worker: subprocess.Popen[bytes], log: Path) -> bool:
    assert worker.poll() is None, f"the worker exited: {log.read_text()[-2000:]}"
    return True


def stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        assert worker.wait(45) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_kill_9_mid_stream_and_restart_output_each_input_exactly_once(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, kind: str
) -> None:
    side = new_topic(PARTITIONS, prefix="side")
    source, output, group, env = copier(
        new_topic,
        EOS_SIDE=side,  # app.producer.send during the call: in the transaction too
        EOS_ASYNC="1" if kind == "async" else "0",
        # The same identity across restarts: the restarted member fences its predecessor's
        # open transaction at once (init_transactions).
        KAFKAWORKER_MEMBER="m1",
    )
    log = tmp_path / "worker.log"
    feed = Feed(kafka_bootstrap, source, rate=1500)
    kills = 0
    try:
        for kill_at in (2000, 6000, 10000):
            # SIGKILL: mid-stream, a transaction likely open or committing
            bounce(kafka_bootstrap, env, log, (group, source, kill_at), "kill")
            kills += 1
    finally:
        total = fed(feed)
    assert finished(kafka_bootstrap, group, source) < total, "killed after the end"
    worker = start(kafka_bootstrap, env, log)
    try:
        await_committed_to_end(
            kafka_bootstrap,
            group,
            source,
            lambda: running(worker, log),
            "every input committed after the restarts",
        )
    finally:
        stop(worker)
    assert kills == 3
    check_output_once(
        kafka_bootstrap, output, total, f"{GUARANTEE} copier, kill -9 x3 ({kind} def)"
    )
    check_output_once(
        kafka_bootstrap, side, total, f"{GUARANTEE} app.producer.send in the handler, kill -9 x3"
    )
    assert "transactional producer was fenced" not in log.read_text()


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_members_joining_leaving_and_killed_output_each_input_exactly_once(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, protocol: str
) -> None:
    """Two members: a second joins (the first's revoke commits its committable work in a
    transaction), the first leaves with SIGTERM (its shutdown commits) and comes back, the
    second is killed with kill -9 (its open work is redone by the first)."""
    source, output, group, env = copier(new_topic, KAFKAWORKER_KAFKA__GROUP_PROTOCOL=protocol)
    if protocol == "consumer":
        env["KAFKAWORKER_KAFKA__CONSUMER"] = "{}"  # KIP-848: session timeouts are broker-side
    log = tmp_path / "workers.log"
    feed = Feed(kafka_bootstrap, source, rate=1500)
    workers: dict[str, subprocess.Popen[bytes]] = {}

    def until(count: int, what: str) -> None:
        wait_until(
            lambda: (
                all(running(w, log) for w in workers.values())
                and finished(kafka_bootstrap, group, source) >= count
            ),
            120,
            what,
        )

    try:
        workers["a"] = start(kafka_bootstrap, {**env, "KAFKAWORKER_MEMBER": "a"}, log)
        until(2000, "2000 inputs committed by the first member")
        workers["b"] = start(kafka_bootstrap, {**env, "KAFKAWORKER_MEMBER": "b"}, log)
        until(6000, "6000 inputs committed with a second member")
        stop(workers.pop("a"))
        until(9000, "9000 inputs committed after the first left")
        workers["a"] = start(kafka_bootstrap, {**env, "KAFKAWORKER_MEMBER": "a"}, log)
        until(13000, "13000 inputs committed after the first came back")
        killed = workers.pop("b")
        killed.kill()
        killed.wait()
        until(16000, "16000 inputs committed after the second was killed")
        total = drained(
            kafka_bootstrap,
            feed,
            (group, source),
            lambda: all(running(w, log) for w in workers.values()),
        )
    finally:
        feed.stop()
        for worker in workers.values():
            stop(worker)
    check_output_once(
        kafka_bootstrap,
        output,
        total,
        f"{GUARANTEE} copier, 2 members: join, SIGTERM, kill -9 ({protocol})",
    )
    assert "transactional producer was fenced" not in log.read_text()


def test_a_zombie_thawed_after_its_session_commits_nothing(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    """A member frozen (SIGSTOP) past its session timeout while it holds finished work: the
    group gives its partitions to the other member; thawed, its next transaction carries a
    generation that is gone (KIP-447), so the broker refuses its offsets and it aborts. None of
    its writes becomes visible, and it rejoins and carries on."""
    source, output, group, env = copier(new_topic)
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
    feed = Feed(kafka_bootstrap, source, rate=800)
    workers = {
        name: start(kafka_bootstrap, {**env, "KAFKAWORKER_MEMBER": name}, logs[name])
        for name in ("a", "b")
    }

    def until(count: int, what: str) -> None:
        wait_until(
            lambda: (
                all(running(workers[n], logs[n]) for n in workers)
                and finished(kafka_bootstrap, group, source) >= count
            ),
            120,
            what,
        )

    try:
        until(3000, "3000 inputs committed by two members")
        workers["a"].send_signal(signal.SIGSTOP)
        try:
            until(6000, "6000 inputs committed while a is frozen")
            time.sleep(7.0)  # the freeze must outlast the 6 s session timeout
        finally:
            workers["a"].send_signal(signal.SIGCONT)
        until(9000, "9000 inputs committed after a thawed")
        total = drained(
            kafka_bootstrap,
            feed,
            (group, source),
            lambda: all(running(w, logs[n]) for n, w in workers.items()),
        )
    finally:
        feed.stop()
        for worker in workers.values():
            stop(worker)
    check_output_once(
        kafka_bootstrap, output, total, f"{GUARANTEE} copier, a member frozen past its session"
    )
    thawed = logs["a"].read_text()
    assert "partitions lost" in thawed or "transaction aborted" in thawed


def test_a_handler_stalled_past_the_transaction_timeout_outputs_each_input_exactly_once(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    """librdkafka's trap (a handler stalled past transaction.timeout.ms, here 3 s: the
    coordinator aborts a transaction open that long and fences its producer's epoch) cannot
    bite: no transaction is open while handlers run, the stalled message's partition only
    holds its committable position, and the later messages' writes wait in HeldWrites. Six
    inputs stall 5 s each (their keys' successors wait behind them); every transaction commits
    (none aborted) and each input is output once. A runtime that opened its transaction with
    the first write of a message still running would see it aborted by the broker and fail."""
    source, output, group, env = copier(
        new_topic,
        EOS_STALL_EVERY="1000",
        EOS_STALL="5",
        KAFKAWORKER_MEMBER="m1",
        # librdkafka refuses a delivery timeout longer than the transaction's.
        KAFKAWORKER_KAFKA__PRODUCER='{"transaction.timeout.ms": 3000, "delivery.timeout.ms": 3000}',
    )
    log = tmp_path / "worker.log"
    worker = start(kafka_bootstrap, env, log)
    feed = Feed(kafka_bootstrap, source, rate=1500)
    try:
        wait_until(
            lambda: running(worker, log) and len(feed.acked) >= 6000,
            60,
            "6000 inputs produced (six of them stall)",
        )
        total = drained(kafka_bootstrap, feed, (group, source), lambda: running(worker, log))
    finally:
        feed.stop()
        stop(worker)
    aborts = check_output_once(
        kafka_bootstrap,
        output,
        total,
        f"{GUARANTEE} copier, {total // 1000} handler calls stalled 5 s past a 3 s "
        "transaction.timeout.ms",
        log=log,
    )
    assert aborts == 0, log.read_text()[-3000:]


STORM_CYCLES = 6


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_a_rebalance_storm_outputs_each_input_exactly_once(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, protocol: str
) -> None:
    """Proof 4: three members, then six cycles of one joining and, once the group committed
    more, the oldest leaving, alternately with SIGTERM (its revoke and shutdown commit what is
    committable in a transaction) and kill -9 (its open transaction is fenced by the next
    joiner, which takes its identity as a restarted pod would). Every rebalance moves
    partitions between members with held writes and transactions in flight; a read_committed
    reader must still see each input once, in each key's order."""
    source, output, group, env = copier(new_topic, KAFKAWORKER_KAFKA__GROUP_PROTOCOL=protocol)
    if protocol == "consumer":
        env["KAFKAWORKER_KAFKA__CONSUMER"] = "{}"  # KIP-848: session timeouts are broker-side
    log = tmp_path / "workers.log"
    feed = Feed(kafka_bootstrap, source, rate=1000)
    names = iter(f"s{n}" for n in range(100))
    members: list[tuple[str, subprocess.Popen[bytes]]] = []
    free: list[str] = []  # identities of members killed: the next joiner takes one

    def join() -> None:
        name = free.pop() if free else next(names)
        worker = start(kafka_bootstrap, {**env, "KAFKAWORKER_MEMBER": name}, log)
        members.append((name, worker))
        # Past its start-up (a SIGTERM before it exits 143 at once, as documented), so that a
        # member stopped later leaves the group with its revoke and shutdown commits.
        started = re.compile(rf"worker started .*pid={worker.pid}\b")
        wait_until(
            lambda: running(worker, log) and bool(started.search(log.read_text())),
            60,
            f"member {name} started",
        )

    def progress(more: int, what: str) -> None:
        await_finished(
            kafka_bootstrap,
            group,
            source,
            lambda: all(running(w, log) for _, w in members),
            finished(kafka_bootstrap, group, source) + more,
            what,
        )

    try:
        for _ in range(3):
            join()
        progress(1000, "1000 inputs committed by three members")
        for cycle in range(STORM_CYCLES):
            join()
            progress(300, f"cycle {cycle}: 300 more inputs committed after a member joined")
            name, leaving = members.pop(0)
            if cycle % 2 == 0:
                stop(leaving)
            else:
                leaving.kill()
                leaving.wait()
                free.append(name)
            progress(300, f"cycle {cycle}: 300 more inputs committed after a member left")
        total = drained(
            kafka_bootstrap,
            feed,
            (group, source),
            lambda: all(running(w, log) for _, w in members),
            "every input committed after the storm",
        )
    finally:
        feed.stop()
        for _, worker in members:
            stop(worker)
    check_output_once(
        kafka_bootstrap,
        output,
        total,
        f"{GUARANTEE} copier, rebalance storm: {STORM_CYCLES} join/leave cycles (SIGTERM and "
        f"kill -9), 3-4 members, {protocol} protocol",
        log=log,
    )
    assert "transactional producer was fenced" not in log.read_text()


class ConcurrentReader:
    """A read_committed consumer of `topic` from its start, on its own thread for the whole
    test, as Kafka's transactions system test runs one: it must never see an output twice,
    even while members die with transactions open. The test owns it and stops it (stop())."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.values: list[int] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{time.monotonic_ns()}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="read-committed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            for record in self._consumer.consume(1000, timeout=0.2):
                if record.error() is None:
                    self.values.append(int(record.value() or b"-1"))

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)
        self._consumer.close()


def test_50000_inputs_through_5_kills_and_2_sigterms_with_a_reader_throughout(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    """Proof 1 at full size: at least 50,000 keyed inputs; the worker is killed with kill -9
    five times and stopped with SIGTERM twice mid-stream, each time restarted with the same
    identity; a read_committed consumer reads the output all along. Both it and a reader
    started at the end see each input once, in each key's order."""
    source, output, group, env = copier(new_topic, KAFKAWORKER_MEMBER="m1")
    log = tmp_path / "worker.log"
    reader = ConcurrentReader(kafka_bootstrap, output)
    feed = Feed(kafka_bootstrap, source, rate=2500)
    stops = ["kill", "kill", "term", "kill", "kill", "term", "kill"]
    try:
        for n, how in enumerate(stops):
            bounce(kafka_bootstrap, env, log, (group, source, 6000 * (n + 1)), how)
            if len(feed.acked) >= 50_000:
                feed.stop()
        wait_until(lambda: len(feed.acked) >= 50_000, 60, "50,000 inputs produced")
        total = fed(feed)
        assert finished(kafka_bootstrap, group, source) < total, "stopped after the end"
        worker = start(kafka_bootstrap, env, log)
        try:
            await_committed_to_end(
                kafka_bootstrap, group, source, lambda: running(worker, log), "every input"
            )
        finally:
            stop(worker)
        outputs = [int(v) for v in read_committed(kafka_bootstrap, output)]
        wait_until(lambda: len(reader.values) >= len(outputs), 30, "the reader at the end")
    finally:
        feed.stop()
        reader.stop()
    aborts = aborted(log)
    check_exactly_once(
        outputs,
        total,
        f"{GUARANTEE} copier, kill -9 x5 and SIGTERM x2 mid-stream ({aborts} transactions aborted)",
    )
    check_exactly_once(
        reader.values,
        total,
        f"{GUARANTEE} copier, the same seen by a read_committed reader throughout",
    )


def test_a_transaction_timed_out_by_the_coordinator_is_aborted_and_redone(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    """The abortable case of a stall: the whole worker frozen (SIGSTOP) while a transaction is
    open, past `transaction.timeout.ms` (2 s) and the coordinator's clean-up pass (10 s), but
    within its session (30 s): the coordinator aborts the transaction and bumps the producer's
    epoch. Thawed, the worker's transaction fails (its records timed out: abortable), and its
    commit or abort is refused as "fenced by a newer instance" (fatal): a fresh producer of the
    same transactional.id carries on, the partitions are rewound and delivered again, the
    member keeps them. Before that fix the handler stopped here (2 runs of 3). Transactions run
    back to back (an interval of 1 ms) so that a freeze almost always lands in one; it is
    repeated until an abort is seen."""
    source, output, group, env = copier(
        new_topic,
        KAFKAWORKER_MEMBER="m1",
        KAFKAWORKER_TRANSACTION_INTERVAL="0.001",
        KAFKAWORKER_KAFKA__PRODUCER='{"transaction.timeout.ms": 2000, "delivery.timeout.ms": 2000}',
        KAFKAWORKER_KAFKA__CONSUMER='{"session.timeout.ms": 30000}',  # the freeze is within it
    )
    log = tmp_path / "worker.log"
    feed = Feed(kafka_bootstrap, source, rate=1000)
    worker = start(kafka_bootstrap, env, log)
    freezes = 0
    try:
        alive = lambda: running(worker, log)  # noqa: E731
        await_finished(kafka_bootstrap, group, source, alive, 2000, "2000 inputs committed")
        while aborted(log) == 0 and freezes < 4:
            worker.send_signal(signal.SIGSTOP)
            try:
                time.sleep(13.0)  # a freeze: past the transaction's timeout and the clean-up
            finally:
                worker.send_signal(signal.SIGCONT)
            freezes += 1
            done = finished(kafka_bootstrap, group, source)
            await_finished(kafka_bootstrap, group, source, alive, done + 1000, "thawed, working")
        total = drained(kafka_bootstrap, feed, (group, source), alive)
    finally:
        feed.stop()
        stop(worker)
    aborts = check_output_once(
        kafka_bootstrap,
        output,
        total,
        f"{GUARANTEE} copier, frozen {freezes} x 13 s past a 2 s transaction.timeout.ms",
        log=log,
    )
    assert aborts >= 1, log.read_text()[-3000:]
    assert "partitions lost" not in log.read_text()
