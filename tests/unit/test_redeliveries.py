"""A message that keeps coming back without an outcome is bounded (CONTRACT.md section 3)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.fakeapi import new_id
from tests.unit.test_dedupe_and_service import redis_client
from worker.dedupe import RedeliveryCounter
from worker.errors import RedeliveriesExhausted
from worker.tasking import EnrichTask, _settle_redelivery


@pytest.fixture(params=["local", "redis"])
def counter(request: pytest.FixtureRequest) -> RedeliveryCounter:
    if request.param == "local":
        return RedeliveryCounter()
    return RedeliveryCounter(redis_client(), new_id(), ttl=60)


def runtime_with(counter: RedeliveryCounter, limit: int) -> Any:
    return SimpleNamespace(
        redeliveries=counter, settings=SimpleNamespace(event_max_redeliveries=limit)
    )


def task_delivered(*, redelivered: bool, task_id: str | None = None, replays: int = 0) -> Any:
    request = SimpleNamespace(delivery_info={"redelivered": redelivered}, id=task_id or new_id())
    setattr(request, "x-replays", replays)
    return SimpleNamespace(request=request)


def test_crash_loop_ends_in_exhausted_retries(counter: RedeliveryCounter) -> None:
    rt = runtime_with(counter, limit=3)
    task_id = new_id()
    task = task_delivered(redelivered=True, task_id=task_id)
    for _ in range(3):  # each delivery crashed: nothing settled the count
        assert EnrichTask._count_redelivery(task, rt) == task_id
    with pytest.raises(RedeliveriesExhausted) as caught:
        EnrichTask._count_redelivery(task, rt)
    assert caught.value.reason == "exhausted_retries"


def test_requeues_for_the_deployments_reasons_never_exhaust(counter: RedeliveryCounter) -> None:
    rt = runtime_with(counter, limit=2)
    task_id = new_id()
    task = task_delivered(redelivered=True, task_id=task_id)
    for _ in range(10):  # downstream refusing, token rejected...: requeued, count given back
        key = EnrichTask._count_redelivery(task, rt)
        assert key is not None
        _settle_redelivery(rt, key, requeued=True)
    key = EnrichTask._count_redelivery(task, rt)
    assert key is not None
    _settle_redelivery(rt, key, requeued=False)  # an outcome clears it
    assert counter.count(task_id) == 1


def test_first_deliveries_are_not_counted(counter: RedeliveryCounter) -> None:
    rt = runtime_with(counter, limit=1)
    task_id = new_id()
    for _ in range(5):
        task = task_delivered(redelivered=False, task_id=task_id)
        assert EnrichTask._count_redelivery(task, rt) is None
    assert counter.count(task_id) == 1


def test_copies_of_one_event_are_counted_apart(counter: RedeliveryCounter) -> None:
    """A producer sends one ID many times; a kill brings every copy back once: no copy may be
    dead-lettered for the others' redeliveries."""
    rt = runtime_with(counter, limit=2)
    for _ in range(20):
        assert EnrichTask._count_redelivery(task_delivered(redelivered=True), rt) is not None


def test_a_replayed_dead_letter_is_counted_afresh(counter: RedeliveryCounter) -> None:
    rt = runtime_with(counter, limit=1)
    task_id = new_id()
    EnrichTask._count_redelivery(task_delivered(redelivered=True, task_id=task_id), rt)
    with pytest.raises(RedeliveriesExhausted):
        EnrichTask._count_redelivery(task_delivered(redelivered=True, task_id=task_id), rt)
    replayed = task_delivered(redelivered=True, task_id=task_id, replays=1)
    assert EnrichTask._count_redelivery(replayed, rt) == f"{task_id}:replay:1"
