from __future__ import annotations

import threading

import httpx
import pytest

from tests.unit.fakeapi import DictRedis, FakeApi, make_event, new_id
from worker.enrichment import enrich_event
from worker.errors import EventNotFound, RetriesExhausted
from worker.rapidly import EventStore, LocalRateLimiter, count_calls
from worker.settings import RateLimit


def tree(api: FakeApi) -> dict[str, dict]:
    root = make_event(new_id(), source="system", name="customer.created")
    c1 = make_event(new_id(), root["id"])
    c2 = make_event(new_id(), root["id"], ts="2026-11-20T10:00:01Z")
    g1 = make_event(new_id(), c1["id"])
    api.add(root, c1, c2, g1)
    return {"root": root, "c1": c1, "c2": c2, "g1": g1}


def test_counts_direct_and_descendants_from_the_list(api: FakeApi, store: EventStore) -> None:
    t = tree(api)
    record = enrich_event(t["root"]["id"], store, max_depth=100)
    h = record.body["hierarchy"]
    assert (h["child_count"], h["descendant_count"]) == (2, 3)
    assert record.body["event"]["child_count"] == 0
    assert record.routing_key == "system.customer.created"


def test_children_from_a_list_cost_no_further_calls(api: FakeApi, store: EventStore) -> None:
    t = tree(api)
    enrich_event(t["root"]["id"], store, max_depth=100)  # GET root + list children
    before = sum(api.calls.values())
    record = enrich_event(t["c2"]["id"], store, max_depth=100)
    # c2 came with the root's children list (descendants 0) and its parent is cached.
    assert sum(api.calls.values()) == before
    assert record.body["hierarchy"]["root_id"] == t["root"]["id"]
    assert record.body["hierarchy"]["descendant_count"] == 0
    assert record.body["event"] == {**t["c2"], "child_count": 0}


def test_second_enrichment_of_an_event_is_cached(api: FakeApi, store: EventStore) -> None:
    t = tree(api)
    enrich_event(t["g1"]["id"], store, max_depth=100)
    calls = sum(api.calls.values())
    assert calls == 4  # GET g1, GET c1, GET root, list children of g1
    enrich_event(t["g1"]["id"], store, max_depth=100)
    assert sum(api.calls.values()) == calls


def test_concurrent_reads_of_one_id_collapse_into_one_call(api: FakeApi, store: EventStore) -> None:
    event = make_event(new_id())
    api.add(event)
    gate = threading.Event()
    original = api.handle

    def slow(request: httpx.Request) -> httpx.Response:
        gate.wait(2)
        return original(request)

    api.handle = slow  # type: ignore[method-assign]
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.event(event["id"]).id))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert results == [event["id"]] * 8
    assert api.calls["get"] == 1


def test_replica_lag_404_then_found(api: FakeApi, store: EventStore, sleeps: list[float]) -> None:
    event = make_event(new_id())
    api.add(event)
    not_found = httpx.Response(404, json={"error": "ResourceNotFound", "detail": "Not found"})
    api.script.extend([lambda r: not_found, lambda r: not_found])
    assert store.event(event["id"]).id == event["id"]
    assert len(sleeps) == 2


def test_404_for_good_becomes_event_not_found(api: FakeApi, store: EventStore) -> None:
    with pytest.raises(EventNotFound) as info:
        store.event(new_id())
    assert info.value.reason == "event_not_found"
    assert info.value.attempts >= 2


def test_parent_that_stays_404_is_none(api: FakeApi, store: EventStore) -> None:
    child = make_event(new_id(), new_id())
    api.add(child)
    record = enrich_event(child["id"], store, max_depth=100)
    h = record.body["hierarchy"]
    assert (h["complete"], h["incomplete_reason"], h["depth"], h["root_id"]) == (
        False,
        "parent_not_found",
        0,
        child["id"],
    )


def test_5xx_is_retried_then_exhausted(
    api: FakeApi, store: EventStore, sleeps: list[float]
) -> None:
    api.script.extend([lambda r: httpx.Response(500, text="Internal Server Error")] * 10)
    with pytest.raises(RetriesExhausted) as info:
        store.event(new_id())
    assert info.value.attempts == 4
    assert info.value.reason == "exhausted_retries"
    assert "HTTP 500" in str(info.value)


def test_429_waits_retry_after_and_is_not_an_attempt(
    api: FakeApi, client, sleeps: list[float]
) -> None:
    from worker.rapidly import RetryPolicy

    limiter = LocalRateLimiter(RateLimit.parse("1000/s"))
    store = EventStore(
        client, limiter=limiter, policy=RetryPolicy(max_attempts=1, sleep=sleeps.append)
    )
    event = make_event(new_id())
    api.add(event)
    api.script.extend([lambda r: httpx.Response(429, headers={"Retry-After": "2"})] * 3)
    assert store.event(event["id"]).id == event["id"]  # max_attempts=1, yet 3 429s were survived
    assert len(sleeps) == 3
    assert all(s >= 2 for s in sleeps)
    assert limiter._next > 0  # the limiter was pushed back


def test_api_calls_are_counted_per_context(api: FakeApi, store: EventStore) -> None:
    t = tree(api)
    with count_calls() as usage:
        enrich_event(t["c1"]["id"], store, max_depth=100)
    # GET c1, GET root, list root's subtree (c1's siblings and c1's own children with them)
    assert usage.calls == sum(api.calls.values()) == 3


def test_siblings_listing_serves_leaf_children_and_the_parent(
    api: FakeApi, store: EventStore
) -> None:
    t = tree(api)
    enrich_event(t["c2"]["id"], store, max_depth=100)  # GET c2, GET root, list root's children
    assert api.calls == {"get": 2, "list": 1}
    record = enrich_event(t["root"]["id"], store, max_depth=100)  # counts known from that list
    assert (
        record.body["hierarchy"]["child_count"],
        record.body["hierarchy"]["descendant_count"],
    ) == (2, 3)
    assert api.calls == {"get": 2, "list": 1}


def test_lru_is_bounded(api: FakeApi, client) -> None:
    store = EventStore(client, max_events=10)
    for _ in range(30):
        e = make_event(new_id())
        api.add(e)
        store.event(e["id"])
    assert store.cached_count() == 10


def roots(api: FakeApi, n: int) -> list[dict]:
    out = []
    for i in range(n):
        e = make_event(
            new_id(),
            source="system",
            name="customer.created",
            ts=f"2026-11-20T10:{i // 60:02d}:{i % 60:02d}.{i:06d}Z",
        )
        api.add(e)
        out.append(e)
    return out


def test_root_window_answers_for_the_next_roots(api: FakeApi, store: EventStore) -> None:
    rs = roots(api, 50)
    first = enrich_event(rs[0]["id"], store, max_depth=100)
    assert first.body["hierarchy"]["child_count"] == 0
    assert api.calls == {"get": 1, "list": 1}  # GET the first, one window for all 50
    for e in rs[1:]:
        record = enrich_event(e["id"], store, max_depth=100)
        assert record.body["event"] == {**e, "child_count": 0}
    assert api.calls == {"get": 1, "list": 1}


def test_read_ahead_fetches_the_next_window(api: FakeApi, store: EventStore) -> None:
    import time

    rs = roots(api, 250)
    for e in rs[:150]:
        enrich_event(e["id"], store, max_depth=100)
    time.sleep(0.3)  # the read-ahead runs in the background
    calls = dict(api.calls)
    for e in rs[150:200]:
        enrich_event(e["id"], store, max_depth=100)
    assert api.calls["get"] == calls["get"] == 1
    assert api.calls["list"] <= 4


def test_root_with_descendants_gets_exact_counts_from_its_listing(
    api: FakeApi, store: EventStore
) -> None:
    t = tree(api)
    rs = roots(api, 5)
    record = enrich_event(t["root"]["id"], store, max_depth=100)
    assert (
        record.body["hierarchy"]["child_count"],
        record.body["hierarchy"]["descendant_count"],
    ) == (2, 3)
    assert (
        enrich_event(rs[0]["id"], store, max_depth=100).body["hierarchy"]["descendant_count"] == 0
    )


def test_errors_and_429s_do_not_eat_the_replica_lag_window(
    api: FakeApi, store: EventStore, sleeps: list[float]
) -> None:
    """Fault-suite finding: after a 5xx streak or a 429 wait, the first lag 404 must still get
    the whole NOT_FOUND wait (3 s in this fixture), not be dead-lettered at once."""
    event = make_event(new_id())
    api.add(event)
    not_found = httpx.Response(404, json={"error": "ResourceNotFound", "detail": "Not found"})
    api.script.extend(
        [lambda r: httpx.Response(500, text="x")] * 3
        + [lambda r: httpx.Response(429, headers={"Retry-After": "5"})] * 2
        + [lambda r: not_found] * 3
    )
    assert store.event(event["id"]).id == event["id"]


def test_unknown_event_waits_the_whole_window(
    api: FakeApi, store: EventStore, sleeps: list[float]
) -> None:
    with pytest.raises(EventNotFound):
        store.event(new_id())
    assert sum(sleeps) == pytest.approx(3.0)  # NOT_FOUND wait of the fixture, not half of it


def test_the_claims_miss_of_the_shared_copy_stands_for_the_lookup_right_after() -> None:
    import time

    from worker.rapidly._cache import SHARED_MISS_FRESH_SECONDS, EventCache

    shared = DictRedis()
    cache = EventCache(
        max_events=100,
        event_max_age=300,
        counts_max_age=60,
        redis=shared,
        redis_namespace="n",
        redis_ttl=60,
    )
    event_id = new_id()
    key = cache.shared_key(event_id)
    assert key is not None
    cache.accept_shared(shared.get(key), event_id)  # the claim's round trip read it: missing
    assert cache.lookup(event_id) is None
    assert shared.reads == [key]  # the lookup right after did not ask again
    assert cache.lookup(event_id) is None
    assert shared.reads == [key, key]  # only that one
    cache.accept_shared(shared.get(key), event_id)
    time.sleep(SHARED_MISS_FRESH_SECONDS * 2)
    assert cache.lookup(event_id) is None
    assert shared.reads == [key, key, key, key]  # nor after a wait
