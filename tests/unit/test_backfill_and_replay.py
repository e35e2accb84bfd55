"""The backfill's paging and hand-over against an in-memory list endpoint, and the replay's
header rules: plain functions and fakes, no broker."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

from worker.backfill import Backfill, Checkpoint, format_time, parse_time, task_message
from worker.rapidly import Event, EventPage
from worker.replay import replay_count, replayed_headers

T0 = parse_time("2025-03-03T08:00:00Z")


def _event(ts: int, parent: str | None = None, descendants: int = 0) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "timestamp": format_time(ts),
        "parent_id": parent,
        "source": "user",
        "name": "x",
        "child_count": descendants,
    }


class FakeStore:
    """The list endpoint's paging rules (exclusive bounds, limit, page numbers) over a list."""

    def __init__(self, events: list[dict[str, Any]]):
        self.events = events
        self.calls: list[dict[str, Any]] = []
        self.primed: dict[str, tuple[int, int | None]] = {}
        self.counted: list[str] = []

    def list_page(self, params: dict[str, Any]) -> EventPage:
        self.calls.append(params)
        start = parse_time(params["start_timestamp"])
        end = parse_time(params["end_timestamp"]) if "end_timestamp" in params else math.inf
        match = sorted(
            (e for e in self.events if start < parse_time(e["timestamp"]) < end),
            key=lambda e: parse_time(e["timestamp"]),
        )
        limit, page = params["limit"], params["page"]
        items = match[(page - 1) * limit : page * limit]
        total = len(match) if items else 0
        return EventPage(
            events=[Event.from_api(e) for e in items],
            total=total,
            page=page,
            pages=math.ceil(total / limit),
        )

    def prime(self, listed: Any) -> None:
        for event, descendants, direct in listed:
            self.primed[event.id] = (descendants, direct)

    def count_children(self, event: Event) -> None:
        self.counted.append(event.id)


class FakePublisher:
    def __init__(self) -> None:
        self.ids: list[str] = []

    def publish_task(self, message: Any) -> None:
        self.ids.append(message.headers["argsrepr"][2:-2])


def _run(store: FakeStore, tmp: Path, until: int) -> tuple[FakePublisher, Checkpoint]:
    publisher = FakePublisher()
    checkpoint = Checkpoint(tmp / "cp.json", "k", T0)
    backfill = Backfill(
        store=store,  # type: ignore[arg-type]
        publisher=publisher,  # type: ignore[arg-type]
        checkpoint=checkpoint,
        broker_url="memory://",
        until=until,
        follow=False,
        poll_seconds=1,
        margin_seconds=0,
        max_backlog=10**9,
    )
    assert backfill.run()
    return publisher, checkpoint


def test_every_event_once_across_ties_and_page_boundaries(tmp_path: Path) -> None:
    events = [_event(T0 + 10 * n) for n in range(150)]
    events += [_event(T0 + 5_000) for _ in range(230)]  # more than two pages in one microsecond
    events += [_event(T0 + 6_000 + n % 2) for n in range(130)]  # a tie across a page boundary
    store = FakeStore(events)
    publisher, checkpoint = _run(store, tmp_path, T0 + 10**9)
    assert sorted(publisher.ids) == sorted(e["id"] for e in events)
    assert len(store.calls) <= 12
    assert checkpoint.count == len(events)
    assert store.primed == {e["id"]: (0, 0) for e in events}


def test_direct_counts_from_the_pages_and_one_listing_for_the_rest(tmp_path: Path) -> None:
    root = _event(T0, descendants=4)
    child = _event(T0 + 1, root["id"], descendants=2)
    grandkids = [_event(T0 + 2 + n, child["id"]) for n in range(2)]
    sibling = _event(T0 + 9, root["id"])
    outside = _event(T0 + 20, descendants=1)  # its child is after --until
    late_child = _event(T0 + 10**6, outside["id"])
    store = FakeStore([root, child, *grandkids, sibling, outside, late_child])
    publisher, _ = _run(store, tmp_path, T0 + 1000)
    assert late_child["id"] not in publisher.ids
    assert len(publisher.ids) == 6
    assert store.primed[root["id"]] == (4, 2)  # two direct children: child and sibling
    assert store.primed[child["id"]] == (2, 2)
    assert store.counted == [outside["id"]]  # the only one the pages could not settle
    # A parent is handed over after its children were seen, never before.
    assert publisher.ids.index(root["id"]) > publisher.ids.index(sibling["id"])


def test_a_checkpoint_resumes_where_it_stopped(tmp_path: Path) -> None:
    events = [_event(T0 + n) for n in range(250)]
    store = FakeStore(events)
    first, checkpoint = _run(store, tmp_path, T0 + 10**6)
    assert len(first.ids) == 250
    reopened = Checkpoint.open(tmp_path / "cp.json", "k", T0)
    assert reopened.cursor == checkpoint.cursor and reopened.count == 250
    again = FakePublisher()
    Backfill(
        store=store,  # type: ignore[arg-type]
        publisher=again,  # type: ignore[arg-type]
        checkpoint=reopened,
        broker_url="memory://",
        until=T0 + 10**6,
        follow=False,
        poll_seconds=1,
        margin_seconds=0,
        max_backlog=10**9,
    ).run()
    assert again.ids == []


def test_times_are_exact_to_the_microsecond() -> None:
    assert format_time(parse_time("2025-03-03T08:00:00.000001+00:00")) == (
        "2025-03-03T08:00:00.000001Z"
    )
    assert parse_time("2025-03-03T09:00:00+01:00") == T0
    assert format_time(T0 - 1) == "2025-03-03T07:59:59.999999Z"


def test_task_message_is_what_send_task_writes() -> None:
    message = task_message("0b4c1d2e-0000-4000-8000-000000000000")
    assert message.headers["task"] == "events.enrich"
    assert message.headers["id"] == message.properties["correlation_id"]
    assert message.body.startswith(b'[["0b4c1d2e-0000-4000-8000-000000000000"], {}, ')


def test_replayed_headers() -> None:
    headers = {
        "id": "t1",
        "task": "events.enrich",
        "x-death-reason": "event_not_found",
        "x-death-detail": "...",
        "x-death": [{"count": 1}],
        "x-attempts": 3,
    }
    assert replayed_headers(headers) == {"id": "t1", "task": "events.enrich", "x-replays": 1}
    assert replayed_headers({**headers, "x-replays": 2})["x-replays"] == 3
    assert replay_count({"x-replays": "junk"}) == 0


def test_a_worker_picks_up_the_direct_count_the_backfill_cached_later() -> None:
    from pydantic import SecretStr

    from tests.unit.fakeapi import BASE, TOKEN, DictRedis, FakeApi, make_event, new_id
    from worker.rapidly import ChildCounts, EventStore, RapidlyClient

    parent = make_event(new_id())
    api = FakeApi([parent])
    shared = DictRedis()
    client = RapidlyClient(BASE, SecretStr(TOKEN), transport=api.transport())
    try:
        backfill = EventStore(client, redis=shared, redis_namespace="n", max_events=0)
        worker = EventStore(client, redis=shared, redis_namespace="n")
        listed = Event.from_api({**parent, "child_count": 3})
        backfill.prime([(listed, 3, None)])  # first seen: children not yet
        assert worker.parent(parent["id"]) is not None  # a child's walk caches it here
        backfill.prime([(listed, 3, 2)])  # the backfill saw the children
        assert worker.child_counts(Event.from_api(parent)) == ChildCounts(2, 3)
    finally:
        client.close()
    assert api.requests == []  # no call at all
