"""The dedupe state machine and the service's publish ordering (local store and real Redis)."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from tests.unit.fakeapi import FakeApi, make_event, new_id
from worker.dedupe import Claim, LocalDedupeStore, RedisDedupeStore
from worker.enrichment import EnrichedRecord
from worker.publishing import PublishError
from worker.rapidly import EventStore
from worker.service import EnrichmentService, LeaseBusy, NotPublished


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(params=["local", "redis"])
def stores(request: pytest.FixtureRequest) -> Any:
    """Two handles on one store, as two workers would have."""
    if request.param == "local":
        store = LocalDedupeStore(ttl=60, lease=30)
        return store, store
    if not redis_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and Redis is not reachable on 127.0.0.1:6379")
        pytest.skip("Redis not reachable on 127.0.0.1:6379 (redis-server --daemonize yes ...)")
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/12")
    client.flushdb()
    ns = new_id()
    return (
        RedisDedupeStore(client, ns, ttl=60, lease=30),
        RedisDedupeStore(client, ns, ttl=60, lease=30),
    )


def test_claim_states(stores: Any) -> None:
    a, b = stores
    event_id = new_id()
    assert not a.is_done(event_id)
    assert a.claim(event_id) is Claim.ACQUIRED
    if a is not b:
        assert b.claim(event_id) is Claim.BUSY  # another worker's lease
    a.mark_sent(event_id)
    assert b.is_done(event_id)  # sent counts as published: a redelivery publishes nothing
    assert b.claim(event_id) is Claim.DONE
    a.complete(event_id)
    assert b.is_done(event_id)
    b.release(event_id)  # never clears a done mark
    assert a.is_done(event_id)


def test_release_clears_own_lease_and_sent_mark(stores: Any) -> None:
    a, b = stores
    for step in ("lease", "sent"):
        event_id = new_id()
        assert a.claim(event_id) is Claim.ACQUIRED
        if step == "sent":
            a.mark_sent(event_id)
        a.release(event_id)
        assert not b.is_done(event_id)
        assert b.claim(event_id) is Claim.ACQUIRED


def test_redis_release_leaves_other_workers_lease() -> None:
    if not redis_available():
        pytest.skip("Redis not reachable")
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/12")
    ns = new_id()
    a = RedisDedupeStore(client, ns, ttl=60, lease=30)
    b = RedisDedupeStore(client, ns, ttl=60, lease=30)
    event_id = new_id()
    assert a.claim(event_id) is Claim.ACQUIRED
    b.release(event_id)
    assert b.claim(event_id) is Claim.BUSY


class FakePublisher:
    def __init__(self, dedupe: Any, *, fail: str | None = None) -> None:
        self.dedupe = dedupe
        self.fail = fail
        self.published: list[EnrichedRecord] = []
        self.state_when_sent: list[bool] = []

    def publish(self, record: EnrichedRecord, *, on_sent: Any) -> None:
        if self.fail == "before":
            raise PublishError("connection refused", sent=False)
        on_sent()
        self.state_when_sent.append(self.dedupe.is_done(record.event_id))
        if self.fail == "confirm":
            raise PublishError("confirm timed out", sent=True)
        self.published.append(record)


def service_for(api: FakeApi, store: EventStore, dedupe: Any, publisher: Any) -> EnrichmentService:
    return EnrichmentService(
        store, publisher, dedupe, max_depth=100, lease_wait_seconds=0.0, sleep=lambda _: None
    )


def test_published_once_and_marked_before_the_confirm(api: FakeApi, store: EventStore) -> None:
    event = make_event(new_id())
    api.add(event)
    dedupe = LocalDedupeStore(ttl=60, lease=30)
    publisher = FakePublisher(dedupe)
    service = service_for(api, store, dedupe, publisher)
    assert service.process(event["id"]).outcome == "published"
    assert publisher.state_when_sent == [True]  # a kill while waiting for the confirm is covered
    assert service.process(event["id"]).outcome == "duplicate"
    assert len(publisher.published) == 1


@pytest.mark.parametrize("fail", ["before", "confirm"])
def test_failed_publish_clears_the_mark_and_requeues(
    api: FakeApi, store: EventStore, fail: str
) -> None:
    event = make_event(new_id())
    api.add(event)
    dedupe = LocalDedupeStore(ttl=60, lease=30)
    service = service_for(api, store, dedupe, FakePublisher(dedupe, fail=fail))
    with pytest.raises(NotPublished):
        service.process(event["id"])
    assert not dedupe.is_done(event["id"])  # the requeued message will publish
    ok = FakePublisher(dedupe)
    assert service_for(api, store, dedupe, ok).process(event["id"]).outcome == "published"
    assert len(ok.published) == 1


def test_busy_lease_is_transient(api: FakeApi, store: EventStore) -> None:
    event = make_event(new_id())
    api.add(event)
    dedupe = LocalDedupeStore(ttl=60, lease=30)
    assert dedupe.claim(event["id"]) is Claim.ACQUIRED  # someone else is publishing it
    with pytest.raises(LeaseBusy):
        service_for(api, store, dedupe, FakePublisher(dedupe)).process(event["id"])
