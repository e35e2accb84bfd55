"""The dedupe state machine and the service's publish ordering (local store and real Redis)."""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

import pytest
import structlog

from tests.unit.fakeapi import FakeApi, make_event, new_id
from worker.dedupe import Claim, Lease, LocalDedupeStore, RedisDedupeStore
from worker.enrichment import EnrichedRecord
from worker.errors import LeaseBusy, NotPublished, PublishError
from worker.rapidly import EventStore
from worker.service import EnrichmentService


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


def redis_client() -> Any:
    if not redis_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and Redis is not reachable on 127.0.0.1:6379")
        pytest.skip("Redis not reachable on 127.0.0.1:6379 (redis-server --daemonize yes ...)")
    import redis

    return redis.Redis.from_url("redis://127.0.0.1:6379/12")


@pytest.fixture(params=["local", "redis"])
def store_pair(request: pytest.FixtureRequest) -> Any:
    """Two handles on one store, as two workers would have."""
    if request.param == "local":
        store = LocalDedupeStore(ttl=60, lease=30)
        return store, store
    client = redis_client()
    ns = new_id()
    return (
        RedisDedupeStore(client, ns, ttl=60, lease=30),
        RedisDedupeStore(client, ns, ttl=60, lease=30),
    )


def test_claim_states(store_pair: Any) -> None:
    a, b = store_pair
    key = new_id()
    assert not a.is_done(key)
    lease = a.claim(key)
    assert isinstance(lease, Lease)
    assert b.claim(key) is Claim.BUSY  # another claim holds it, even in the same process
    assert a.confirm(lease)
    a.mark_sent(lease)
    assert b.is_done(key)  # sent counts as published: a redelivery publishes nothing
    assert b.claim(key) is Claim.DONE
    a.complete(lease)
    assert b.is_done(key)
    a.release(lease)  # never clears a done mark
    assert b.is_done(key)


def test_release_clears_only_this_claims_lease_or_sent_mark(store_pair: Any) -> None:
    a, b = store_pair
    for step in ("lease", "sent"):
        key = new_id()
        lease = a.claim(key)
        assert isinstance(lease, Lease)
        if step == "sent":
            a.mark_sent(lease)
        b.release(Lease(key))  # another claim's release: no effect
        assert b.claim(key) in (Claim.BUSY, Claim.DONE)
        a.release(lease)
        assert not b.is_done(key)
        assert isinstance(b.claim(key), Lease)


def test_confirm_fails_once_another_claim_took_a_lapsed_lease() -> None:
    store = LocalDedupeStore(ttl=60, lease=0.01)
    key = new_id()
    first = store.claim(key)
    assert isinstance(first, Lease)
    import time

    time.sleep(0.02)  # lapsed
    second = store.claim(key)
    assert isinstance(second, Lease)
    assert not store.confirm(first)  # the slow first claim must not publish
    assert store.confirm(second)


def test_confirm_retakes_a_lapsed_unclaimed_lease() -> None:
    client = redis_client()
    store = RedisDedupeStore(client, new_id(), ttl=60, lease=30, fresh_share=0)
    key = new_id()
    lease = store.claim(key)
    assert isinstance(lease, Lease)
    client.delete(store._prefix + key)  # expired meanwhile
    assert store.confirm(lease)
    assert store.claim(key) is Claim.BUSY


def test_a_fresh_lease_is_confirmed_without_a_round_trip_an_old_one_with_one() -> None:
    client = redis_client()
    store = RedisDedupeStore(client, new_id(), ttl=60, lease=40)  # fresh for 10 s
    lease = store.claim(new_id())
    assert isinstance(lease, Lease)
    calls: list[Any] = []
    confirm_own = store._confirm_own
    store._confirm_own = lambda **kwargs: calls.append(kwargs) or confirm_own(**kwargs)
    assert store.confirm(lease)
    assert calls == []
    aged = dataclasses.replace(lease, claimed_at=lease.claimed_at - 10.0)
    assert store.confirm(aged)
    assert len(calls) == 1
    client.set(store._prefix + lease.key, b"lease:another-claim")
    assert not store.confirm(aged)  # checked in Redis: another claim holds it now


def test_scripts_survive_a_flushed_script_cache() -> None:
    """A Redis restart empties the script cache: confirm and release still work (EVALSHA falls
    back to loading the script again)."""
    client = redis_client()
    store = RedisDedupeStore(client, new_id(), ttl=60, lease=30, fresh_share=0)
    key = new_id()
    lease = store.claim(key)
    assert isinstance(lease, Lease)
    client.script_flush()
    assert store.confirm(lease)
    client.script_flush()
    store.release(lease)
    assert isinstance(store.claim(key), Lease)  # released: claimable again


class FakePublisher:
    def __init__(self, dedupe: Any, *, fail: str | None = None) -> None:
        self.dedupe = dedupe
        self.fail = fail
        self.published: list[EnrichedRecord] = []
        self.state_when_sent: list[bool] = []

    def publish(self, record: EnrichedRecord, *, mark: Any) -> bool:
        """As RecordPublisher: the sent mark right after the record is written."""
        if self.fail == "before":
            raise PublishError("connection refused", sent=False)
        if self.fail == "unpublishable":
            raise PublishError("struct.error: routing key too long", sent=False, unpublishable=True)
        with self.dedupe.sent_marks() as marks:
            (marked,) = marks([mark])
        self.state_when_sent.append(self.dedupe.is_done(record.event_id))
        if self.fail == "confirm":
            raise PublishError("connection closed while waiting for the confirm", sent=True)
        if self.fail == "refused":
            raise PublishError("AccessRefused: 403", sent=True, refused=True)
        if self.fail == "nack":
            raise PublishError("the broker refused (nacked) the message", sent=True, nacked=True)
        self.published.append(record)
        return bool(marked)


def service_for(store: EventStore, dedupe: Any, publisher: Any) -> EnrichmentService:
    return EnrichmentService(
        store, publisher, dedupe, max_depth=100, lease_wait_seconds=0.0, sleep=lambda _: None
    )


def test_published_once_and_marked_before_the_confirm(api: FakeApi, store: EventStore) -> None:
    event = make_event(new_id())
    api.add(event)
    dedupe = LocalDedupeStore(ttl=60, lease=30)
    publisher = FakePublisher(dedupe)
    service = service_for(store, dedupe, publisher)
    assert service.process(event["id"]).outcome == "published"
    assert publisher.state_when_sent == [True]  # a kill while waiting for the confirm is covered
    assert service.process(event["id"]).outcome == "duplicate"
    assert len(publisher.published) == 1


@pytest.mark.parametrize("fail", ["before", "nack", "confirm", "refused"])
def test_failed_publish_clears_the_mark_and_requeues(
    api: FakeApi, store: EventStore, fail: str
) -> None:
    """Published means confirmed: a record written and marked whose confirm never came (or whose
    channel the broker closed) is released and republished by the redelivery."""
    event = make_event(new_id())
    api.add(event)
    dedupe = LocalDedupeStore(ttl=60, lease=30)
    published: list[EnrichedRecord] = []
    service = EnrichmentService(
        store,
        FakePublisher(dedupe, fail=fail),
        dedupe,
        max_depth=100,
        lease_wait_seconds=0.0,
        sleep=lambda _: None,
        on_published=published.append,
    )
    with pytest.raises(NotPublished):
        service.process(event["id"])
    assert published == []  # not counted as published
    assert not dedupe.is_done(event["id"])  # the requeued message will publish
    ok = FakePublisher(dedupe)
    assert service_for(store, dedupe, ok).process(event["id"]).outcome == "published"
    assert len(ok.published) == 1


def test_unpublishable_record_is_dead_lettered_not_requeued(
    api: FakeApi, store: EventStore
) -> None:
    from worker.errors import Unpublishable

    event = make_event(new_id())
    api.add(event)
    dedupe = LocalDedupeStore(ttl=60, lease=30)
    service = service_for(store, dedupe, FakePublisher(dedupe, fail="unpublishable"))
    with pytest.raises(Unpublishable) as caught:
        service.process(event["id"])
    assert caught.value.reason == "unpublishable"
    assert not dedupe.is_done(event["id"])


class FailingRelease(LocalDedupeStore):
    def __init__(self, failures: int) -> None:
        super().__init__(ttl=60, lease=30)
        self.failures = failures

    def release(self, lease: Lease) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("redis restarting")
        super().release(lease)


def test_sent_mark_release_outlasts_a_redis_blip(api: FakeApi, store: EventStore) -> None:
    """A sent mark left behind would make the redelivery ack an unconfirmed record unpublished."""
    event = make_event(new_id())
    api.add(event)
    dedupe = FailingRelease(failures=5)
    with pytest.raises(NotPublished):
        service_for(store, dedupe, FakePublisher(dedupe, fail="confirm")).process(event["id"])
    assert not dedupe.is_done(event["id"])


def test_busy_lease_is_transient(api: FakeApi, store: EventStore) -> None:
    event = make_event(new_id())
    api.add(event)
    dedupe = LocalDedupeStore(ttl=60, lease=30)
    assert isinstance(dedupe.claim(event["id"]), Lease)  # someone else is working on it
    with pytest.raises(LeaseBusy):
        service_for(store, dedupe, FakePublisher(dedupe)).process(event["id"])


class DownAfterClaim(LocalDedupeStore):
    def confirm(self, lease: Lease) -> bool:
        raise ConnectionError("redis went away")


def test_store_down_before_publish_publishes_nothing(api: FakeApi, store: EventStore) -> None:
    """Fault-suite finding: a record published while the store is down cannot be marked, and a
    kill then duplicates it. The service now checks its lease first and requeues instead."""
    from worker.errors import DedupeUnavailable

    event = make_event(new_id())
    api.add(event)
    dedupe = DownAfterClaim(ttl=60, lease=30)
    publisher = FakePublisher(dedupe)
    with pytest.raises(DedupeUnavailable):
        service_for(store, dedupe, publisher).process(event["id"])
    assert publisher.published == []


def test_sent_marks_write_the_sent_marks(store_pair: Any) -> None:
    a, b = store_pair
    keys = [new_id(), new_id()]
    leases = [a.claim(key) for key in keys]
    assert all(isinstance(lease, Lease) for lease in leases)
    with a.sent_marks() as mark:
        assert not any(b.is_done(key) for key in keys)
        assert mark(leases) == [True, True]
        assert all(b.is_done(key) for key in keys)
        assert mark([]) == []
    assert [b.claim(key) for key in keys] == [Claim.DONE, Claim.DONE]


class FlakyMarks(LocalDedupeStore):
    """The sent mark fails and the done mark fails for a while (Redis restarting)."""

    def __init__(self, failures: int) -> None:
        super().__init__(ttl=60, lease=30)
        self.failures = failures

    def mark_sent(self, lease: Lease) -> None:
        raise ConnectionError("redis restarting")

    def complete(self, lease: Lease) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("redis restarting")
        super().complete(lease)


def test_done_mark_outlasts_a_redis_restart(api: FakeApi, store: EventStore) -> None:
    """Fault-suite finding: giving up on the done mark after 3 s requeued a published record."""
    event = make_event(new_id())
    api.add(event)
    dedupe = FlakyMarks(failures=40)  # ~30 s of retries with the service's back-off
    publisher = FakePublisher(dedupe)
    assert service_for(store, dedupe, publisher).process(event["id"]).outcome == "published"
    assert dedupe.is_done(event["id"])


def test_the_service_counts_the_calls_of_each_event_for_the_summary_line(
    api: FakeApi, store: EventStore
) -> None:
    event = make_event(new_id())
    api.add(event)
    dedupe = LocalDedupeStore(ttl=60, lease=30)
    service = service_for(store, dedupe, FakePublisher(dedupe))
    structlog.contextvars.clear_contextvars()
    try:
        assert service.process(event["id"]).outcome == "published"
        # GET the event, list its children: the count the task's enrich.finished line logs.
        assert structlog.contextvars.get_contextvars()["api_calls"] == sum(api.calls.values()) == 2
        assert service.process(event["id"]).outcome == "duplicate"
        assert structlog.contextvars.get_contextvars()["api_calls"] == 0  # its own count
    finally:
        structlog.contextvars.clear_contextvars()
