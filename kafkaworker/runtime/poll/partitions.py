"""The partitions this member owns, on the poll side: each one's state during one assignment
(PartitionState), which of its offsets may be committed (PartitionOffsets), and how a fetched
batch becomes runs of their messages (Intake). The poll thread's alone; the execute side sees a
partition only through its lease (runtime/handoff.py).

Kafka commits a position, not a set: committing N says "every offset below N is done". With
parallel handlers, offsets finish out of order, so the committable position is the lowest
offset still unfinished (or one past the last offset seen when everything is finished).
Offsets need not be contiguous (compaction and transaction markers leave gaps), so the tracker
remembers the offsets it was given rather than assuming offset + 1.

Records come in runs of one partition: the per-partition work (state lookup, offset tracking,
counting) is done once per run, only the Message once per record. Records of a partition this
member does not own (any more) are dropped: the owner fetches them from the committed
position. Records of a delayed retry topic that are not due yet are held (poll/delayed.py).
The usual batch of a one-topic handler (no error record, each partition one ascending run
past what was dispatched) is cut with C-level passes (map, bytes.lstrip): looping over its
records in Python cost 57 bytecodes a record, more than building its Message. Any other batch
takes the record-by-record way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import structlog
from confluent_kafka import KafkaError

from kafkaworker.message import DispatchedMessage
from kafkaworker.runtime.handoff import Dispatched, Lease, Run
from kafkaworker.runtime.poll.delayed import DelayedRetries
from kafkaworker.runtime.source import Partition, Record
from kafkaworker.serialization import Codec

log = structlog.get_logger("kafkaworker.poller")

_error, _partition, _offset = Record.error, Record.partition, Record.offset


class PartitionOffsets:
    """In-flight offsets of one partition, in the order they were fetched (ascending).

    Kept as a list with a moving head rather than a deque: a run of offsets finished in fetch
    order (what one worker reports for a partition lane) is then recognised and passed over
    with one slice comparison, in C, instead of one step per offset.
    """

    __slots__ = ("_done", "_head", "_inherited_last", "_offsets", "committable", "inherited")

    # Finished offsets at the head are dropped from the list in blocks of at least this many.
    _COMPACT_AFTER = 4096

    def __init__(self, inherited: Iterable[int] = ()) -> None:
        self._offsets: list[int] = []
        self._head = 0  # offsets before it are finished and committable
        self._done: set[int] = set()  # finished, but behind an unfinished one
        # The position to commit: every offset below it is finished. None until one finishes.
        self.committable: int | None = None
        # Finished before this assignment (the committed offset map lists them) and not
        # fetched yet: skipped when fetched, and listed in every map until then.
        self.inherited: set[int] = set(inherited)
        self._inherited_last = max(self.inherited, default=-1)

    def __len__(self) -> int:
        """Offsets dispatched and not yet committable: the partition's outstanding work."""
        return len(self._offsets) - self._head

    def add_run(self, offsets: list[int]) -> None:
        """Record fetched offsets, ascending and above any offset added before."""
        self._offsets.extend(offsets)

    def finish_run(self, offsets: list[int]) -> None:
        """Mark offsets finished; cheapest when they are the next ones in fetch order."""
        head = self._head
        end = head + len(offsets)
        if not self._done and self._offsets[head:end] == offsets:
            self._head = end
        else:
            self._done.update(offsets)

    def advance(self) -> int | None:
        """Drop the finished prefix; return the new committable position if it moved."""
        offsets, head, done = self._offsets, self._head, self._done
        size = len(offsets)
        if done:
            while head < size and offsets[head] in done:
                done.discard(offsets[head])
                head += 1
        if head == 0 or (self.committable is not None and offsets[head - 1] < self.committable):
            return None
        moved = offsets[head - 1] + 1
        self.committable = moved
        if head >= self._COMPACT_AFTER or head == size:
            del offsets[:head]
            head = 0
        self._head = head
        return moved

    def lowest_unfinished(self) -> int | None:
        head = self._head
        return self._offsets[head] if head < len(self._offsets) else None

    def skip_inherited(self, offsets: list[int]) -> list[int]:
        """Of a run just added, the offsets an earlier owner finished, now marked finished
        here (advance() then moves past them); the rest are to be handed to the executor."""
        inherited = self.inherited
        skipped = [o for o in offsets if o in inherited]
        if skipped:
            inherited.difference_update(skipped)
            self._done.update(skipped)
        if offsets[-1] >= self._inherited_last:
            inherited.clear()  # those left are not in the log (compaction, retention)
        return skipped

    def position(self) -> int | None:
        """The position to commit now: `committable`, or before anything finished the first
        offset fetched (everything below it was finished or is not in the log); None before
        the first fetch."""
        if self.committable is not None:
            return self.committable
        return self._offsets[0] if self._offsets else None

    def finished_above(self) -> list[int]:
        """The finished offsets above `position()`, ascending: the offset map's content."""
        if not self.inherited:
            return sorted(self._done)
        position = self.position()
        return sorted(
            o for o in self._done.union(self.inherited) if position is None or o > position
        )


class PartitionState:
    """Per-assignment state, the poll thread's alone. The execute side sees the partition
    only through its `lease` (runtime/handoff.py), a new one per assignment: completions of an
    earlier assignment, still arriving from slow handlers, carry a lease the poll thread no
    longer holds, and are ignored."""

    __slots__ = (
        "assigned_at",
        "backlog",
        "in_flight",
        "last_dispatched",
        "lease",
        "offsets",
        "partition",
        "pause_reason",
        "paused",
        "stamps",
        "topic",
        "topic_partition",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        *,
        generation: int = 0,
        now: float = 0.0,
        inherited: Iterable[int] = (),
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.topic_partition = Partition(topic, partition)
        self.lease = Lease(self.topic_partition, generation)
        # `inherited`: what the committed offset map says is finished already.
        self.offsets = PartitionOffsets(inherited)
        # Dispatched to the executor and not yet reported back (done or dropped).
        self.in_flight = 0
        # Fetched, tracked and waiting for room under the fair quota (poll/fairness.py).
        self.backlog: deque[Dispatched] = deque()
        # Highest offset dispatched in this assignment: a record fetched again is not re-run.
        self.last_dispatched = -1
        self.paused = False
        # Why it is paused (backpressure, circuit breaker, delayed retry, operator): for the
        # dashboard, which shows the reason beside the flag.
        self.pause_reason = ""
        # Unix time of this assignment (the clock's): the partition's last rebalance, for the
        # dashboard.
        self.assigned_at = now
        # (first offset, timestamp in ms) of each run fetched and not yet finished, oldest
        # first: the time lag (age of the oldest unfinished record) is read off it without a
        # per-record cost. Pruned by the gauges (poll/gauges.py).
        self.stamps: deque[tuple[int, int]] = deque()

    def __repr__(self) -> str:
        return f"<PartitionState {self.topic_partition} in_flight={self.in_flight}>"


class Taken(NamedTuple):
    runs: list[Run]  # to hand to the executor
    tracked: int  # records whose offsets are now tracked (handed over or held)
    held: bool  # some were held until due: their partitions must be paused now
    fatal: KafkaError | None  # the consumer is unusable
    # Partitions where records were skipped (finished before, says the offset map): their
    # position may have moved without a report.
    skipped: list[PartitionState] | None = None


class Intake:
    def __init__(
        self,
        partitions: Mapping[Partition, PartitionState],
        codec: Codec,
        delayed: DelayedRetries,
        *,
        topics: Sequence[str],
        handler: str,
    ) -> None:
        self._partitions = partitions  # the poller's: the partitions owned now
        # The one topic of a one-topic handler: its records need no topic() to be told apart.
        self._topic = topics[0] if len(topics) == 1 else None
        self._codec = codec
        self._delayed = delayed
        self._handler = handler
        # Records skipped as finished by an offset map: in all, and this take's partitions.
        self.skipped = 0
        self._skipped: list[PartitionState] | None = None

    def take(self, batch: list[Record]) -> Taken:
        if self._topic is not None and not any(map(_error, batch)):
            return self._take_runs(batch, self._topic)
        return self._take_one_by_one(batch)

    def _take_runs(self, batch: list[Record], topic: str) -> Taken:
        """The batch cut into runs without a Python step per record. A run that is not
        ascending past what was dispatched sends the rest of the batch record by record."""
        partitions = list(map(_partition, batch))
        try:
            # A byte per record, its partition: the end of a run is found by lstrip(), in C.
            by_partition = bytes(partitions)  # type: ignore[arg-type]
        except ValueError:  # partitions numbered from 256 on
            return self._take_one_by_one(batch)
        owned = self._partitions
        runs: list[Run] = []
        tracked = 0
        held = False
        self._skipped = None
        start, size = 0, len(batch)
        while start < size:
            rest = by_partition[start:]
            end = size - len(rest.lstrip(rest[:1]))
            state = owned.get((topic, partitions[start]))  # type: ignore[call-overload]
            if state is not None and not state.lease.revoked:  # else fetched before a revoke
                records = batch[start:end]
                offsets: list[int] = list(map(_offset, records))  # type: ignore[arg-type]
                if offsets[0] <= state.last_dispatched or sorted(offsets) != offsets:
                    # Fetched twice, or out of order: sorted out record by record.
                    taken = self._take_one_by_one(batch[start:], reset=False)
                    return Taken(
                        runs + taken.runs,
                        tracked + taken.tracked,
                        held or taken.held,
                        None,
                        self._skipped,
                    )
                tracked += len(offsets)
                held |= self._add_run(runs, state, records, offsets)
            start = end
        return Taken(runs, tracked, held, None, self._skipped)

    def _take_one_by_one(self, batch: list[Record], *, reset: bool = True) -> Taken:
        if reset:
            self._skipped = None
        partitions = self._partitions
        runs: list[Run] = []
        fatal: KafkaError | None = None
        current: tuple[str | None, int | None] = (None, None)
        state: PartitionState | None = None
        records: list[Record] = []
        offsets: list[int] = []
        last = -1
        tracked = 0
        held = False
        for raw in batch:
            error = raw.error()
            if error is not None:
                fatal = fatal or self.on_error(error)
                continue
            topic, partition, offset = raw.topic(), raw.partition(), raw.offset()
            if partition != current[1] or topic != current[0]:
                if records:
                    tracked += len(records)
                    held |= self._add_run(runs, state, records, offsets)  # type: ignore[arg-type]
                    records, offsets = [], []
                current = (topic, partition)
                state = partitions.get(current)  # type: ignore[call-overload]
                if state is not None and state.lease.revoked:
                    state = None
                last = state.last_dispatched if state is not None else -1
            if state is None:
                continue  # fetched just before a revoke: the new owner gets it
            if offset <= last:  # type: ignore[operator]
                # The tracker needs ascending offsets; the first copy is already in flight.
                log.warning(
                    "record fetched twice; the first copy is handled",
                    handler=self._handler,
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    last_dispatched=last,
                )
                continue
            last = offset  # type: ignore[assignment]
            records.append(raw)
            offsets.append(offset)  # type: ignore[arg-type]
        if records:
            tracked += len(records)
            held |= self._add_run(runs, state, records, offsets)  # type: ignore[arg-type]
        return Taken(runs, tracked, held, fatal, self._skipped)

    def _add_run(
        self, runs: list[Run], state: PartitionState, records: list[Record], offsets: list[int]
    ) -> bool:
        """Track a run and queue its messages; whether some were held until due."""
        state.last_dispatched = offsets[-1]
        tracker = state.offsets
        tracker.add_run(offsets)
        kind, millis = records[0].timestamp()
        if kind:  # else TIMESTAMP_NOT_AVAILABLE
            state.stamps.append((offsets[0], millis))
        if tracker.inherited:  # only while an earlier owner's offset map is being passed
            skipped = tracker.skip_inherited(offsets)
            if skipped:
                self._skip(state, len(skipped))
                done = set(skipped)
                kept = [i for i, offset in enumerate(offsets) if offset not in done]
                if not kept:
                    return False
                records = [records[i] for i in kept]
                offsets = [offsets[i] for i in kept]
        messages = DispatchedMessage.run_of(state.lease, records, offsets, self._codec)
        held = False
        if state.topic in self._delayed.topics:
            ready = self._delayed.admit(state, messages)
            held = len(ready) < len(messages)
            if held:
                log.debug(
                    "retry-topic records held until due",
                    handler=self._handler,
                    partition=str(state.topic_partition),
                    held=len(messages) - len(ready),
                    first_held=messages[len(ready)].offset,
                )
            messages = ready
        if messages:
            runs.append((state.lease, messages))
        return held

    def _skip(self, state: PartitionState, count: int) -> None:
        if self._skipped is None:
            self._skipped = []
        if state not in self._skipped:
            self._skipped.append(state)
        self.skipped += count

    def on_error(self, error: KafkaError) -> KafkaError | None:
        """Log a consumer error; return it when it is fatal (the consumer is unusable)."""
        if error.code() == KafkaError._PARTITION_EOF:
            return None
        if error.fatal():
            return error
        log.warning("consumer error", handler=self._handler, error=str(error))
        return None
