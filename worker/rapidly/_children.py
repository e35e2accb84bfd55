"""An event's own child counts: its subtree page (``_subtree``), else its children listed, or one
call for a wide event's direct count.

A listing also caches every event on it whole with its counts, so enriching them later costs no
call; the subtree page gives the counts of four levels of descendants at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog

from worker.errors import NoLongerNeeded
from worker.rapidly._cache import ChildCounts, Entry, EventCache, listed_entry
from worker.rapidly._client import LIST_PAGE_SIZE, RapidlyClient
from worker.rapidly._fleet import FleetFlights
from worker.rapidly._flight import Flights
from worker.rapidly._models import Event, EventPage
from worker.rapidly._ratelimit import RateLimiter, when_needed
from worker.rapidly._retry import Retry
from worker.rapidly._subtree import (
    SUBTREE_DEPTH,
    listed_nodes,
    read_subtree,
    subtree_params,
)
from worker.rapidly._windows import direct_count_params

log = structlog.get_logger()

READ_AHEAD_LISTINGS = 16  # roots' subtrees listed ahead at once, per process


class Counting:
    def __init__(
        self,
        client: RapidlyClient,
        cache: EventCache,
        flights: Flights,
        fleet: FleetFlights,
        retry: Retry,
        *,
        limiter: RateLimiter | None,
    ) -> None:
        self._limiter = limiter
        self._client = client
        self._cache = cache
        self._flights = flights
        self._fleet = fleet
        self._retry = retry
        self._read_ahead_slots = threading.BoundedSemaphore(READ_AHEAD_LISTINGS)

    def resolve_counts(self, event: Event, *, shared: bool = True) -> ChildCounts:
        """The event's own counts when no window answered them: one call for a wide event whose
        descendants a list response told us, else its children listed. ``shared=False``: the
        caller has just looked in the shared copy (``EventCache.known_counts``)."""
        cache = self._cache
        known = cache.known_counts(event.id, shared=shared)
        if known is not None:
            return known
        descendants = cache.known_descendants(event.id)
        if descendants is not None and descendants > LIST_PAGE_SIZE:
            return self._flights.collapse(
                f"direct:{event.id}",
                lambda: self._fleet.share(
                    f"direct:{event.id}",
                    lambda: self._count_direct(event, descendants),
                    lambda: cache.counts_landed(event.id),
                ),
            )
        return self._flights.collapse(
            f"children:{event.id}", lambda: self.count_children(event, shared=True)
        )

    def nearest_ancestors(self, event: Event) -> list[str]:
        """The ids of the event's parents up to four levels up, as far as this process holds
        them (no I/O): a subtree listing of any of them gives the event its counts."""
        found: list[str] = []
        seen = {event.id}
        parent_id = event.parent_id
        while parent_id is not None and parent_id not in seen and len(found) < SUBTREE_DEPTH - 1:
            found.append(parent_id)
            seen.add(parent_id)
            entry = self._cache.peek(parent_id)
            parent_id = None if entry is None else entry.event.parent_id
        return found

    @contextmanager
    def counting(self, event_id: str, ancestors: list[str]) -> Iterator[bool]:
        """While ``event_id`` is counted: first wait for the subtree listings of these
        ancestors in flight here, and for those ancestors being counted or listed in another
        process (``FleetFlights.counting``): any of them may list the event with its counts.
        Yields whether it waited for anything."""
        waited = [self._flights.await_flight(f"subtree:{ancestor}") for ancestor in ancestors]
        with self._fleet.counting(event_id, ancestors) as fleet_waited:
            yield fleet_waited or any(waited)

    def subtree(self, event: Event) -> ChildCounts | None:
        """``event``'s counts from its subtree page (``_subtree``), one listing in flight per
        event across the fleet; None when the page does not hold the subtree whole."""
        return self._flights.collapse(
            f"subtree:{event.id}",
            lambda: self._fleet.share(
                f"subtree:{event.id}",
                lambda: self._list_subtree(event),
                lambda: self._cache.counts_landed(event.id),
            ),
        )

    def list_children_of(self, parents: list[Event]) -> None:
        """The counts of roots a window showed with descendants, listed ahead of their
        enrichment (each needs them, and the listing caches their subtree), a few at once: the
        events of a burst wait for the lists in flight instead of being fetched one by one."""
        failed = threading.Event()

        def list_one(parent: Event) -> None:
            with self._read_ahead_slots:
                if failed.is_set():
                    return
                try:  # answered at once, without a call, when the counts are known by now
                    self.resolve_counts(parent)
                except Exception as exc:  # noqa: BLE001 - an optimisation: enrichment lists them
                    failed.set()
                    log.info("cache.read_ahead_failed", error=f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=list_one, args=(p,), daemon=True) for p in parents]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def count_children(self, event: Event, *, shared: bool = False) -> ChildCounts:
        """``event``'s own counts listed now: its subtree in one call when it fits a page
        (``_subtree``), else its direct children page by page. Everything listed is cached.
        ``shared``: the children listing too is one call in flight across the fleet (the subtree
        listing always is, under its own key: one flight per call, not one inside another)."""
        cache = self._cache
        descendants = cache.known_descendants(event.id)
        wide = cache.known_wide(event.id) or (descendants or 0) > LIST_PAGE_SIZE
        if not wide:
            # Known wider than a page, the subtree page cannot hold it: only the children can.
            counts = self.subtree(event)
            if counts is not None:
                return counts
        if not shared:
            return self._list_direct_children(event)
        return self._fleet.share(
            f"children:{event.id}",
            lambda: self._list_direct_children(event),
            lambda: cache.counts_landed(event.id),
        )

    def _list_subtree(self, event: Event) -> ChildCounts | None:
        cache = self._cache
        page = self._first_page(event, lambda: self._client.list_events(subtree_params(event.id)))
        if isinstance(page, ChildCounts):
            return page
        now = cache.clock()
        subtree = read_subtree(event, page, now)
        if subtree is None:
            if page.total > len(page.events):
                cache.mark_wide(event.id, now)
            cache.remember(listed_nodes(event, page, now))
            return None
        counts = subtree.counts
        own = Entry(event, cache.entry_time(event.id, now), counts.descendants, now, counts.direct)
        cache.remember([*subtree.entries, own])
        return counts

    def _first_page(self, event: Event, call: Callable[[], EventPage]) -> EventPage | ChildCounts:
        """The first page of a listing of ``event``'s family, or its counts when another
        listing told them while this one waited for its slot."""
        cache = self._cache

        def still_needed() -> bool:
            # Asked when the slot comes due. Under a binding budget calls are not shared through
            # fleet flights, so another process's answer may be in the shared copy by then;
            # otherwise the fleet flight around this listing kept the others from making it, and
            # only a greenlet of this process can have answered meanwhile: no Redis read.
            shared = bool(getattr(self._limiter, "throttled", False))
            return cache.known_counts(event.id, shared=shared) is None

        while True:
            try:
                return self._retry(
                    lambda: when_needed(self._limiter, still_needed, call, priority=True)
                )
            except NoLongerNeeded:
                known = cache.known_counts(event.id)  # listed meanwhile (a sibling's listing)
                if known is not None:
                    return known

    def _list_direct_children(self, event: Event) -> ChildCounts:
        cache = self._cache
        page_no, direct, descendants = 1, 0, 0
        seen: set[str] = set()
        entries: list[Entry] = []
        now = cache.clock()
        while True:
            if page_no == 1:
                first = self._first_page(event, lambda: self._client.list_children(event.id))
                if isinstance(first, ChildCounts):
                    return first
                page = first
                direct = page.total
            else:
                page = self._retry(lambda p=page_no: self._client.list_children(event.id, page=p))  # type: ignore[misc]
            for child in page.events:
                if child.id in seen or child.id == event.id:
                    continue  # equal timestamps may repeat across pages
                seen.add(child.id)
                descendants += 1 + child.child_count
                entries.append(listed_entry(child, now))
            if not page.events or page_no >= page.pages:
                break
            page_no += 1
        direct = max(direct, len(seen))
        descendants = max(descendants, direct)
        entries.append(Entry(event, cache.entry_time(event.id, now), descendants, now, direct))
        cache.remember(entries)
        return ChildCounts(direct, descendants)

    def _count_direct(self, event: Event, descendants: int) -> ChildCounts:
        """A wide event's direct count: ``meta.total`` of a one-item page of its children, one
        call instead of every page (its descendants came with a list response already)."""
        page = self._retry(
            lambda: self._client.list_events(direct_count_params(event.id)),
        )
        direct = page.total
        now = self._cache.clock()
        # Counts are eventually consistent: a total read later may exceed the older sum.
        counts = ChildCounts(direct, max(descendants, direct))
        self._cache.remember(
            [Entry(event, self._cache.entry_time(event.id, now), counts.descendants, now, direct)]
        )
        return counts
