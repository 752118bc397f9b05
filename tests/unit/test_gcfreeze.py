"""gcfreeze.freeze: what is alive is moved out of the collector's walks, garbage first."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from turnout import gcfreeze


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_live_objects_are_frozen_and_cycles_already_dead_are_collected(unfrozen: None) -> None:
    alive = [Node() for _ in range(100)]
    for _ in range(100):
        Node()  # dead at once, but in a cycle
    gcfreeze.freeze("test")
    assert gc.get_freeze_count() >= len(alive)
    frozen_nodes = sum(1 for o in gc.get_objects() if isinstance(o, Node))
    assert frozen_nodes == 0  # frozen objects are not in any generation the collector walks
    gc.unfreeze()
    assert sum(1 for o in gc.get_objects() if isinstance(o, Node)) == len(alive)
