"""modelkiln.heap: collection paused while the graph is built and checked, back before work."""
from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from modelkiln import heap


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()


def test_long_lived_pauses_collection_then_freezes_what_was_made() -> None:
    before = gc.get_freeze_count()
    with heap.long_lived():
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(made)


def test_long_lived_leaves_a_paused_collector_paused() -> None:
    gc.disable()
    with heap.long_lived():
        pass
    assert not gc.isenabled()


def test_collection_stays_paused_until_a_task_runs() -> None:
    with heap.held_until_work():
        made = [[i] for i in range(1000)]
    assert not gc.isenabled()
    assert gc.get_freeze_count() >= len(made)
    heap.work()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0


def test_release_lets_the_graph_be_collected() -> None:
    with heap.held_until_work():
        pass
    heap.work()
    heap.release()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
