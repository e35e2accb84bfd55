"""Windows: list calls that answer for many events at once, and their query parameters.

Producers send IDs roughly in time order, so one list call in time order from an event on (root
events, or one parent's children) answers for the events after it as well. A parent with more
children than one page is never paged through for a child's sake (docs/fanout.md).

Start and end timestamps are exclusive to the microsecond, so a window that must include the
event at ``at`` starts one microsecond before it; the offset is sent as ``Z`` (a raw ``+00:00``
decodes to a space in a URL and the server answers 422).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from worker.errors import ApiUnavailable, TransientError
from worker.rapidly._cache import ChildCounts, Entry, EventCache, Window, listed_entry
from worker.rapidly._client import RapidlyClient
from worker.rapidly._fleet import FleetFlights
from worker.rapidly._flight import Flights
from worker.rapidly._models import Event
from worker.rapidly._retry import Retry

log = structlog.get_logger()


def exclusive_start(at: datetime) -> str:
    return (at - timedelta(microseconds=1)).isoformat().replace("+00:00", "Z")


def sibling_window_params(parent_id: str, at: datetime, size: int) -> dict[str, Any]:
    """``parent_id``'s direct children from ``at`` on, oldest first (``depth=1``: without a
    depth the server ignores ``parent_id``)."""
    return {
        "parent_id": parent_id,
        "depth": 1,
        "sorting": "timestamp",
        "start_timestamp": exclusive_start(at),
        "limit": size,
        "page": 1,
    }


def direct_count_params(event_id: str) -> dict[str, Any]:
    """A one-item page of ``event_id``'s children: its ``meta.total`` is the direct count."""
    return {"parent_id": event_id, "depth": 1, "limit": 1, "page": 1}


def children_of(parent_id: str, events: list[Event]) -> list[Event]:
    """The listed children of ``parent_id``, each once (a list without a tie-breaker may repeat
    an event). A listed child of another parent means the answer is not what was asked: an
    invalid response (retried), never a count."""
    unique: dict[str, Event] = {}
    wanted = parent_id.lower()
    for event in events:
        if (event.parent_id or "").lower() != wanted:
            raise ApiUnavailable(f"list children of {parent_id}: a child of another parent")
        if event.id != parent_id:
            unique.setdefault(event.id, event)
    return list(unique.values())


def parse_timestamp(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


class Windows:
    """Root windows, sibling windows and family pages, and the read-ahead that extends them.

    ``list_children_of`` lists the children of roots a window showed with descendants (in the
    background: each needs its direct count when it is enriched)."""

    def __init__(
        self,
        client: RapidlyClient,
        cache: EventCache,
        flights: Flights,
        fleet: FleetFlights,
        retry: Retry,
        *,
        list_children_of: Callable[[list[Event]], None],
        subtree_of: Callable[[Event], ChildCounts | None],
        root_window: int,
        sibling_window: int,
    ) -> None:
        self._client = client
        self._cache = cache
        self._flights = flights
        self._fleet = fleet
        self._retry = retry
        self._list_children_of = list_children_of
        self._subtree_of = subtree_of
        self.root_window = root_window
        self._sibling_window = sibling_window
        self._lock = threading.Lock()
        self._roots_waiting: dict[str, datetime] = {}  # roots waiting for a window: timestamps

    def maybe_read_ahead(self, entry: Entry) -> None:
        """Once the stream has reached the second half of a full window, fetch the next one in
        the background, so that the events after it are cached before their messages arrive.
        Only a window that is being consumed is extended: a replay of old IDs fetches none."""
        window = entry.window
        if window is None or not window.full or entry.position < window.size // 2:
            return
        with self._lock:
            if window.read_ahead:
                return
            window.read_ahead = True
        threading.Thread(target=self._read_ahead, args=(window,), daemon=True).start()

    def _read_ahead(self, window: Window) -> None:
        at = window.last_at
        try:
            if window.parent_id is None:
                self._flights.collapse(f"window:{at.isoformat()}", lambda: self._root_window_at(at))
            else:
                self._sibling_window_at(window.parent_id, at)
        except Exception as exc:  # noqa: BLE001 - an optimisation: the events will be fetched anyway
            log.info("cache.read_ahead_failed", error=f"{type(exc).__name__}: {exc}")

    # --- sibling windows: one list call answers for the next ``sibling_window`` children

    def from_siblings(self, event: Event) -> bool:
        """True if a listing of the parent's children shows ``event`` without descendants.

        Most children have none; one list call of the parent's children, oldest first, tells,
        and caches the siblings whole with their counts. When that page holds the whole family
        it gives the parent its own counts too; a wider family is never paged through: the
        page is the first window over it, and a child beyond it gets a window from itself on.
        A child missing from every listing (user events reach ``depth`` lists seconds late) is
        not taken as absent: its own children are listed instead.
        """
        cache = self._cache
        parent = cache.lookup(str(event.parent_id))
        if parent is None:
            return False  # not visible to us (parent_not_found): nothing to list
        parent_id = parent.event.id
        # A listing in flight (the parent's own, a sibling's window, a read-ahead) may well
        # hold this event.
        if self._flights.await_lists() and cache.known_descendants(event.id) is not None:
            return cache.known_leaf(event.id)
        family = cache.known_descendants(parent_id)
        small = family is not None and family <= self._sibling_window
        if small and cache.known_counts(parent_id) is not None:
            return False  # listed already: had this event been in it, its count would be known
        wide = (family is not None and not small) or cache.known_wide(parent_id)

        try:
            if not wide and self._subtree_of(parent.event) is not None:
                # The whole subtree (listed here or by another process): no window can say more.
                return cache.counts_landed(event.id) == ChildCounts(0, 0)
            if cache.known_descendants(event.id) is None:
                self._sibling_window_at(parent_id, parse_timestamp(event.timestamp))
        except (TransientError, ValueError):
            return False  # the children listing will retry with its own budget
        return cache.known_leaf(event.id)

    def _sibling_window_at(self, parent_id: str, at: datetime) -> None:
        self._flights.collapse(
            f"siblings:{parent_id}:{at.isoformat()}",
            lambda: self._fetch_sibling_window(parent_id, at),
        )

    def _fetch_sibling_window(self, parent_id: str, at: datetime) -> None:
        """``parent_id``'s children from ``at`` on, in time order, each with its descendant
        count; cached like a root window's events, read ahead the same way."""
        params = sibling_window_params(parent_id, at, self._sibling_window)
        page = self._retry(lambda: self._client.list_events(params))
        now = self._cache.clock()
        children = children_of(parent_id, page.events)
        if not children:
            return
        window = Window(
            last_at=parse_timestamp(children[-1].timestamp),
            full=len(page.events) >= self._sibling_window,
            size=len(children),
            parent_id=parent_id,
        )
        self._cache.remember(
            [listed_entry(e, now, window=window, position=i) for i, e in enumerate(children)]
        )

    # --- root windows: one list call answers for the next ``root_window`` root events

    def from_root_window(self, event: Event) -> bool:
        """True if a window of root events (fetched now, or in flight already) shows ``event``
        without descendants.

        Producers send IDs of new events, mostly roots (``customer.created``), roughly in time
        order. ``GET /api/events/?depth=0&sorting=timestamp&start_timestamp=T-1us&limit=100``
        returns the root at T and the 99 roots after it, complete, with their descendant counts:
        the following events then cost no call at all. A window never costs more than the
        per-event children listing it replaces.
        """
        try:
            at = parse_timestamp(event.timestamp)
        except ValueError:
            return False
        with self._lock:
            self._roots_waiting[event.id] = at
        try:
            # A window in flight may well hold this event: one call in flight at a time serves
            # the whole burst of events a full prefetch brings, instead of one window each.
            if self._flights.await_lists():
                entry = self._cache.lookup(event.id)
                if entry is not None and entry.descendants is not None:
                    return self._cache.known_leaf(event.id)  # known now: no window needed
            # From the earliest root waiting for one: the roots of a burst are counted in no
            # particular order, and a window from the latest would hold none of the others.
            with self._lock:
                start = min(self._roots_waiting.values())
            self._flights.collapse(
                f"window:{start.isoformat()}", lambda: self._root_window_at(start)
            )
            entry = self._cache.lookup(event.id)
            if start < at and (entry is None or entry.descendants is None):
                self._flights.collapse(f"window:{at.isoformat()}", lambda: self._root_window_at(at))
        except TransientError:
            return False  # the children listing will retry with its own budget
        finally:
            with self._lock:
                self._roots_waiting.pop(event.id, None)
        return self._cache.known_leaf(event.id)

    def _root_window_at(self, at: datetime) -> bool:
        self._fetch_root_window(at)
        return True

    def _fetch_root_window(self, at: datetime) -> None:
        params = {
            "depth": 0,
            "sorting": "timestamp",
            "start_timestamp": exclusive_start(at),
            "limit": self.root_window,
            "page": 1,
        }
        page = self._retry(lambda: self._client.list_events(params))
        now = self._cache.clock()
        roots = [e for e in page.events if e.parent_id is None]
        if not roots:
            return
        window = Window(
            last_at=parse_timestamp(roots[-1].timestamp),
            full=len(page.events) >= self.root_window,
            size=len(roots),
        )
        self._cache.remember(
            [listed_entry(e, now, window=window, position=i) for i, e in enumerate(roots)]
        )
        parents = [self._cache.lru_event(e.id) for e in roots if e.child_count > 0]
        if parents:
            # Each of these roots needs its children listed when it is enriched (its direct
            # count); listing them now also caches the children before their messages arrive.
            threading.Thread(target=self._list_children_of, args=(parents,), daemon=True).start()
