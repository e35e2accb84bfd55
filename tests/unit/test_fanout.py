"""Wide parents: a parent's children cost one list call per window of siblings, never every
page of the family, and a child missing from ``depth`` lists still gets its true counts."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

from tests.unit.fakeapi import FakeApi, make_event, new_id
from worker.enrichment import enrich_event
from worker.rapidly import EventStore, RapidlyClient, RetryPolicy

BASE_US = 1_795_000_000 * 1_000_000  # 2026-11-18


def ts(us: int) -> str:
    seconds, micro = divmod(us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{micro:06d}Z"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def family(api: FakeApi, n: int, *, parent_source: str = "user") -> tuple[dict, list[dict]]:
    """A parent and ``n`` children, one millisecond apart, oldest first."""
    root = make_event(new_id(), source="system", name="customer.created", ts=ts(BASE_US))
    parent = make_event(
        new_id(),
        root["id"] if parent_source == "user" else None,
        name="batch.started",
        source=parent_source,
        ts=ts(BASE_US + 1),
    )
    api.add(root, parent)
    children = [
        make_event(new_id(), parent["id"], name="batch.item", ts=ts(BASE_US + 1000 * (i + 1)))
        for i in range(n)
    ]
    api.add(*children)
    return parent, children


def clocked_store(client: RapidlyClient, clock: Clock, counts_max_age: float) -> EventStore:
    policy = RetryPolicy(max_attempts=2, not_found_wait_seconds=1, sleep=lambda s: None)
    return EventStore(
        client, policy=policy, max_events=10_000, clock=clock, counts_max_age=counts_max_age
    )


def list_requests(api: FakeApi) -> list[dict[str, str]]:
    return [dict(r.url.params) for r in api.requests if r.url.path == "/api/events/"]


def test_trickled_children_cost_one_list_call_per_window(
    api: FakeApi, client: RapidlyClient
) -> None:
    """600 children arriving 20 ms apart while counts live 5 s (the 60 s default at 1/12 the
    scale): re-listing the whole family whenever counts expire would cost 6 pages a refresh."""
    clock = Clock()
    store = clocked_store(client, clock, counts_max_age=5.0)
    parent, children = family(api, 600)
    for child in children:
        record = enrich_event(child["id"], store, max_depth=100)
        h = record.body["hierarchy"]
        assert (h["child_count"], h["descendant_count"]) == (0, 0)
        assert h["ancestors"][-1]["id"] == parent["id"]
        assert record.body["event"] == {**child, "child_count": 0}
        clock.now += 0.02
        time.sleep(0.001)  # lets a read-ahead thread register before its window is needed
    calls = sum(api.calls.values())
    assert api.calls["list"] <= math.ceil(600 / 100) + 1
    assert calls <= math.ceil(600 / 50)
    # Never every page: each list call asked for one page from a point in time on.
    assert all(p.get("page", "1") == "1" for p in list_requests(api))


def test_a_child_late_in_depth_lists_is_not_taken_as_a_leaf(
    api: FakeApi, store: EventStore
) -> None:
    _, children = family(api, 250)
    late = children[120]
    grandchildren = [make_event(new_id(), late["id"], ts=ts(BASE_US + 900_000 + i)) for i in (1, 2)]
    api.add(*grandchildren)
    api.late.add(late["id"])  # in GET at once, in depth lists seconds later
    for child in children[100:130]:
        record = enrich_event(child["id"], store, max_depth=100)
        h = record.body["hierarchy"]
        expected = (2, 2) if child is late else (0, 0)
        assert (h["child_count"], h["descendant_count"]) == expected, child is late
    # GET the first child, the parent, the root, and the late child (in no list yet); list the
    # family's first page, a window from the first child, a window from the late child and,
    # when that one lacks it too, the late child's own children.
    assert api.calls == {"get": 4, "list": 4}


def test_a_wide_event_gets_its_direct_count_from_one_limit_1_page(
    api: FakeApi, store: EventStore
) -> None:
    parent, children = family(api, 250, parent_source="system")
    grandchild = make_event(new_id(), children[3]["id"], ts=ts(BASE_US + 900_000))
    api.add(grandchild)
    record = enrich_event(parent["id"], store, max_depth=100)
    h = record.body["hierarchy"]
    assert (h["child_count"], h["descendant_count"]) == (250, 251)
    time.sleep(0.2)  # the root window's background work, if any, is done
    lists = list_requests(api)
    assert not any(p.get("page") not in (None, "1") for p in lists)  # no paging through 250
    direct = [p for p in lists if p.get("parent_id") == parent["id"]]
    assert [p["limit"] for p in direct] == ["1"]
    assert api.calls["list"] == 2  # the root window and the one-item page


def test_a_small_family_is_listed_once_whole(api: FakeApi, store: EventStore) -> None:
    parent, children = family(api, 30)
    for child in children:
        enrich_event(child["id"], store, max_depth=100)
    record = enrich_event(parent["id"], store, max_depth=100)
    h = record.body["hierarchy"]
    assert (h["child_count"], h["descendant_count"]) == (30, 30)
    # GET the first child, its parent and root; one listing answered every child and the parent.
    assert api.calls == {"get": 3, "list": 1}
