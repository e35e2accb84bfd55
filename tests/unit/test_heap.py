import gc
import weakref
from collections.abc import Iterator

import pytest

from worker import _heap


@pytest.fixture
def restored_collector() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_settle_freezes_start_up_objects_and_widens_the_young_generation(
    restored_collector: None,
) -> None:
    _, middle, old = gc.get_threshold()
    _heap.settle()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (_heap.YOUNG_GENERATION, middle, old)


def test_cycles_made_after_settling_are_still_collected(restored_collector: None) -> None:
    _heap.settle()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None
