"""An event's own child counts: its children listed, or one call for a wide event's direct count.

Listing the children also caches them whole with their counts, so enriching them later costs no
call.
"""

from __future__ import annotations

import structlog

from worker.errors import NoLongerNeeded
from worker.rapidly._cache import ChildCounts, Entry, EventCache, listed_entry
from worker.rapidly._client import LIST_PAGE_SIZE, RapidlyClient
from worker.rapidly._fleet import FleetFlights
from worker.rapidly._flight import Flights
from worker.rapidly._models import Event
from worker.rapidly._ratelimit import RateLimiter, when_needed
from worker.rapidly._retry import Retry
from worker.rapidly._windows import direct_count_params

log = structlog.get_logger()


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

    def resolve_counts(self, event: Event) -> ChildCounts:
        """The event's own counts when no window answered them: one call for a wide event whose
        descendants a list response told us, else its children listed."""
        cache = self._cache
        known = cache.known_counts(event.id)
        if known is None and self._flights.await_flight(f"family:{event.id}"):
            known = cache.known_counts(event.id)  # a child's listing of the whole family
        if known is not None:
            return known
        descendants = cache.known_descendants(event.id)
        if descendants is not None and descendants > LIST_PAGE_SIZE:
            return self._flights.collapse(
                f"direct:{event.id}",
                lambda: self._fleet.share(
                    f"direct:{event.id}",
                    lambda: self._count_direct(event, descendants),
                    lambda: cache.known_counts(event.id),
                ),
            )
        return self._flights.collapse(
            f"children:{event.id}",
            lambda: self._fleet.share(
                f"children:{event.id}",
                lambda: self.count_children(event),
                lambda: cache.known_counts(event.id),
            ),
        )

    def list_children_of(self, parents: list[Event]) -> None:
        for parent in parents:
            if self._cache.known_counts(parent.id) is not None:
                continue
            try:
                self.resolve_counts(parent)
            except Exception as exc:  # noqa: BLE001 - an optimisation: enrichment lists them anyway
                log.info("cache.read_ahead_failed", error=f"{type(exc).__name__}: {exc}")
                return

    def count_children(self, event: Event) -> ChildCounts:
        cache = self._cache
        page_no, direct, descendants = 1, 0, 0
        seen: set[str] = set()
        entries: list[Entry] = []
        now = cache.clock()
        while True:
            still_needed = (lambda: cache.known_counts(event.id) is None) if page_no == 1 else None
            try:
                page = self._retry(
                    lambda p=page_no, n=still_needed: when_needed(  # type: ignore[misc]
                        self._limiter,
                        n,
                        lambda: self._client.list_children(event.id, page=p),
                        priority=True,
                    )
                )
            except NoLongerNeeded:
                known = cache.known_counts(event.id)  # listed meanwhile (a sibling's listing)
                if known is not None:
                    return known
                continue
            if page_no == 1:
                direct = page.total
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
