"""tuned_gc: the worker's collector settings while it runs, and Python's again after."""

from __future__ import annotations

import gc

from kafkaworker.runtime.runner import tuned_gc


def test_start_up_objects_are_frozen_and_young_collections_rarer_while_running() -> None:
    before = gc.get_threshold()
    with tuned_gc(True):
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] >= 10_000
        assert gc.get_threshold()[1:] == before[1:]
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_off_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    with tuned_gc(False):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before


def test_a_second_runner_in_the_process_leaves_the_first_ones_settings_alone() -> None:
    before = gc.get_threshold()
    with tuned_gc(True):
        tuned, frozen = gc.get_threshold(), gc.get_freeze_count()
        with tuned_gc(True):
            assert (gc.get_threshold(), gc.get_freeze_count()) == (tuned, frozen)
        assert (gc.get_threshold(), gc.get_freeze_count()) == (tuned, frozen)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, 0)
