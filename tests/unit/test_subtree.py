"""Subtree listings: one ``parent_id=X&depth=5`` page gives X's counts and those of every node
four levels down; cycles, repeats, broken parents and wide subtrees fall back to the children
listing; a burst of events waits for the events and listings before it instead of repeating
them."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.unit.fakeapi import FakeApi, make_event, new_id
from worker.enrichment import enrich_event
from worker.rapidly import Event, EventPage, EventStore
from worker.rapidly._cache import ChildCounts
from worker.rapidly._flight import Flights
from worker.rapidly._subtree import SUBTREE_DEPTH, read_subtree, subtree_params


def chain(api: FakeApi, n: int, parent_id: str | None = None) -> list[dict[str, Any]]:
    """``n`` events, each the parent of the next."""
    events: list[dict[str, Any]] = []
    for i in range(n):
        events.append(
            make_event(
                new_id(),
                events[-1]["id"] if events else parent_id,
                ts=f"2026-11-20T10:00:{i:02d}Z",
            )
        )
    api.add(*events)
    return events


def listed(api: FakeApi, event: dict[str, Any]) -> Event:
    return Event.from_api({**event, "child_count": api.descendants(event["id"])})


def page(api: FakeApi, events: list[dict[str, Any]], total: int | None = None) -> EventPage:
    return EventPage(
        events=[listed(api, e) for e in events],
        total=len(events) if total is None else total,
        page=1,
        pages=1,
    )


def list_params(api: FakeApi) -> list[dict[str, str]]:
    return [dict(r.url.params) for r in api.requests if r.url.path == "/api/events/"]


def test_a_whole_page_tells_the_counts_four_levels_down() -> None:
    api = FakeApi()
    root, *below = chain(api, 8)
    subtree = read_subtree(listed(api, root), page(api, api.below(root["id"], 5)), 1.0)
    assert subtree is not None
    assert subtree.counts == ChildCounts(1, 7)
    counts = {e.event.id: (e.direct, e.descendants) for e in subtree.entries}
    assert [counts[e["id"]] for e in below[:4]] == [(1, 6), (1, 5), (1, 4), (1, 3)]
    # Level 5: its own children are not on the page, only its descendant count is known.
    assert counts[below[4]["id"]] == (None, 2)
    assert below[5]["id"] not in counts


def test_a_leaf_five_levels_down_is_known_as_a_leaf() -> None:
    api = FakeApi()
    root, *below = chain(api, 6)
    subtree = read_subtree(listed(api, root), page(api, api.below(root["id"], 5)), 1.0)
    assert subtree is not None
    last = next(e for e in subtree.entries if e.event.id == below[-1]["id"])
    assert (last.direct, last.descendants) == (None, 0)  # no descendants: no call either


def test_a_tree_is_counted_per_node() -> None:
    api = FakeApi()
    root = make_event(new_id())
    a, b = make_event(new_id(), root["id"]), make_event(new_id(), root["id"])
    a1, a2 = make_event(new_id(), a["id"]), make_event(new_id(), a["id"])
    a11 = make_event(new_id(), a1["id"])
    api.add(root, a, b, a1, a2, a11)
    subtree = read_subtree(listed(api, root), page(api, api.below(root["id"], 5)), 1.0)
    assert subtree is not None
    assert subtree.counts == ChildCounts(2, 5)
    counts = {e.event.id: (e.direct, e.descendants) for e in subtree.entries}
    assert counts[a["id"]] == (2, 3)
    assert counts[b["id"]] == (0, 0)
    assert counts[a1["id"]] == (1, 1)


def test_an_incomplete_page_tells_nothing() -> None:
    api = FakeApi()
    root, *_ = chain(api, 4)
    events = api.below(root["id"], 5)
    assert read_subtree(listed(api, root), page(api, events, total=len(events) + 1), 1.0) is None


def test_a_cycle_through_the_listed_event_tells_nothing() -> None:
    api = FakeApi()
    a, b, c = (make_event(new_id()) for _ in range(3))
    a["parent_id"], b["parent_id"], c["parent_id"] = c["id"], a["id"], b["id"]
    api.add(a, b, c)
    # The simulator leaves the start out; a closure table might list it too.
    for events in (api.below(a["id"], 5), [b, c, a]):
        assert read_subtree(listed(api, a), page(api, events), 1.0) is None


def test_repeats_and_broken_parents_tell_nothing() -> None:
    api = FakeApi()
    root, child, grandchild = chain(api, 3)
    stranger = make_event(new_id(), new_id())
    api.add(stranger)
    event = listed(api, root)
    assert read_subtree(event, page(api, [child, grandchild, child]), 1.0) is None
    assert read_subtree(event, page(api, [child, grandchild, stranger]), 1.0) is None
    assert read_subtree(event, page(api, [grandchild]), 1.0) is None  # its parent is missing


def test_too_deep_a_page_tells_nothing() -> None:
    api = FakeApi()
    root, *below = chain(api, SUBTREE_DEPTH + 2)
    assert read_subtree(listed(api, root), page(api, below), 1.0) is None


def test_children_that_do_not_add_up_give_no_direct_count() -> None:
    api = FakeApi()
    root, child, grandchild = chain(api, 3)
    late = Event.from_api({**child, "child_count": 5})  # counts moved on meanwhile
    events = EventPage(events=[late, listed(api, grandchild)], total=2, page=1, pages=1)
    subtree = read_subtree(listed(api, root), events, 1.0)
    assert subtree is not None
    entry = next(e for e in subtree.entries if e.event.id == child["id"])
    assert (entry.direct, entry.descendants) == (None, 5)


def test_a_chain_costs_one_listing_per_four_events(api: FakeApi, store: EventStore) -> None:
    events = chain(api, 13)
    for event in events:
        enrich_event(event["id"], store, max_depth=100)
    lists = [p for p in list_params(api) if p["depth"] != "0"]  # the root window aside
    assert all(p["depth"] == "5" for p in lists)
    assert len(lists) <= 4  # 13 events, one page per four or five of them
    assert api.calls["get"] == 1  # every other event came with a listing
    for event in events:
        record = enrich_event(event["id"], store, max_depth=100)
        below = api.descendants(event["id"])
        assert record.body["hierarchy"]["child_count"] == (1 if below else 0)
        assert record.body["hierarchy"]["descendant_count"] == below


def test_a_wide_subtree_falls_back_to_the_children_once(api: FakeApi, store: EventStore) -> None:
    root = make_event(new_id())
    kids = [make_event(new_id(), root["id"]) for _ in range(60)]
    grandkids = [make_event(new_id(), k["id"]) for k in kids]
    api.add(root, *kids, *grandkids)
    event = store.event(root["id"])
    assert store.count_children(event) == ChildCounts(60, 120)
    depths = [p["depth"] for p in list_params(api)]
    assert depths == ["5", "1"]  # the subtree page was not whole: the children were listed
    store.count_children(event)  # known wide now: no subtree page again
    assert [p["depth"] for p in list_params(api)] == ["5", "1", "1"]


def test_a_cycle_falls_back_to_the_children(api: FakeApi, store: EventStore) -> None:
    a, b = make_event(new_id()), make_event(new_id())
    a["parent_id"], b["parent_id"] = b["id"], a["id"]
    extra = make_event(new_id(), a["id"])
    api.add(a, b, extra)
    event = store.event(a["id"])
    counts = store.child_counts(event)
    assert counts.direct == 2  # b and extra, as a children listing tells
    assert "1" in [p["depth"] for p in list_params(api)]


def test_subtree_params_ask_for_five_levels_oldest_first() -> None:
    params = subtree_params("x")
    assert (params["depth"], params["sorting"], params["limit"]) == (5, "timestamp", 100)


def test_an_uncached_event_waits_for_the_one_taken_up_before_it() -> None:
    flights = Flights()
    assert flights.enter("first", 5.0) is False  # nothing before it: goes at once
    order: list[str] = []

    def second() -> None:
        flights.enter("second", 5.0)
        order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.05)
    order.append("first counted")
    flights.leave("first")
    thread.join(2)
    assert order == ["first counted", "second"]


def test_the_entry_wait_is_bounded() -> None:
    flights = Flights()
    # Taken up elsewhere and never counted (failed on the way).
    thread = threading.Thread(target=flights.enter, args=("stuck", 0.1))
    thread.start()
    thread.join(2)
    started = time.monotonic()
    assert flights.enter("next", 0.1) is True
    assert time.monotonic() - started < 1.0


def test_events_on_a_cycle_never_wait_for_each_other() -> None:
    flights = Flights()
    done: list[str] = []

    def count(event_id: str, ancestors: list[str]) -> None:
        with flights.counting(event_id, ancestors):
            time.sleep(0.02)
            done.append(event_id)

    threads = [
        threading.Thread(target=count, args=("a", ["b"])),
        threading.Thread(target=count, args=("b", ["a"])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2)
    assert sorted(done) == ["a", "b"]


def test_an_event_is_told_when_the_one_that_arrived_before_it_is_counted() -> None:
    flights = Flights()
    assert flights.arrive("first") is None
    before = flights.arrive("second")
    assert before is not None and not before.is_set()
    flights.leave("first")
    assert before.is_set()
    assert flights.arrive("third") is not None  # "second" is still being enriched


def test_a_chain_arriving_at_once_is_fetched_once(api: FakeApi, store: EventStore) -> None:
    """Thirteen chained IDs enriched concurrently: each waits for the one before it, whose
    listing brings it, instead of all being fetched at once."""
    events = chain(api, 13)
    threads = [
        threading.Thread(target=enrich_event, args=(e["id"], store), kwargs={"max_depth": 100})
        for e in events
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert api.calls["get"] <= 2


def test_a_parent_that_stayed_404_is_not_asked_again_at_once(
    api: FakeApi, store: EventStore
) -> None:
    missing = new_id()
    first, second = make_event(new_id(), missing), make_event(new_id(), missing)
    api.add(first, second)
    record = enrich_event(first["id"], store, max_depth=100)
    assert record.body["hierarchy"]["incomplete_reason"] == "parent_not_found"
    gets = api.calls["get"]
    record = enrich_event(second["id"], store, max_depth=100)
    assert record.body["hierarchy"]["incomplete_reason"] == "parent_not_found"
    assert api.calls["get"] == gets + 1  # its own GET; the parent's 404 is remembered
