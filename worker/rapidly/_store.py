"""The event store: every read the enrichment needs, cached, collapsed and retried.

A façade over its parts: the two cache levels (``_cache``: a bounded in-process LRU, then Redis
when ``REDIS_URL`` is set, shared by the fleet, then the API), single-flight (``_flight``:
concurrent reads of one key collapse into one call), calls in flight shared by the fleet
(``_fleet``), the windows that answer for many events with one list call (``_windows``), the
children listings (``_children``) and the retries (``_retry``). List responses carry full events
with their descendant counts; the children they return are cached too, so enriching them later
costs no call.

Retries live here, not in the client (``_retry``): 429s, 5xx/timeouts/garbage and 404s
(replica lag) each have their own bounded wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from worker._gevent import wait_for
from worker.errors import (
    ApiUnavailable,
    CustomerEventNotFound,
    EventNotFound,
    EventNotYetVisible,
    NoLongerNeeded,
)
from worker.rapidly._cache import ChildCounts, Entry, EventCache
from worker.rapidly._children import Counting
from worker.rapidly._client import LIST_PAGE_SIZE, RapidlyClient, is_event_id
from worker.rapidly._fleet import FLIGHT_SECONDS, FleetFlights
from worker.rapidly._flight import Flights
from worker.rapidly._models import Event, EventPage
from worker.rapidly._ratelimit import RateLimiter, when_needed
from worker.rapidly._retry import RetryPolicy, retrying
from worker.rapidly._windows import Windows

T = TypeVar("T")

# The longest an uncached event waits for the events taken up before it to be counted
# (``Flights.enter``). A chain comes in through its subtree pages, four levels per list call, so a
# burst needs several round trips of the API and of the machine's own queueing; the waits end the
# moment those events are counted (docs/shared-calls.md has the measured effect).
ENTRY_GATE_SECONDS = 1.0
ENTRY_WAIT_SECONDS = 2.0  # all rounds together
PREDECESSOR_WAIT_SECONDS = 1.0  # for the event that arrived just before

__all__ = ["ChildCounts", "EventStore", "RetryPolicy"]


class EventStore:
    def __init__(
        self,
        client: RapidlyClient,
        *,
        policy: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        max_events: int = 50_000,
        event_max_age: float = 300.0,
        counts_max_age: float = 60.0,
        redis: Any = None,
        redis_namespace: str = "",
        redis_ttl: int = 86_400,
        clock: Callable[[], float] = time.time,
        root_window: int = 100,
        sibling_window: int = LIST_PAGE_SIZE,  # children per window, 1..100
    ) -> None:
        self._client = client
        self._policy = policy or RetryPolicy()
        self._limiter = limiter
        self._cache = EventCache(
            max_events=max_events,
            event_max_age=event_max_age,
            counts_max_age=counts_max_age,
            redis=redis,
            redis_namespace=redis_namespace,
            redis_ttl=redis_ttl,
            clock=clock,
        )
        self._prefix = self._cache.prefix
        self._fleet = FleetFlights(self._cache, limiter, self._policy.sleep, redis_namespace)
        self._flights = Flights(around_lists=self._fleet.listing)
        self._counting = Counting(
            client, self._cache, self._flights, self._fleet, self._retrying, limiter=limiter
        )
        self._windows = Windows(
            client,
            self._cache,
            self._flights,
            self._fleet,
            self._retrying,
            list_children_of=self._counting.list_children_of,
            subtree_of=self._counting.subtree,
            root_window=root_window,
            sibling_window=sibling_window,
        )

    @property
    def redis(self) -> Any:
        return self._cache.redis

    def shared_key(self, event_id: str) -> str | None:
        """The Redis key of ``event_id``'s shared copy when the next ``event(event_id)`` would
        read it (not in this process's LRU, Redis not cooling down); None otherwise. Lets the
        caller fetch it in a round trip it makes anyway (``accept_shared``)."""
        return self._cache.shared_key(event_id)

    def accept_shared(self, raw: bytes | str | None, event_id: str) -> None:
        """The value read at ``shared_key(event_id)``: cached here as ``event`` would have
        cached it; a miss is not read again at once."""
        self._cache.accept_shared(raw, event_id)

    def cached_count(self) -> int:
        return self._cache.cached_count()

    # --- what the enrichment asks for

    def event(self, event_id: str) -> Event:
        """The event being enriched; EventNotFound once it stays 404 past the replica-lag wait."""
        before = self._flights.arrive(event_id)
        entry = self._cache.lookup(event_id)
        if entry is None:
            entry = self._wait_to_be_brought(event_id, before)
        self._flights.taken_up(event_id, brought=entry is not None)
        if entry is None and self._flights.await_lists():
            entry = self._cache.lookup(event_id)  # a window that was in flight may have brought it
        if entry is None and self._fleet.await_lists():
            entry = self._cache.lookup(event_id)  # so may another process's
        if entry is not None and self._cache.is_fresh(entry):
            self._windows.maybe_read_ahead(entry)
            return entry.event
        try:
            # Shared like a parent's GET: another process may be walking up through this event.
            return self._flights.collapse(
                f"get:{event_id}",
                lambda: self._fleet.share(
                    f"get:{event_id}",
                    lambda: self._fetch(event_id, self._policy.not_found_wait_seconds),
                    lambda: self._cache.fresh_event(event_id),
                ),
            )
        except BaseException:
            self.leave(event_id)
            raise

    def _wait_to_be_brought(self, event_id: str, before: threading.Event | None) -> Entry | None:
        """Before fetching an event in no cache: wait for the events this process took up
        before it, for the one that arrived just before it (``Flights.arrive``), then, while
        those taken up since were found in the cache (a chain coming in with listings), for
        them too, ``ENTRY_WAIT_SECONDS`` at most (``Flights.enter``).

        In this process only: a fleet-wide version (a Redis set of the events being enriched,
        polled) saved a few calls on the hostile dataset but cost about a tenth of the worker's
        CPU, and every uncached event would have read the whole fleet's set."""
        gate = ENTRY_GATE_SECONDS
        started = time.monotonic()
        if not self._flights.enter(event_id, gate):
            return None
        entry = self._cache.lookup(event_id)  # the events before it brought it
        if entry is None and before is not None:
            remaining = started + PREDECESSOR_WAIT_SECONDS - time.monotonic()
            if remaining > 0:
                wait_for(before, remaining)
                entry = self._cache.lookup(event_id)
        since = started
        while entry is None and time.monotonic() - started < ENTRY_WAIT_SECONDS:
            round_at = time.monotonic()
            if not self._flights.enter(event_id, gate, brought_since=since):
                break
            since = round_at
            entry = self._cache.lookup(event_id)
        return entry

    def system_event(self, name: str, customer_id: str) -> Event:
        """The customer's newest system event named ``name``, found with one list call and
        cached with its descendant count, so that enriching it costs no GET (and, for a leaf,
        no children listing). None listed yet is retried like a 404 for the same bounded wait
        (the webhook and the event come from independent jobs upstream); then
        CustomerEventNotFound."""

        def find() -> Event:
            page = self._client.newest_system_event(name, customer_id)
            if not page.events:
                raise EventNotYetVisible(f"system {name} of customer {customer_id}")
            found = page.events[0]
            if (found.source, found.name, found.customer_id) != ("system", name, customer_id):
                # Not what was asked: never becomes a record (retried, then exhausted_retries).
                raise ApiUnavailable(f"list system {name}: answered another event")
            return found

        try:
            found = self._flights.collapse(
                f"system:{name}:{customer_id}",
                lambda: self._retrying(
                    find, not_found_wait=self._policy.not_found_wait_seconds, event_id=customer_id
                ),
            )
        except EventNotFound as exc:
            raise CustomerEventNotFound(
                name, customer_id, waited=exc.waited, attempts=exc.attempts
            ) from None
        now = self._cache.clock()
        event = Event.from_api(found.as_get())
        self._cache.remember([Entry(event, now, found.child_count, now)])
        return event

    def parent(self, event_id: str) -> Event | None:
        """An ancestor (any cached copy will do); None when it stays 404 (not visible to us) or
        its id is not a UUID v4 (``""``, garbage, the nil UUID: no such event can exist, and
        the chain is published incomplete rather than the event dead-lettered)."""
        if not is_event_id(event_id):
            return None
        entry = self._cache.lookup(event_id)
        if entry is not None:
            return entry.event
        if self._cache.known_missing(event_id):
            return None  # stayed 404 for another child's walk a moment ago

        def cached() -> Event | None:
            entry = self._cache.lookup(event_id)
            if entry is None and self._cache.known_missing(event_id):
                raise EventNotFound(event_id, waited=0.0, attempts=0)
            return None if entry is None else entry.event

        wait = self._policy.parent_not_found_wait_seconds

        def fetch() -> Event:
            try:
                return self._fetch(event_id, wait)
            except EventNotFound:
                # Before the flight lands: the processes waiting for it read this and ask
                # nothing, instead of finding neither the parent nor the verdict.
                self._cache.remember_missing(event_id, wait)
                raise

        try:
            # Siblings in other processes walk up to the same parent at the same moment. The
            # others wait as long as the 404 retries may take, not only a round trip.
            return self._flights.collapse(
                f"get:{event_id}",
                lambda: self._fleet.share(
                    f"get:{event_id}", fetch, cached, seconds=wait + FLIGHT_SECONDS
                ),
            )
        except EventNotFound:
            return None

    def child_counts(self, event: Event) -> ChildCounts:
        try:
            return self._child_counts(event)
        finally:
            self.leave(event.id)

    def leave(self, event_id: str) -> None:
        """``event_id`` (taken up by ``event``) is counted or failed: the events waiting for it
        to bring them (``_wait_to_be_brought``) go now."""
        self._flights.leave(event_id)

    def _child_counts(self, event: Event) -> ChildCounts:
        known = self._cache.known_counts(event.id)
        if known is not None:
            return known
        ancestors = self._counting.nearest_ancestors(event)
        with self._flights.counting(event.id, ancestors):
            # The shared copy was read just above; a greenlet of this process that counted the
            # event meanwhile left its counts in this process's copy.
            known = self._cache.known_counts(event.id, shared=False)
            if known is not None:
                return known
            with self._counting.counting(event.id, ancestors) as waited:
                if waited:
                    known = self._cache.counts_landed(event.id)  # an ancestor's listing told
                return known if known is not None else self._count(event)

    def _count(self, event: Event) -> ChildCounts:
        if self._cache.known_descendants(event.id) is not None:
            # A window showed it with descendants already (here or in another process): another
            # window cannot tell more, only its children listing can.
            return self._counting.resolve_counts(event, shared=False)
        if event.parent_id is None:
            if self._windows.root_window > 0 and self._windows.from_root_window(event):
                return ChildCounts(0, 0)
        elif event.parent_id != event.id and self._windows.from_siblings(event):
            return ChildCounts(0, 0)
        return self._counting.resolve_counts(event, shared=False)

    # --- for producers that page the list endpoint themselves (``rapidly-worker backfill``)

    def list_page(self, params: dict[str, Any]) -> EventPage:
        """One list call with the store's retries (429s, 5xx, timeouts); nothing is cached."""
        return self._retrying(lambda: self._client.list_events(params))

    def prime(self, listed: Sequence[tuple[Event, int, int | None]]) -> None:
        """Cache events as a list response showed them, for whichever worker enriches them:
        ``(event, descendants, direct)`` with ``descendants`` the list's ``child_count`` and
        ``direct`` the direct children when known (None: the worker lists them). Stamped now,
        so they count as fresh for ``event_max_age`` and ``counts_max_age``."""
        now = self._cache.clock()
        self._cache.remember(
            [
                Entry(Event.from_api(event.as_get()), now, descendants, now, direct)
                for event, descendants, direct in listed
            ]
        )

    def count_children(self, event: Event) -> ChildCounts:
        """List ``event``'s direct children now (cached with their counts, the event's too)."""
        return self._flights.collapse(
            f"children:{event.id}", lambda: self._counting.count_children(event)
        )

    # --- fetching

    def _fetch(self, event_id: str, not_found_wait: float) -> Event:
        while True:
            try:
                # Asked again when the budget lets the GET go: a list call may have brought the
                # event while it waited (DispatchingLimiter), and then no call is made.
                event = self._retrying(
                    lambda: when_needed(
                        self._limiter,
                        lambda: self._cache.fresh_event(event_id) is None,
                        lambda: self._client.get_event(event_id),
                    ),
                    not_found_wait=not_found_wait,
                    event_id=event_id,
                )
            except NoLongerNeeded:
                cached = self._cache.fresh_event(event_id)
                if cached is not None:
                    return cached
                continue  # evicted in between: the next ask says it is needed
            self._cache.remember([Entry(event, self._cache.clock())])
            return event

    def _retrying(
        self,
        call: Callable[[], T],
        *,
        not_found_wait: float | None = None,
        event_id: str | None = None,
    ) -> T:
        return retrying(
            self._policy, self._limiter, call, not_found_wait=not_found_wait, event_id=event_id
        )
