"""Walking an event's parent chain: plain functions, no I/O of their own, no Celery.

The walk follows ``parent_id`` from the event upwards, fetching each parent through the function
it is given, and stops at the first of (CONTRACT.md section 2):

- ``parent_id`` is null                           -> complete
- the next id is the event itself or in the chain -> ``cycle``
- the chain already holds ``max_depth`` ancestors -> ``max_depth``
- the next parent cannot be fetched (404)         -> ``parent_not_found``

The depth cap exists because the server does not cap chains: without it a hostile or corrupted
chain (10,000 events, or a cycle through events we cannot see) would cost unbounded API calls and
memory for one message. The walk is a loop, never recursion, for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from worker.rapidly import Event

DEFAULT_MAX_DEPTH = 100

IncompleteReason = Literal["parent_not_found", "cycle", "max_depth"]


@dataclass(frozen=True, slots=True)
class Hierarchy:
    ancestors: tuple[Event, ...]  # root first, nearest parent last
    root_id: str
    complete: bool
    incomplete_reason: IncompleteReason | None

    @property
    def depth(self) -> int:
        return len(self.ancestors)

    def as_record(self, *, child_count: int, descendant_count: int) -> dict[str, Any]:
        return {
            "root_id": self.root_id,
            "depth": self.depth,
            "ancestors": [ancestor.ancestor_entry() for ancestor in self.ancestors],
            "complete": self.complete,
            "incomplete_reason": self.incomplete_reason,
            "child_count": child_count,
            "descendant_count": descendant_count,
        }


def walk_ancestors(
    event: Event,
    fetch_parent: Callable[[str], Event | None],
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Hierarchy:
    """Resolve ``event``'s chain; ``fetch_parent`` returns None for a parent that stays 404."""
    chain: list[Event] = []  # nearest parent first while walking
    seen = {event.id}
    reason: IncompleteReason | None = None
    next_id = event.parent_id
    while next_id is not None:
        if next_id in seen:
            reason = "cycle"
            break
        if len(chain) >= max_depth:
            reason = "max_depth"
            break
        parent = fetch_parent(next_id)
        if parent is None:
            reason = "parent_not_found"
            break
        chain.append(parent)
        seen.add(parent.id)
        next_id = parent.parent_id
    chain.reverse()
    return Hierarchy(
        ancestors=tuple(chain),
        root_id=chain[0].id if chain else event.id,
        complete=reason is None,
        incomplete_reason=reason,
    )
