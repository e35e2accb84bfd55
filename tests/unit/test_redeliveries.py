"""A message that keeps coming back without an outcome is bounded (CONTRACT.md section 3)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.fakeapi import new_id
from tests.unit.test_dedupe_and_service import redis_client
from worker.app import EnrichTask, _settle_redelivery
from worker.dedupe import RedeliveryCounter
from worker.errors import RedeliveriesExhausted


@pytest.fixture(params=["local", "redis"])
def counter(request: pytest.FixtureRequest) -> RedeliveryCounter:
    if request.param == "local":
        return RedeliveryCounter()
    return RedeliveryCounter(redis_client(), new_id(), ttl=60)


def runtime_with(counter: RedeliveryCounter, limit: int) -> Any:
    return SimpleNamespace(
        redeliveries=counter, settings=SimpleNamespace(event_max_redeliveries=limit)
    )


def task_delivered(*, redelivered: bool) -> Any:
    return SimpleNamespace(request=SimpleNamespace(delivery_info={"redelivered": redelivered}))


def test_crash_loop_ends_in_exhausted_retries(counter: RedeliveryCounter) -> None:
    rt = runtime_with(counter, limit=3)
    event_id = new_id()
    task = task_delivered(redelivered=True)
    for _ in range(3):  # each delivery crashed: nothing settled the count
        assert EnrichTask._count_redelivery(task, rt, event_id) == event_id
    with pytest.raises(RedeliveriesExhausted) as caught:
        EnrichTask._count_redelivery(task, rt, event_id)
    assert caught.value.reason == "exhausted_retries"


def test_requeues_for_the_deployments_reasons_never_exhaust(counter: RedeliveryCounter) -> None:
    rt = runtime_with(counter, limit=2)
    event_id = new_id()
    task = task_delivered(redelivered=True)
    for _ in range(10):  # downstream refusing, token rejected...: requeued, count given back
        key = EnrichTask._count_redelivery(task, rt, event_id)
        assert key is not None
        _settle_redelivery(rt, key, requeued=True)
    key = EnrichTask._count_redelivery(task, rt, event_id)
    _settle_redelivery(rt, key, requeued=False)  # an outcome clears it
    assert counter.count(event_id) == 1


def test_first_deliveries_are_not_counted(counter: RedeliveryCounter) -> None:
    rt = runtime_with(counter, limit=1)
    event_id = new_id()
    for _ in range(5):
        assert EnrichTask._count_redelivery(task_delivered(redelivered=False), rt, event_id) is None
    assert counter.count(event_id) == 1
