"""The offset map in a commit's metadata (kafkaworker/runtime/poll/offset_map.py): what is
encoded decodes to exactly the same offsets, only with the position it was made for, and a map
too long for the limit is not made."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from kafkaworker.runtime.poll import offset_map
from kafkaworker.runtime.poll.partitions import PartitionOffsets


@given(
    position=st.integers(min_value=0, max_value=2**40),
    gaps=st.lists(st.integers(min_value=1, max_value=300), max_size=200),
)
def test_a_map_decodes_to_exactly_the_offsets_it_was_made_of(
    position: int, gaps: list[int]
) -> None:
    finished: list[int] = []
    at = position
    for gap in gaps:
        at += gap
        finished.append(at)
    metadata = offset_map.encode(position, finished, 1 << 20)
    assert metadata is not None
    assert offset_map.decode(metadata, position) == finished


def test_nothing_finished_above_the_position_is_an_empty_metadata() -> None:
    assert offset_map.encode(7, []) == ""
    assert offset_map.decode("", 7) == []


def test_a_map_is_void_for_any_other_position() -> None:
    metadata = offset_map.encode(10, [12, 13])
    assert offset_map.decode(metadata, 10) == [12, 13]
    # An offset moved by a tool that kept the metadata: the map is not this position's.
    assert offset_map.decode(metadata, 9) == [] and offset_map.decode(metadata, 11) == []


def test_metadata_of_another_kind_is_no_map() -> None:
    for metadata in (None, "note", "kw1:", "kw1:5", "kw1:5:!!!", "kw1:x:eJwDAAAAAAE=", "kw9:5:"):
        assert offset_map.decode(metadata, 5) == []


def test_a_map_longer_than_the_limit_is_not_made() -> None:
    rng = random.Random(7)
    # Half of 40,000 offsets at random: about a bit an offset, past 4,096 characters.
    finished = sorted(rng.sample(range(1, 40_000), 20_000))
    assert offset_map.encode(0, finished) is None
    metadata = offset_map.encode(0, finished, 10_000)
    assert metadata is not None and len(metadata) > offset_map.DEFAULT_MAX_CHARS


def test_maps_of_what_a_backlog_leaves_fit_the_default_limit_with_room_to_spare() -> None:
    """The sizes the module's docstring cites (5,000 offsets outstanding, the default
    max_pending_per_partition)."""
    rng = random.Random(1)
    halves = sorted(rng.sample(range(1, 5000), 2500))
    keys = [rng.randrange(200) for _ in range(5000)]
    one_key_in_twenty_stuck = [o for o in range(1, 5000) if keys[o] >= 10]
    sizes = [
        len(offset_map.encode(0, finished) or "x" * 5000)
        for finished in (halves, one_key_in_twenty_stuck, list(range(100, 5000)))
    ]
    assert sizes[0] < 900 and sizes[1] < 450 and sizes[2] < 40, sizes


def test_the_tracker_lists_what_is_finished_above_its_position() -> None:
    tracker = PartitionOffsets(inherited=[9, 12])
    tracker.add_run([3, 4, 5, 6])
    tracker.finish_run([4, 6])
    tracker.advance()
    assert tracker.position() == 3  # nothing below it finished: the first fetched
    assert tracker.finished_above() == [4, 6, 9, 12]  # 9 and 12 inherited, not fetched
    tracker.finish_run([3])
    tracker.advance()
    assert tracker.position() == 5 and tracker.finished_above() == [6, 9, 12]
    tracker.add_run([7, 9, 10])  # 8 is not in the log (compaction)
    assert tracker.skip_inherited([7, 9, 10]) == [9]
    assert tracker.finished_above() == [6, 9, 12]
    tracker.add_run([13])  # past the last inherited: 12 was not in the log either
    assert tracker.skip_inherited([13]) == [] and tracker.inherited == set()
    assert tracker.finished_above() == [6, 9]
