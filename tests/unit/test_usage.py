"""The unit of work's API-call count, and the slot the store asks for on the client's behalf."""

from __future__ import annotations

import threading

from worker.rapidly import LocalRateLimiter, count_calls
from worker.rapidly._ratelimit import DispatchingLimiter, when_needed
from worker.rapidly._usage import api_calls_made, current_usage
from worker.settings import RateLimit


def test_a_unit_of_work_counts_alone_and_a_nested_one_joins_it() -> None:
    before = api_calls_made()
    current_usage().calls += 5  # outside any unit: not part of the next one
    with count_calls() as outer:
        current_usage().calls += 1
        with count_calls() as inner:
            current_usage().calls += 2
        assert inner is outer
        assert api_calls_made() == 3
    assert outer.calls == 3
    assert api_calls_made() == before + 5


def test_units_in_other_threads_never_share_a_count() -> None:
    seen: list[int] = []

    def work(n: int) -> None:
        with count_calls() as usage:
            for _ in range(n):
                current_usage().calls += 1
        seen.append(usage.calls)

    threads = [threading.Thread(target=work, args=(n,)) for n in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == [1, 2, 3]


class CountingLimiter(LocalRateLimiter):
    def __init__(self) -> None:
        super().__init__(RateLimit.parse("1000/s"))
        self.slots = 0

    def acquire(self) -> float:
        self.slots += 1
        return super().acquire()


def test_the_slot_asked_for_serves_exactly_one_request_inside_it() -> None:
    inner = CountingLimiter()
    limiter = DispatchingLimiter(inner)
    asked: list[str] = []

    def request() -> str:
        limiter.acquire(priority=True)  # what the client does: takes the granted slot
        asked.append("sent")
        return "answer"

    assert when_needed(limiter, lambda: True, request, priority=True) == "answer"
    assert asked == ["sent"]
    assert inner.slots == 1  # the request inside took the store's slot, not a second one
    limiter.acquire()  # outside the slot: queues like any other request
    assert inner.slots == 2


def test_without_a_dispatching_limiter_the_call_is_made_as_it_is() -> None:
    assert when_needed(None, lambda: False, lambda: 7) == 7
    assert when_needed(LocalRateLimiter(RateLimit.parse("1000/s")), lambda: False, lambda: 7) == 7
