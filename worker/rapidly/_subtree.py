"""An event's subtree five levels down from one list call, and the counts it tells.

``parent_id=X&depth=5&sorting=timestamp&limit=100`` lists X's descendants one to five levels
down (X excluded), each with its ``child_count`` (all its descendants). When the page holds them
all (``meta.total`` no more than the events on it), it tells the direct count of X and of every
listed node four levels down or less (their children are all on the page), and so replaces the
children listing of each: a chain of 120 costs one list call per four events instead of one
each, and their GETs too (the events come whole with the list).

Only a well-formed tree is read. A page that lists X itself, X's own parent (a cycle through X),
a node twice, or a node whose parents on the page do not lead to X within five levels tells
nothing: the caller lists X's direct children as before. A node whose listed children do not
add up to its own ``child_count`` gets no direct count (its counts are listed when it is
enriched), the same as a child seen in any list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.rapidly._cache import ChildCounts, Entry, listed_entry
from worker.rapidly._client import LIST_PAGE_SIZE
from worker.rapidly._models import Event, EventPage

SUBTREE_DEPTH = 5  # the most the server lists (depth 6 is a 422)


def subtree_params(event_id: str) -> dict[str, Any]:
    """One page of ``event_id``'s descendants, five levels down, oldest first."""
    return {
        "parent_id": event_id,
        "depth": SUBTREE_DEPTH,
        "sorting": "timestamp",
        "limit": LIST_PAGE_SIZE,
        "page": 1,
    }


@dataclass(frozen=True, slots=True)
class Subtree:
    counts: ChildCounts  # the listed event's own
    entries: list[Entry]  # every node on the page, with its direct count where the page tells


def _key(event_id: str | None) -> str:
    return (event_id or "").lower()


def listed_nodes(root: Event, page: EventPage, now: float) -> list[Entry]:
    """The page's events as any list shows them (descendant counts only), the root left out:
    what an unreadable or incomplete page is still good for."""
    root_key = _key(root.id)
    return [listed_entry(e, now) for e in page.events if _key(e.id) != root_key]


def read_subtree(root: Event, page: EventPage, now: float) -> Subtree | None:
    """The counts ``page`` (``subtree_params(root.id)``) tells; None when it does not hold the
    whole subtree or is not a tree under ``root``."""
    events = page.events
    if page.total > len(events):
        return None  # wider than a page: the caller pages the direct children
    root_key = _key(root.id)
    by_id = {_key(e.id): e for e in events}
    if len(by_id) != len(events) or root_key in by_id or _key(root.parent_id) in by_id:
        return None
    levels = _levels(root_key, by_id)
    if levels is None:
        return None
    children: dict[str, list[Event]] = {}
    for event in events:
        children.setdefault(_key(event.parent_id), []).append(event)
    entries: list[Entry] = []
    for event in events:
        below = children.get(_key(event.id), [])
        descendants = sum(1 + c.child_count for c in below)
        if levels[_key(event.id)] < SUBTREE_DEPTH and descendants == event.child_count:
            entries.append(listed_entry(event, now, direct=len(below)))
        else:
            entries.append(listed_entry(event, now))
    top = children.get(root_key, [])
    direct = len(top)
    return Subtree(ChildCounts(direct, max(direct, sum(1 + c.child_count for c in top))), entries)


def _levels(root_key: str, by_id: dict[str, Event]) -> dict[str, int] | None:
    """Each node's level below the root through the parents on the page; None when a node's
    parents do not lead to the root within ``SUBTREE_DEPTH`` levels."""
    levels: dict[str, int] = {}
    for key in by_id:
        path: list[str] = []
        cursor = key
        while cursor not in levels:
            if len(path) >= SUBTREE_DEPTH:
                return None  # too deep, or a loop among listed nodes
            path.append(cursor)
            parent = _key(by_id[cursor].parent_id)
            if parent == root_key:
                base = 0
                break
            if parent not in by_id:
                return None
            cursor = parent
        else:
            base = levels[cursor]
        for offset, node in enumerate(reversed(path), start=1):
            levels[node] = base + offset
        if levels[key] > SUBTREE_DEPTH:
            return None
    return levels
