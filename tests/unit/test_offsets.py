"""PartitionOffsets: the committed position never passes an unfinished offset."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kafkaworker.runtime.poll.partitions import PartitionOffsets


def test_nothing_is_committable_before_the_first_offset_finishes() -> None:
    offsets = PartitionOffsets()
    for offset in (10, 11, 12):
        offsets.add_run([offset])
    offsets.finish_run([11])
    offsets.finish_run([12])
    assert offsets.advance() is None
    assert offsets.committable is None
    assert len(offsets) == 3


def test_position_moves_past_a_finished_prefix_only() -> None:
    offsets = PartitionOffsets()
    for offset in range(5):
        offsets.add_run([offset])
    offsets.finish_run([0])
    offsets.finish_run([1])
    offsets.finish_run([3])
    assert offsets.advance() == 2
    assert offsets.lowest_unfinished() == 2
    offsets.finish_run([2])
    assert offsets.advance() == 4
    offsets.finish_run([4])
    assert offsets.advance() == 5
    assert len(offsets) == 0


def test_gaps_from_compaction_commit_one_past_the_last_offset_seen() -> None:
    offsets = PartitionOffsets()
    for offset in (3, 7, 20):
        offsets.add_run([offset])
    for offset in (20, 7, 3):
        offsets.finish_run([offset])
    assert offsets.advance() == 21


@st.composite
def fetched_and_finish_order(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    gaps = draw(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=200))
    start = draw(st.integers(min_value=0, max_value=10**12))
    fetched = []
    position = start
    for gap in gaps:
        fetched.append(position)
        position += gap
    finish_order = draw(st.permutations(fetched))
    return fetched, list(finish_order)


@given(fetched_and_finish_order(), st.data())
def test_committed_never_passes_an_unfinished_offset(
    case: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    fetched, finish_order = case
    # Only a prefix of the finish order completes: the rest stays in flight (or failed).
    finished_count = data.draw(st.integers(min_value=0, max_value=len(finish_order)))
    offsets = PartitionOffsets()
    for offset in fetched:
        offsets.add_run([offset])
    finished: set[int] = set()
    for offset in finish_order[:finished_count]:
        offsets.finish_run([offset])
        finished.add(offset)
        offsets.advance()
        if offsets.committable is not None:
            # Every fetched offset below the committed position is finished.
            assert all(o in finished for o in fetched if o < offsets.committable)
    unfinished = [o for o in fetched if o not in finished]
    if unfinished:
        assert offsets.committable is None or offsets.committable <= min(unfinished)
        assert offsets.lowest_unfinished() == min(unfinished)


@given(fetched_and_finish_order())
def test_committed_reaches_the_end_when_everything_finishes(
    case: tuple[list[int], list[int]],
) -> None:
    fetched, finish_order = case
    offsets = PartitionOffsets()
    for offset in fetched:
        offsets.add_run([offset])
    positions = []
    for offset in finish_order:
        offsets.finish_run([offset])
        if (moved := offsets.advance()) is not None:
            positions.append(moved)
    assert offsets.committable == fetched[-1] + 1
    assert positions == sorted(positions)  # the position only ever moves forward
    assert len(offsets) == 0


class _CompactingOften(PartitionOffsets):
    __slots__ = ()
    _COMPACT_AFTER = 3  # exercise dropping the finished head on every few advances


@given(fetched_and_finish_order(), st.data())
def test_runs_finished_in_or_out_of_order_match_one_at_a_time(
    case: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    """Workers report runs: in fetch order (a partition lane) or not (keys, retries)."""
    fetched, shuffled = case
    # Half the cases finish in fetch order, the way a partition lane does.
    finish_order = fetched if data.draw(st.booleans()) else shuffled
    runs = _split(finish_order, data)
    offsets, reference = _CompactingOften(), PartitionOffsets()
    for run in _split(fetched, data):
        offsets.add_run(run)
    for offset in fetched:
        reference.add_run([offset])
    for run in runs:
        offsets.finish_run(run)
        for offset in run:
            reference.finish_run([offset])
        if data.draw(st.booleans()):  # the poll thread advances after some reports only
            assert offsets.advance() == reference.advance()
            assert offsets.committable == reference.committable
            assert len(offsets) == len(reference)
            assert offsets.lowest_unfinished() == reference.lowest_unfinished()
    offsets.advance()
    assert offsets.committable == fetched[-1] + 1
    assert len(offsets) == 0
    assert offsets.lowest_unfinished() is None


def _split(items: list[int], data: st.DataObject) -> list[list[int]]:
    runs, start = [], 0
    while start < len(items):
        size = data.draw(st.integers(min_value=1, max_value=len(items) - start))
        runs.append(items[start : start + size])
        start += size
    return runs
