"""The walk, as plain functions: examples and hypothesis properties."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.enrichment import walk_ancestors
from worker.rapidly import Event


def ev(event_id: str, parent: str | None) -> Event:
    return Event.from_api(
        {
            "id": event_id,
            "timestamp": "2026-01-01T00:00:00Z",
            "source": "user",
            "name": "n",
            "label": "L",
            "parent_id": parent,
            "child_count": 0,
        }
    )


def fetcher(graph: dict[str, str | None], calls: list[str] | None = None):
    def fetch(event_id: str) -> Event | None:
        if calls is not None:
            calls.append(event_id)
        if event_id not in graph:
            return None
        return ev(event_id, graph[event_id])

    return fetch


def test_chain_is_root_first() -> None:
    graph = {"a": None, "b": "a", "c": "b", "d": "c"}
    h = walk_ancestors(ev("d", "c"), fetcher(graph))
    assert [a.id for a in h.ancestors] == ["a", "b", "c"]
    assert (h.root_id, h.depth, h.complete, h.incomplete_reason) == ("a", 3, True, None)


def test_root_event_is_its_own_root() -> None:
    h = walk_ancestors(ev("r", None), fetcher({}))
    assert (h.root_id, h.depth, h.complete, h.ancestors) == ("r", 0, True, ())


def test_self_parent_is_a_cycle_with_no_fetch() -> None:
    calls: list[str] = []
    h = walk_ancestors(ev("s", "s"), fetcher({"s": "s"}, calls))
    assert (h.complete, h.incomplete_reason, h.depth, h.root_id) == (False, "cycle", 0, "s")
    assert calls == []


def test_two_cycle() -> None:
    graph = {"a": "b", "b": "a"}
    h = walk_ancestors(ev("a", "b"), fetcher(graph))
    assert [x.id for x in h.ancestors] == ["b"]
    assert h.incomplete_reason == "cycle"


def test_parent_not_found() -> None:
    h = walk_ancestors(ev("c", "b"), fetcher({"b": "missing"}))
    assert [x.id for x in h.ancestors] == ["b"]
    assert (h.complete, h.incomplete_reason, h.root_id) == (False, "parent_not_found", "b")


def test_max_depth_caps_fetches() -> None:
    graph: dict[str, str | None] = {f"e{i}": f"e{i + 1}" for i in range(10_000)}
    graph["e10000"] = None
    calls: list[str] = []
    h = walk_ancestors(ev("e0", "e1"), fetcher(graph, calls), max_depth=100)
    assert h.depth == 100
    assert len(calls) == 100
    assert h.incomplete_reason == "max_depth"
    assert h.root_id == "e100"


def test_exactly_max_depth_ancestors_is_complete() -> None:
    graph: dict[str, str | None] = {"p1": "p2", "p2": None}
    h = walk_ancestors(ev("c", "p1"), fetcher(graph), max_depth=2)
    assert (h.depth, h.complete) == (2, True)


def test_ancestor_entries_copy_six_fields_exactly() -> None:
    raw: dict[str, Any] = {
        "id": "p",
        "timestamp": "2026-01-01T00:00:00.123400Z",
        "source": "system",
        "name": "customer.created",
        "label": "Customer Created",
        "parent_id": None,
        "child_count": 0,
        "extra": 1,
    }
    h = walk_ancestors(ev("c", "p"), lambda _: Event.from_api(raw))
    entry = h.as_record(child_count=0, descendant_count=0)["ancestors"][0]
    assert entry == {k: raw[k] for k in ("id", "name", "source", "label", "timestamp", "parent_id")}


# --- properties over random parent graphs (cycles, dangling parents, long chains)

ids = st.sampled_from([str(uuid.UUID(int=i, version=4)) for i in range(12)])
graphs = st.dictionaries(ids, st.one_of(st.none(), ids), min_size=1)


def reference_chain(
    start: str, graph: dict[str, str | None], max_depth: int
) -> tuple[list[str], str | None]:
    chain: list[str] = []
    seen = {start}
    nxt = graph[start]
    while nxt is not None:
        if nxt in seen:
            return chain, "cycle"
        if len(chain) >= max_depth:
            return chain, "max_depth"
        if nxt not in graph:
            return chain, "parent_not_found"
        chain.append(nxt)
        seen.add(nxt)
        nxt = graph[nxt]
    return chain, None


@settings(max_examples=300, deadline=None)
@given(graph=graphs, data=st.data(), max_depth=st.integers(1, 15))
def test_walk_matches_reference_and_terminates(
    graph: dict[str, str | None], data: st.DataObject, max_depth: int
) -> None:
    start = data.draw(st.sampled_from(sorted(graph)))
    calls: list[str] = []
    h = walk_ancestors(ev(start, graph[start]), fetcher(graph, calls), max_depth=max_depth)
    chain, reason = reference_chain(start, graph, max_depth)
    # root first: the reference walks nearest-first
    assert [a.id for a in h.ancestors] == list(reversed(chain))
    assert h.incomplete_reason == reason
    assert h.complete is (reason is None)
    assert h.depth <= max_depth
    assert len(calls) <= max_depth + 1  # bounded work
    assert len({a.id for a in h.ancestors}) == h.depth  # no id twice
    assert start not in {a.id for a in h.ancestors}
    if h.ancestors:
        assert h.root_id == h.ancestors[0].id
        assert h.ancestors[0].parent_id is None or reason is not None
        for child, parent in zip(h.ancestors[1:], h.ancestors, strict=False):
            assert child.parent_id == parent.id  # each is the previous one's child
    else:
        assert h.root_id == start


@settings(max_examples=150, deadline=None)
@given(graph=graphs, data=st.data())
def test_walk_independent_of_cache_and_fetch_order(
    graph: dict[str, str | None], data: st.DataObject
) -> None:
    """A fetcher that answers some ids from a warm cache (fetched earlier, in any order) gives
    the same hierarchy as a cold one."""
    start = data.draw(st.sampled_from(sorted(graph)))
    warm = data.draw(st.lists(st.sampled_from(sorted(graph)), unique=True))
    cache = {i: ev(i, graph[i]) for i in warm}
    cold = walk_ancestors(ev(start, graph[start]), fetcher(graph))

    def cached_fetch(event_id: str) -> Event | None:
        return cache.get(event_id) or fetcher(graph)(event_id)

    hot = walk_ancestors(ev(start, graph[start]), cached_fetch)
    assert [a.id for a in hot.ancestors] == [a.id for a in cold.ancestors]
    assert (hot.root_id, hot.complete, hot.incomplete_reason) == (
        cold.root_id,
        cold.complete,
        cold.incomplete_reason,
    )
