"""The inbox under kill -9, with real `kafkaworker run` processes, a real broker and a real
PostgreSQL: a key-ordered handler with concurrency > 1 writes one ledger row per message (a
table without a unique constraint), and every message must be there exactly once."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from kafkaworker.runtime.poll import offset_map
from kafkaworker.testing.jvm import free_port
from tests.conftest import TopicFactory
from tests.inbox_support import committed_to_the_end
from tests.support import (
    ROOT,
    Feed,
    WorkerProcess,
    commits,
    end_offsets,
    produce,
    report_fault,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

LEDGER = (
    'create table ledger (partition int, "offset" bigint, key text, value text, pid int, '
    "at timestamptz default clock_timestamp())"
)


class LedgerWorker(WorkerProcess):
    """`kafkaworker run tests.apps.ledger:app [--processes N]`, with its metrics on a port of
    its own (the supervisor's, summed over its children, with N > 1)."""

    def __init__(
        self, bootstrap: str, topic: str, log: Path, *, processes: int = 1, **env: str
    ) -> None:
        self.metrics_port = free_port()
        self.processes = processes
        super().__init__(
            bootstrap, topic, log, KAFKAWORKER_METRICS__PORT=str(self.metrics_port), **env
        )

    def start(self) -> LedgerWorker:
        command = [sys.executable, "-m", "kafkaworker", "run", "tests.apps.ledger:app"]
        if self.processes > 1:
            command += ["--processes", str(self.processes)]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        """kill -9 the worker, and with --processes its children first (they run in sessions
        of their own and would outlive their supervisor): the whole host's worker dies."""
        if self.process is not None and self.processes > 1:
            listed = subprocess.run(
                ["ps", "-o", "pid=", "--ppid", str(self.process.pid)],
                capture_output=True,
                text=True,
                check=False,
            )
            for pid in listed.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        super().kill()

    @staticmethod
    def stop_all(members: list[LedgerWorker], started: list[LedgerWorker]) -> list[int]:
        """SIGTERM to the members, together (they drain at once); their exit codes. Then
        whatever of `started` is left is killed."""
        for member in members:
            if not member.exited():
                member.signal(signal.SIGTERM)
        try:
            return [member.wait(60) for member in members]
        finally:
            for member in started:
                member.kill()

    def leave(self, *, drain: bool) -> None:
        """Leave the group drained (SIGTERM, exit 0) or vanish (kill -9: its partitions move
        when its session times out)."""
        if not drain:
            self.kill()
            return
        self.signal(signal.SIGTERM)
        assert self.wait(60) == 0, self.output()[-3000:]

    def deduplicated(self) -> int | None:
        """kafkaworker_deduplicated_total from its /metrics; None while it does not answer."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as response:
                text = response.read().decode()
        except OSError:
            return None
        found = re.search(r'^kafkaworker_deduplicated_total\{handler="ledger"\} (\S+)$', text, re.M)
        return int(float(found.group(1))) if found else None


def count(url: str, query: str, args: tuple[object, ...] = ()) -> int:
    with psycopg.connect(url) as db:
        row = db.execute(query, args).fetchone()
    return int(row[0]) if row else 0


def no_client_left(url: str) -> bool:
    """No connection of a worker is left on the server: whatever a killed worker committed is
    committed, and nothing of it is still on its way."""
    return (
        count(
            url,
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and backend_type = 'client backend' and pid <> pg_backend_pid()",
        )
        == 0
    )


def recorded_above(url: str, group: str, positions: dict[int, tuple[int, str | None]]) -> int:
    """Inbox rows at or above the group's committed positions and not listed in the commits'
    offset maps: the messages the next member gets again and must finish without handling
    them (those a map lists are skipped before the inbox sees them)."""
    again = 0
    with psycopg.connect(url) as db:
        for partition, (position, metadata) in positions.items():
            finished = set(offset_map.decode(metadata, position))
            recorded = db.execute(
                'select "offset" from kafkaworker_inbox where group_id = %s and partition = %s '
                'and "offset" >= %s',
                (group, partition, max(position, 0)),
            ).fetchall()
            again += sum(1 for (offset,) in recorded if offset not in finished)
    return again


@pytest.mark.parametrize("variant", ["sync", "async", "sync --processes 2", "batch"])
def test_kill_9_mid_stream_then_restart_every_ledger_row_exactly_once(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str, tmp_path: Path, variant: str
) -> None:
    kind = variant.split(maxsplit=1)[0]
    processes = 2 if "--processes 2" in variant else 1
    # A batch handler gets through 4,000 before its third restart met its repeats (3,998
    # rows at the third kill, run of 2026-12-07; restarts take 6-9 s to meet them, the def
    # handler's too): more messages, so that the third kill still comes mid-stream.
    topic, partitions, total = new_topic(4), 4, 6000 if kind == "batch" else 4000
    group = f"g-{topic}"
    with psycopg.connect(postgres_url) as db:
        db.execute(LEDGER)
    produce(
        kafka_bootstrap,
        topic,
        [b"%d" % i for i in range(total)],
        keys=[b"k%d" % (i % 40) for i in range(total)],
    )
    env = {
        "LEDGER_URL": postgres_url,
        "LEDGER_TOPIC": topic,
        "LEDGER_GROUP": group,
        "LEDGER_CONCURRENCY": "6",
        # A batch of 50 runs as fast as 50 single calls in parallel lanes, which would finish
        # the stream before the third kill (3,998 of 4,000 rows at 0.002 s, run of 2026-12-07).
        "LEDGER_SLEEP": "0.006" if kind == "batch" else "0.002",
        "LEDGER_ASYNC": "1" if kind == "async" else "0",
        # A batch handler: one transaction per batch of up to 50 (a lane's messages).
        "LEDGER_BATCH": "50" if kind == "batch" else "0",
    }
    rows = "select count(*) from ledger"
    log = tmp_path / "ledger.txt"
    expected_repeats = 0  # what the next worker must find recorded, summed
    repeats = None
    at_kill_rows = 0
    for _ in range(3):
        worker = LedgerWorker(kafka_bootstrap, topic, log, processes=processes, **env).start()
        started = time.monotonic()
        try:
            if repeats is None:
                wait_until(lambda: count(postgres_url, rows) >= 500, 120, "500 ledger rows")
            else:
                # The messages recorded above the last kill's committed positions come back
                # (each key's lane starts with its own) and are finished uncalled; the other
                # lanes handle new messages meanwhile, so the kill comes mid-stream. After a
                # kill with nothing above (a batch handler's commits can cover all it
                # finished), 200 rows more: else the next kill would come at once, at the
                # same rows (three kills at 526 rows, a run of 2026-12-07).
                wait_until(
                    lambda w=worker, r=repeats, at=at_kill_rows: (
                        w.deduplicated() == r and (r > 0 or count(postgres_url, rows) >= at + 200)
                    ),
                    60,
                    f"{repeats} repeats" + ("" if repeats else " and 200 rows more"),
                )
            print(f"restarted: {time.monotonic() - started:.1f} s to the kill")
            assert count(postgres_url, rows) < total, "killed after the end, not mid-stream"
        finally:
            worker.kill()  # SIGKILL: no drain, no commit, no leaving the group
        wait_until(lambda: no_client_left(postgres_url), 30, "the killed worker's connections")
        at_kill = commits(kafka_bootstrap, group, topic, partitions)
        positions = {p: offset for p, (offset, _) in at_kill.items()}
        repeats = recorded_above(postgres_url, group, at_kill)
        expected_repeats += repeats
        at_kill_rows = count(postgres_url, rows)
        print(f"killed at {at_kill_rows} rows; committed {positions}; {repeats} above")

    worker = LedgerWorker(kafka_bootstrap, topic, log, processes=processes, **env).start()
    try:
        wait_until(lambda: count(postgres_url, rows) >= total, 120, "every ledger row")
        committed_to_the_end(kafka_bootstrap, group, topic, partitions, 60)
        wait_until(lambda: worker.deduplicated() == repeats, 30, f"the last {repeats} repeats")
        final_repeats = worker.deduplicated()
    finally:
        worker.signal(signal.SIGTERM)
        assert worker.wait(45) == 0, worker.output()[-3000:]

    lost = count(
        postgres_url,
        'select %s - count(distinct (partition, "offset")) from ledger',
        (total,),
    )
    duplicates = count(
        postgres_url, 'select count(*) - count(distinct (partition, "offset")) from ledger'
    )
    assert (lost, duplicates) == (0, 0)
    assert count(postgres_url, rows) == total
    # The kills left messages recorded but not committed in Kafka, and the restarts found them.
    assert expected_repeats > 0
    assert final_repeats == repeats
    report_fault(
        f"inbox: worker killed (kill -9) three times, key order, concurrency 6, {kind} handler, "
        f"--processes {processes}",
        total,
        lost,
        duplicates,
        None,
    )
    print(f"repeats finished uncalled after the kills: {expected_repeats}")


STORM_PARTITIONS = 8
# Four cycles, not the exactly-once storm's six: a joiner after a kill -9 waits out the dead
# member's session (6 s) before the group rebalances, and six cycles took 76-87 s on the loaded
# 2-core machine (2026-12-07), past this test's 60 s budget.
STORM_CYCLES = 4


def test_a_rebalance_storm_with_the_inbox_writes_each_ledger_row_once(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str, tmp_path: Path
) -> None:
    """Proof 3: three members, then four cycles of one joining and, once it wrote a ledger
    row (or after 4 s: it may be given nothing at first), the oldest leaving, alternately with
    SIGTERM (it drains and leaves) and kill -9 (its partitions move when its session times
    out, with transactions it committed above the group's offsets). Every rebalance hands
    partitions over with messages recorded in the inbox and not committed in Kafka; the
    ledger (no unique constraint) must hold each record the log has exactly once. The default
    (classic) protocol only: both protocols' storms without the inbox are test_rebalance_storm;
    here the question is the inbox's, and CI time is tight. (The consumer protocol, tried once
    on 2026-12-07: 23,784 records, each once, but 109 s, most of it the drain after the last
    kill.)"""
    topic = new_topic(STORM_PARTITIONS)
    group = f"g-{topic}"
    with psycopg.connect(postgres_url) as db:
        db.execute(LEDGER)
    env = {
        "LEDGER_URL": postgres_url,
        "LEDGER_TOPIC": topic,
        "LEDGER_GROUP": group,
        "LEDGER_CONCURRENCY": "4",
        "LEDGER_SLEEP": "0.002",
    }
    log = tmp_path / "ledger.txt"
    rows = "select count(*) from ledger"
    # The broker serves the new topic's metadata before the feed starts: a feed whose first
    # produce met it unknown died with _UNKNOWN_TOPIC once (a broker started on a loaded
    # machine, 42 s of fixture set-up).
    produce(kafka_bootstrap, topic, [b"first"])
    feed = Feed(kafka_bootstrap, topic, rate=500)
    members = [LedgerWorker(kafka_bootstrap, topic, log, **env).start() for _ in range(3)]
    everyone = list(members)
    try:
        wait_until(lambda: count(postgres_url, rows) >= 300, 60, "the first members working")
        for cycle in range(STORM_CYCLES):
            joining = LedgerWorker(kafka_bootstrap, topic, log, **env).start()
            everyone.append(joining)
            members.append(joining)
            joined = time.monotonic()
            while time.monotonic() < joined + 4 and not count(
                postgres_url, "select count(*) from ledger where pid = %s", (joining.pid,)
            ):
                assert not joining.exited(), joining.output()[-3000:]
                time.sleep(0.2)
            working = time.monotonic()
            members.pop(0).leave(drain=cycle % 2 == 0)
            assert not any(m.exited() for m in members), [m.output()[-2000:] for m in members]
            print(
                f"cycle {cycle}: joiner working after {working - joined:.1f} s, "
                f"the oldest left in {time.monotonic() - working:.1f} s"
            )
        feed.stop()
        committed_to_the_end(kafka_bootstrap, group, topic, STORM_PARTITIONS, 90)
        repeats = sum(m.deduplicated() or 0 for m in members)
    finally:
        codes = LedgerWorker.stop_all(members, everyone)
    assert codes == [0] * len(members), [m.output()[-2000:] for m in members]

    total = sum(end_offsets(kafka_bootstrap, topic, STORM_PARTITIONS).values())
    with psycopg.connect(postgres_url) as db:
        handled = {
            (int(p), int(o)) for p, o in db.execute('select partition, "offset" from ledger')
        }
    lost = len(feed.acked - handled) + total - len(handled)
    duplicates = count(postgres_url, rows) - len(handled)
    assert feed.acked <= handled
    assert (count(postgres_url, rows), lost, duplicates) == (total, 0, 0)
    # The members left met messages recorded and not committed (5-423 over five runs): the
    # storm did hand over work the inbox had to stop, not only clean partitions.
    assert repeats > 0
    report_fault(
        f"inbox: rebalance storm, {STORM_CYCLES} join/leave cycles (SIGTERM and kill -9), "
        "3-4 members, key order, concurrency 4, classic protocol",
        total,
        lost,
        duplicates,
        None,
    )
    print(f"{total} records; repeats finished uncalled by the members left: {repeats}")
