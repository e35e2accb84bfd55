"""DispatchingLimiter: slots are given when they come due, to the first waiter still needing one."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pydantic import SecretStr

from tests.unit.fakeapi import BASE, TOKEN, FakeApi, make_event, new_id
from worker.errors import NoLongerNeeded
from worker.rapidly import EventStore, LocalRateLimiter, RapidlyClient, RetryPolicy, count_calls
from worker.rapidly._ratelimit import DispatchingLimiter
from worker.settings import RateLimit


class CountingLimiter:
    """A LocalRateLimiter that counts the slots it gave out."""

    def __init__(self, rate: str) -> None:
        self.inner = LocalRateLimiter(RateLimit.parse(rate))
        self.slots = 0
        self.fail_next = 0

    def acquire(self) -> float:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("redis down")
        self.slots += 1
        return self.inner.acquire()

    def penalize(self, seconds: float) -> None:
        self.inner.penalize(seconds)


def run_waiters(limiter: DispatchingLimiter, specs: list[tuple[str, bool, Any]]) -> list[str]:
    """Start one thread per (name, priority, still_needed) while the pump is busy with a first
    slot, so that all of them queue; return the order in which they were let through (or
    answered: "name:cached")."""
    order: list[str] = []
    lock = threading.Lock()
    first_done = threading.Event()

    def first() -> None:
        limiter.acquire()
        first_done.set()

    def waiter(name: str, priority: bool, still_needed: Any) -> None:
        try:
            limiter.acquire(still_needed, priority=priority)
            outcome = name
        except NoLongerNeeded:
            outcome = f"{name}:cached"
        with lock:
            order.append(outcome)

    limiter.acquire()  # the slot at t=0 is spent: the next ones are spaced
    threads = [threading.Thread(target=first)]
    threads[0].start()
    time.sleep(0.02)  # the pump now waits for the next slot; everything below queues
    for name, priority, still_needed in specs:
        thread = threading.Thread(target=waiter, args=(name, priority, still_needed))
        threads.append(thread)
        thread.start()
        time.sleep(0.005)
    for thread in threads:
        thread.join(10)
    assert first_done.is_set()
    return order


def test_list_calls_go_before_gets_and_order_is_kept() -> None:
    inner = CountingLimiter("20/s")
    limiter = DispatchingLimiter(inner)
    dispatched: list[str] = []  # the pump asks each waiter when its slot is due, in order

    def asked(name: str) -> Any:
        return lambda: dispatched.append(name) is None

    order = run_waiters(
        limiter,
        [
            ("get1", False, asked("get1")),
            ("get2", False, asked("get2")),
            ("list1", True, asked("list1")),
            ("get3", False, asked("get3")),
        ],
    )
    assert dispatched == ["list1", "get1", "get2", "get3"]
    assert sorted(order) == ["get1", "get2", "get3", "list1"]
    assert inner.slots == 6  # the spent one, the first, and one per waiter


def test_a_waiter_answered_meanwhile_costs_no_slot() -> None:
    inner = CountingLimiter("10/s")
    limiter = DispatchingLimiter(inner)
    started = time.monotonic()
    order = run_waiters(
        limiter,
        [("get1", False, lambda: False), ("get2", False, lambda: True), ("get3", False, None)],
    )
    elapsed = time.monotonic() - started
    assert sorted(order) == ["get1:cached", "get2", "get3"]  # the threads wake in any order
    # get1 asked when the slot came, said no, and the same slot went to get2 at once.
    assert inner.slots == 4  # spent, first, get2, get3: none for get1
    assert elapsed < 0.45  # 3 intervals of 0.1 s after the spent slot, not 4


def test_an_error_of_the_budget_store_reaches_one_waiter_and_the_pump_goes_on() -> None:
    inner = CountingLimiter("1000/s")
    limiter = DispatchingLimiter(inner)
    inner.fail_next = 1
    with pytest.raises(ConnectionError):
        limiter.acquire()
    assert limiter.acquire() >= 0  # a new pump, working
    assert inner.slots == 1


def test_still_needed_that_raises_counts_as_needed() -> None:
    limiter = DispatchingLimiter(CountingLimiter("1000/s"))

    def broken() -> bool:
        raise RuntimeError("cache lookup failed")

    assert limiter.acquire(broken) >= 0


def test_many_threads_each_get_through_once() -> None:
    inner = CountingLimiter("100000/s")
    limiter = DispatchingLimiter(inner)
    done: list[int] = []
    threads = [
        threading.Thread(target=lambda i=i: (limiter.acquire(), done.append(i))) for i in range(50)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(done) == list(range(50))
    assert inner.slots == 50


# --- the store: a GET that waited for its slot is not sent if a list call brought the event


def test_get_queued_behind_a_window_is_not_sent(api: FakeApi) -> None:
    """GETs of root events already wait for the budget when the first of them to get through
    asks for its root window (a list call, first in line): the window caches the other roots,
    and their GETs, asked again when their slot comes, are never sent."""
    roots = [
        make_event(
            new_id(), source="system", name="customer.created", ts=f"2026-11-20T10:00:{i:02d}Z"
        )
        for i in range(6)
    ]
    api.add(*roots)
    limiter = DispatchingLimiter(LocalRateLimiter(RateLimit.parse("10/s")))
    client = RapidlyClient(BASE, SecretStr(TOKEN), transport=api.transport(), limiter=limiter)
    store = EventStore(client, limiter=limiter, policy=RetryPolicy(sleep=lambda s: None))
    counts: dict[str, int] = {}

    def enrich(event_id: str) -> None:
        with count_calls() as usage:
            store.child_counts(store.event(event_id))
        counts[event_id] = usage.calls

    limiter.acquire()  # the slot at t=0 is spent: every GET below queues, in this order
    order = [roots[1], roots[2], roots[3], roots[4], roots[5], roots[0]]
    threads = []
    for root in order:
        threads.append(threading.Thread(target=enrich, args=(root["id"],)))
        threads[-1].start()
        time.sleep(0.01)
    for thread in threads:
        thread.join(10)
    client.close()
    # root 1's GET went first; its window (roots 1-5) jumped the queue of GETs; roots 2-5 were
    # then answered from the cache when their slots came; root 0 (older) still needed its GET
    # and its own window.
    assert api.calls["get"] == 2
    assert api.calls["list"] == 2
    assert all(counts[r["id"]] == 0 for r in roots[2:])  # skipped GETs are not counted
    assert counts[roots[1]["id"]] == 2 and counts[roots[0]["id"]] == 2
