"""Calls in flight shared across processes through Redis (``worker.rapidly._fleet``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr

from tests.unit.fakeapi import BASE, TOKEN, FakeApi, make_event, new_id
from worker.rapidly import ChildCounts, EventStore, RapidlyClient, RetryPolicy
from worker.rapidly._fleet import FLIGHT_SECONDS
from worker.rapidly._models import Event
from worker.rapidly._ratelimit import RECHECK_AFTER_SECONDS, DispatchingLimiter


class FakeRedis:
    """The Redis calls the event store makes, over a dict (no expiry: tests drive time)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.polls = 0

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def set(
        self, key: str, value: Any, ex: int | None = None, nx: bool = False, px: int | None = None
    ) -> bool:
        if nx and key in self.data:
            return False
        self.data[key] = value
        return True

    def exists(self, *keys: str) -> int:
        self.polls += 1
        return sum(key in self.data for key in keys)

    def zadd(self, key: str, mapping: dict[str, float]) -> int:
        self.data.setdefault(key, {}).update(mapping)
        return len(mapping)

    def zrem(self, key: str, member: str) -> int:
        return int(self.data.get(key, {}).pop(member, None) is not None)

    def zremrangebyscore(self, key: str, low: Any, high: Any) -> int:
        return 0  # no expiry: tests drive time

    def zrangebyscore(self, key: str, low: Any, high: Any) -> list[str]:
        return list(self.data.get(key, {}))

    def zmscore(self, key: str, members: list[str]) -> list[float | None]:
        self.polls += 1
        scores = self.data.get(key, {})
        return [scores.get(m) for m in members]

    def pexpire(self, key: str, ms: int) -> bool:
        return True

    def pipeline(self, transaction: bool = False) -> _Pipeline:
        return _Pipeline(self)

    def register_script(self, _: str) -> Callable[..., int]:
        def land(keys: list[str], args: list[str]) -> int:
            if self.data.get(keys[0]) == args[0]:
                del self.data[keys[0]]
                return 1
            return 0

        return land


class _Pipeline:
    """Commands queued, run in order on ``execute`` (their results, as redis-py returns)."""

    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis
        self._queued: list[Callable[[], Any]] = []

    def __getattr__(self, name: str) -> Callable[..., _Pipeline]:
        def queue(*args: Any, **kwargs: Any) -> _Pipeline:
            self._queued.append(lambda: getattr(self._redis, name)(*args, **kwargs))
            return self

        return queue

    def execute(self) -> list[Any]:
        return [command() for command in self._queued]


def _store(
    api: FakeApi, redis: FakeRedis, sleep: Callable[[float], None], limiter: Any = None
) -> EventStore:
    client = RapidlyClient(BASE, SecretStr(TOKEN), transport=api.transport())
    policy = RetryPolicy(sleep=sleep)
    return EventStore(client, policy=policy, limiter=limiter, redis=redis, redis_namespace="n")


def _family(api: FakeApi) -> tuple[dict[str, Any], dict[str, Any]]:
    parent = make_event(new_id())
    child = make_event(new_id(), parent["id"])
    api.add(parent, child)
    return parent, child


def _generations(api: FakeApi) -> tuple[dict[str, Any], dict[str, Any]]:
    """A root, its child and a grandchild in the API: (root, child)."""
    root = make_event(new_id())
    child = make_event(new_id(), root["id"])
    api.add(root, child, make_event(new_id(), child["id"]))
    return root, child


def _lands_when_waited_on(
    redis: FakeRedis, key: str, other: EventStore, root: dict[str, Any], waits: list[float]
) -> Callable[[float], None]:
    """A sleep for this process: while it waits, the other process lists the root's children
    (which brings its subtree) and ``key`` goes."""

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if key in redis.data:
            del redis.data[key]
            other.count_children(Event.from_api(root))

    return sleep


def test_a_listing_in_flight_in_another_process_is_waited_for_not_repeated() -> None:
    api, redis = FakeApi(), FakeRedis()
    parent, _ = _family(api)
    other = _store(api, redis, lambda _: None)
    flight = "rapidly:n:flight:subtree:" + parent["id"]
    redis.data[flight] = "another process"
    sleeps: list[float] = []
    store = _store(api, redis, _lands_when_waited_on(redis, flight, other, parent, sleeps))
    store.prime([(Event.from_api(parent), 1, None)])  # a window showed it with descendants
    calls_by_other = 1  # the other process's listing
    counts = store.child_counts(Event.from_api(parent))
    assert counts == ChildCounts(1, 1)
    assert sum(api.calls.values()) == calls_by_other
    assert sleeps and max(sleeps) <= FLIGHT_SECONDS


def test_a_flight_whose_holder_died_costs_a_bounded_wait_then_the_call() -> None:
    api, redis = FakeApi(), FakeRedis()
    parent, _ = _family(api)
    redis.data["rapidly:n:flight:subtree:" + parent["id"]] = "a process that died"
    sleeps: list[float] = []
    store = _store(api, redis, sleeps.append)
    store.prime([(Event.from_api(parent), 1, None)])
    assert store.child_counts(Event.from_api(parent)) == ChildCounts(1, 1)
    assert sum(api.calls.values()) == 1  # made here after the wait
    assert FLIGHT_SECONDS <= sum(sleeps) <= FLIGHT_SECONDS + 0.1


def test_the_holder_lands_its_own_flight_and_no_other() -> None:
    api, redis = FakeApi(), FakeRedis()
    parent, _ = _family(api)
    store = _store(api, redis, lambda _: None)
    store.count_children(Event.from_api(parent))  # not through the fleet: no key at all
    assert not [k for k in redis.data if ":flight:" in k]
    assert store.parent(parent["id"]) is not None  # cached: no call, no flight
    fresh = make_event(new_id())
    api.add(fresh)
    assert store.parent(fresh["id"]) is not None
    assert not [k for k in redis.data if ":flight:" in k]  # the GET's flight was landed
    assert api.calls["get"] == 1


def test_without_redis_every_process_calls_for_itself() -> None:
    api = FakeApi()
    parent, _ = _family(api)
    client = RapidlyClient(BASE, SecretStr(TOKEN), transport=api.transport())
    store = EventStore(client, policy=RetryPolicy(sleep=lambda _: None))
    store.prime([(Event.from_api(parent), 1, None)])
    assert store.child_counts(Event.from_api(parent)) == ChildCounts(1, 1)
    assert sum(api.calls.values()) == 1


def test_the_claim_brings_the_shared_copy_in_its_round_trip() -> None:
    """With one Redis for dedupe and cache, the first claim also reads the event's shared copy
    (cached there by another process's window): the enrichment then reads nothing more."""
    from tests.unit.test_dedupe_and_service import FakePublisher, redis_client, service_for
    from worker.dedupe import Claim, Lease, RedisDedupeStore

    client = redis_client()
    ns = new_id()
    api = FakeApi()
    event = make_event(new_id())
    api.add(event)
    http = RapidlyClient(BASE, SecretStr(TOKEN), transport=api.transport())
    try:
        other = EventStore(http, redis=client, redis_namespace=ns)
        other.prime([(Event.from_api(event), 0, 0)])  # another process's window showed it
        store = EventStore(http, redis=client, redis_namespace=ns)
        dedupe = RedisDedupeStore(client, ns, ttl=60, lease=30)
        key = store.shared_key(event["id"])
        assert key is not None
        claim, raw = dedupe.claim_reading(event["id"], key)
        assert isinstance(claim, Lease) and raw is not None
        assert dedupe.claim_reading(event["id"], key)[0] is Claim.BUSY
        dedupe.release(claim)

        reads: list[str] = []
        original = client.get
        client.get = lambda k: reads.append(k) or original(k)  # type: ignore[method-assign]
        publisher = FakePublisher(dedupe)
        outcome = service_for(store, dedupe, publisher).process(event["id"])
        assert outcome.outcome == "published"
        assert store.shared_key(event["id"]) is None  # in this process's cache now
        assert [k for k in reads if ":evt:" in k] == []  # the copy came with the claim
        assert api.requests == []
        assert service_for(store, dedupe, publisher).process(event["id"]).outcome == "duplicate"
    finally:
        http.close()
        client.close()


class ThrottledLimiter:
    throttled = True

    def acquire(self) -> float:
        return 0.0

    def penalize(self, seconds: float) -> None:
        return None


def test_under_a_throttling_rate_limit_calls_queue_in_the_limiter_not_on_the_fleet() -> None:
    api, redis = FakeApi(), FakeRedis()
    parent, _ = _family(api)
    redis.data["rapidly:n:flight:subtree:" + parent["id"]] = "another process"
    sleeps: list[float] = []
    store = _store(api, redis, sleeps.append, ThrottledLimiter())
    store.prime([(Event.from_api(parent), 1, None)])
    assert store.child_counts(Event.from_api(parent)) == ChildCounts(1, 1)
    assert sleeps == [] and redis.polls == 0  # no wait on the other process's flight
    assert sum(api.calls.values()) == 1


def test_the_dispatching_limiter_tells_when_callers_wait_for_slots() -> None:
    from worker.rapidly import LocalRateLimiter
    from worker.rapidly._ratelimit import DispatchingLimiter
    from worker.settings import RateLimit

    limiter = DispatchingLimiter(LocalRateLimiter(RateLimit.parse("10/s")))
    limiter.acquire()
    assert not limiter.throttled  # the first slot is free at once
    limiter.acquire()
    assert limiter.throttled  # the second waited its 100 ms


def test_an_ancestors_subtree_listing_in_another_process_gives_the_counts() -> None:
    api, redis = FakeApi(), FakeRedis()
    root, child = _generations(api)
    other = _store(api, redis, lambda _: None)
    flight = "rapidly:n:flight:subtree:" + root["id"]
    redis.data[flight] = "another process"
    store = _store(api, redis, _lands_when_waited_on(redis, flight, other, root, []))
    store.prime([(Event.from_api(root), 2, None)])  # the walk cached the parent
    counts = store.child_counts(Event.from_api(child))
    assert counts == ChildCounts(1, 1)
    assert api.calls == {"list": 1}  # the other process's subtree page, nothing here


def test_a_get_waits_for_another_process_list_in_flight() -> None:
    api, redis = FakeApi(), FakeRedis()
    root = make_event(new_id())
    child = make_event(new_id(), root["id"])
    api.add(root, child)
    other = _store(api, redis, lambda _: None)
    lists = "rapidly:n:lists"
    redis.zadd(lists, {"another process": 1.0})

    def sleep(_: float) -> None:
        # The other process's listing lands: it brought the child.
        if redis.data[lists]:
            other.count_children(Event.from_api(root))
            redis.zrem(lists, "another process")

    store = _store(api, redis, sleep)
    assert store.event(child["id"]).id == child["id"]
    assert api.calls == {"list": 1}  # the other process's listing, no GET here


def test_an_event_cached_without_counts_takes_them_from_a_listing_elsewhere() -> None:
    """The event is in this process's cache from its GET, without counts: once another
    process's subtree page of its parent landed, the shared copy gives them, no call here."""
    api, redis = FakeApi(), FakeRedis()
    root, child = _generations(api)
    other = _store(api, redis, lambda _: None)
    flight = "rapidly:n:flight:subtree:" + root["id"]
    redis.data[flight] = "another process"
    store = _store(api, redis, _lands_when_waited_on(redis, flight, other, root, []))
    store.prime([(Event.from_api(root), 2, None)])
    event = store.parent(child["id"])  # fetched here: cached without counts
    assert event is not None
    calls_before = sum(api.calls.values())
    assert store.child_counts(event) == ChildCounts(1, 1)
    assert sum(api.calls.values()) == calls_before + 1  # the other process's page only


def test_an_ancestor_being_counted_elsewhere_is_waited_for() -> None:
    """The parent is being counted in another process, before any listing of it is in
    flight: the child waits for it, then takes its counts from the shared cache."""
    api, redis = FakeApi(), FakeRedis()
    root, child = _generations(api)
    other = _store(api, redis, lambda _: None)
    marker = "rapidly:n:flight:counting:" + root["id"]
    redis.data[marker] = "another process"
    waits: list[float] = []
    store = _store(api, redis, _lands_when_waited_on(redis, marker, other, root, waits))
    store.prime([(Event.from_api(root), 2, None)])
    assert store.child_counts(Event.from_api(child)) == ChildCounts(1, 1)
    assert api.calls == {"list": 1}  # the other process's, nothing here
    assert waits and sum(waits) <= FLIGHT_SECONDS


def test_an_event_being_counted_is_seen_by_the_fleet_until_it_is_counted() -> None:
    api, redis = FakeApi(), FakeRedis()
    root = make_event(new_id())
    child = make_event(new_id(), root["id"])
    api.add(root, child)
    seen: list[bool] = []

    class Watching(FakeRedis):
        def set(self, key: str, value: Any, **kwargs: Any) -> bool:
            if ":flight:subtree:" in key:  # the listing starts: the marker is up
                seen.append(("rapidly:n:flight:counting:" + root["id"]) in self.data)
            return super().set(key, value, **kwargs)

    redis = Watching()
    store = _store(api, redis, lambda _: None)
    store.prime([(Event.from_api(root), 1, None)])
    assert store.child_counts(Event.from_api(root)) == ChildCounts(1, 1)
    assert seen == [True]
    assert not [k for k in redis.data if ":flight:" in k]  # landed


def test_two_events_of_a_cycle_never_wait_for_each_other() -> None:
    """Each checks the other's marker before setting its own, in one round trip: when both
    are counted at once, the second sees the first and the first saw nothing."""
    api, redis = FakeApi(), FakeRedis()
    a_id, b_id = new_id(), new_id()
    a, b = make_event(a_id, b_id), make_event(b_id, a_id)
    api.add(a, b)
    store_a = _store(api, redis, lambda _: None)
    waited: list[float] = []
    store_b = _store(api, redis, waited.append)
    inner: list[ChildCounts] = []
    original = store_a._counting.count_children

    def count_a_while_b_counts(event: Event, *, shared: bool = False) -> ChildCounts:
        inner.append(store_b.child_counts(Event.from_api(b)))  # b starts while a is counted
        return original(event, shared=shared)

    store_a._counting.count_children = count_a_while_b_counts  # type: ignore[method-assign]
    store_a.prime([(Event.from_api(b), 2, None)])
    store_b.prime([(Event.from_api(a), 2, None)])
    store_a.child_counts(Event.from_api(a))
    assert inner  # b was counted inside a's counting: b waited (bounded), a never did
    assert sum(waited) <= FLIGHT_SECONDS + 0.1


def test_a_parent_404ing_in_another_process_is_waited_for_through_its_retries() -> None:
    """The other process retries the 404 for up to ``parent_not_found_wait_seconds``: a
    sibling's walk here waits that long, not one round trip, and takes its verdict."""
    api, redis = FakeApi(), FakeRedis()
    missing = new_id()  # never visible: every GET answers 404
    other = _store(api, redis, lambda _: None)
    flight = "rapidly:n:flight:get:" + missing
    redis.data[flight] = "another process"
    waited: list[float] = []

    def sleep(seconds: float) -> None:
        waited.append(seconds)
        if sum(waited) >= FLIGHT_SECONDS + 1.0 and flight in redis.data:
            # Its retries are over: the verdict is shared, then the flight lands.
            other._cache.remember_missing(missing, 5.0)
            del redis.data[flight]

    store = _store(api, redis, sleep)
    assert store.parent(missing) is None
    assert api.calls == {}  # no GET here: the other process's verdict stood
    assert sum(waited) > FLIGHT_SECONDS


def test_the_verdict_on_a_missing_parent_is_shared_before_its_flight_lands() -> None:
    api, redis = FakeApi(), FakeRedis()
    missing = new_id()
    flight = "rapidly:n:flight:get:" + missing
    missing_key = "rapidly:n:missing:" + missing
    seen_at_landing: list[bool] = []
    land = redis.register_script("")

    def landing(keys: list[str], args: list[str]) -> int:
        if keys[0] == flight:
            seen_at_landing.append(missing_key in redis.data)
        return land(keys=keys, args=args)

    redis.register_script = lambda _: landing  # type: ignore[method-assign]
    store = _store(api, redis, lambda _: None)
    assert store.parent(missing) is None
    assert api.calls["get"] >= 2  # it asked, and asked again through the replica-lag wait
    assert seen_at_landing == [True]


class _ReadsCounted(FakeRedis):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get(self, key: str) -> Any:
        self.reads.append(key)
        return super().get(key)


def test_counting_an_event_reads_its_shared_copy_once() -> None:
    """An event a window showed with descendants: its shared copy is read once on the way to
    the listing that counts it, not again at each step of the way (each read is a round trip)."""
    api, redis = FakeApi(), _ReadsCounted()
    parent, _ = _family(api)
    store = _store(api, redis, lambda _: None)
    store.prime([(Event.from_api(parent), 1, None)])
    assert store.child_counts(Event.from_api(parent)) == ChildCounts(1, 1)
    assert sum(api.calls.values()) == 1
    parent_reads = [key for key in redis.reads if key.endswith(parent["id"])]
    assert parent_reads == ["rapidly:n:evt:" + parent["id"]]


class _FlightsCounted(FakeRedis):
    def __init__(self) -> None:
        super().__init__()
        self.flights: list[str] = []

    def set(
        self, key: str, value: Any, ex: int | None = None, nx: bool = False, px: int | None = None
    ) -> bool:
        if nx and ":flight:" in key:
            self.flights.append(key.split(":flight:", 1)[1])
        return super().set(key, value, ex=ex, nx=nx, px=px)


def test_one_listing_holds_one_flight() -> None:
    """Counting an event that fits a page takes its subtree listing's flight only, and a wide
    one its children listing's: each flight is a Redis round trip to take and one to land."""
    api, redis = FakeApi(), _FlightsCounted()
    parent, _ = _family(api)
    store = _store(api, redis, lambda _: None)
    store.prime([(Event.from_api(parent), 1, None)])
    assert store.child_counts(Event.from_api(parent)) == ChildCounts(1, 1)
    assert [f for f in redis.flights if not f.startswith("counting:")] == [
        "subtree:" + parent["id"]
    ]
    wide = make_event(new_id())
    api.add(wide, *[make_event(new_id(), wide["id"]) for _ in range(3)])
    store.prime([(Event.from_api(wide), 3, None)])
    store._cache.mark_wide(wide["id"], store._cache.clock())
    redis.flights.clear()
    assert store.child_counts(Event.from_api(wide)) == ChildCounts(3, 3)
    assert [f for f in redis.flights if not f.startswith("counting:")] == ["children:" + wide["id"]]


class _ListingsCounted(FakeRedis):
    def __init__(self) -> None:
        super().__init__()
        self.registered = 0

    def zadd(self, key: str, mapping: dict[str, float]) -> int:
        self.registered += 1
        return super().zadd(key, mapping)


def test_a_listing_is_registered_with_the_fleet_once() -> None:
    """Counting an event through its subtree listing is one listing for the fleet to see
    (``await_lists``), registered once although two local flights lead to it, and gone
    after."""
    api, redis = FakeApi(), _ListingsCounted()
    parent, _ = _family(api)
    store = _store(api, redis, lambda _: None)
    store.prime([(Event.from_api(parent), 1, None)])
    assert store.child_counts(Event.from_api(parent)) == ChildCounts(1, 1)
    assert sum(api.calls.values()) == 1
    assert redis.registered == 1
    assert redis.data["rapidly:n:lists"] == {}


class _SlowSlots:
    """A budget whose slots take a few milliseconds to come (past the limiter's re-check
    threshold); ``wait`` is what it reports as its own wait (throttled when large)."""

    def __init__(self, wait: float) -> None:
        self.wait = wait

    def acquire(self) -> float:
        time.sleep(RECHECK_AFTER_SECONDS * 2)
        return self.wait

    def penalize(self, seconds: float) -> None:
        return None


@pytest.mark.parametrize(("budget_wait", "reads"), [(0.0, 1), (1.0, 2)])
def test_a_slot_coming_due_reads_the_shared_copy_only_under_a_binding_budget(
    budget_wait: float, reads: int
) -> None:
    """The re-check when the listing's slot comes due: without a binding budget the fleet
    flight kept other processes from answering, so only this process's copy is looked at;
    under one, calls are not shared through flights and the shared copy is read again."""
    api, redis = FakeApi(), _ReadsCounted()
    parent, _ = _family(api)
    store = _store(api, redis, lambda _: None, DispatchingLimiter(_SlowSlots(budget_wait)))
    store.prime([(Event.from_api(parent), 1, None)])
    assert store.child_counts(Event.from_api(parent)) == ChildCounts(1, 1)
    assert sum(api.calls.values()) == 1
    assert sum(key.endswith(parent["id"]) for key in redis.reads) == reads
