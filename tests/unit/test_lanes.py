"""Lanes, as a model: random submits, takes, releases and drops by simulated workers."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafkaworker import Message
from kafkaworker.handlers import Ordering
from kafkaworker.runtime.execute.core import Lane, Lanes
from kafkaworker.runtime.poll.partitions import PartitionState
from tests.unit.runtime_support import messages


def lane_of(ordering: Ordering, msg: Message[Any]) -> object:
    if ordering == "partition":
        return msg.partition
    if ordering == "key":
        return (msg.partition, msg.key)
    return None


@pytest.mark.parametrize("ordering", ["partition", "key", "none"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_message_is_taken_once_in_lane_order_by_one_worker_at_a_time(
    ordering: Ordering, data: st.DataObject
) -> None:
    lanes = Lanes(ordering, take_size=data.draw(st.integers(1, 3)))
    states = [PartitionState("t", p) for p in range(3)]
    submitted: list[Message[Any]] = []
    taken: list[Message[Any]] = []
    dropped: list[Message[Any]] = []
    working: list[tuple[Lane, list[Message[Any]]]] = []  # workers holding a chunk
    for _ in range(data.draw(st.integers(1, 30))):
        step = data.draw(st.sampled_from(["submit", "take", "release", "drop"]))
        if step == "submit":
            runs = []
            # A partition may come twice in one submit: a fetched batch interleaves the
            # records of partitions (seen after a consumer rejoined).
            for state in data.draw(st.lists(st.sampled_from(states), max_size=4)):
                if state.lease.revoked:
                    continue
                keys = data.draw(st.lists(st.sampled_from([b"a", b"b", None]), min_size=1))
                batch = messages(state, len(keys), keys=keys)
                submitted.extend(batch)
                runs.append((state.lease, batch))
            lanes.submit(runs)
        elif step == "take":
            got = lanes.take()
            if got is None:
                assert not lanes
                continue
            lane, chunk = got
            assert chunk or not lane.exclusive
            if lane.exclusive:
                # Never two workers on one exclusive lane.
                assert all(held is not lane for held, _ in working)
            taken.extend(chunk)
            working.append((lane, list(chunk)))
        elif step == "release" and working:
            lane, _ = working.pop(data.draw(st.integers(0, len(working) - 1)))
            if lane.exclusive:
                lanes.release(lane)
        elif step == "drop":
            state = data.draw(st.sampled_from(states))
            state.lease.revoked = True
            dropped.extend(lanes.drop([state.lease]))
    # Drain what is left, as idle workers would. A message stranded on a lane that is neither
    # ready nor being worked on would never be taken: the count below would miss it.
    while working or lanes:
        for lane, _ in working:
            if lane.exclusive:
                lanes.release(lane)
        working = []
        while (got := lanes.take()) is not None:
            taken.extend(got[1])
            working.append((got[0], list(got[1])))
    ids = [id(m) for m in taken + dropped]
    assert sorted(ids) == sorted(id(m) for m in submitted)  # each exactly once
    assert all(m.lease.revoked for m in dropped)
    if ordering != "none":
        by_lane: dict[object, list[int]] = defaultdict(list)
        for msg in taken:
            by_lane[lane_of(ordering, msg)].append(msg.offset)
        for offsets in by_lane.values():
            assert offsets == sorted(offsets)
