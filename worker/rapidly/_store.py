"""The event store: every read the enrichment needs, cached, collapsed and retried.

Events are immutable, so a fetched event can be reused: from a bounded in-process LRU, then from
Redis when ``REDIS_URL`` is set (shared by the fleet), then from the API. Concurrent reads of one
key collapse into one call. List responses carry full events with their descendant counts; the
children they return are cached too, so enriching them later costs no call.

Windows: producers send IDs roughly in time order, so one list call in time order from an event
on (root events, or one parent's children) answers for the events after it as well. A parent with
more children than one page is never paged through for a child's sake (docs/fanout.md).

Freshness (the README repeats this): an ancestor's six fields never change, so any cached copy is
used. The enriched event itself is used from cache only if fetched within ``event_max_age`` (its
``customer`` is the live customer). Child counts are reused for ``counts_max_age``; the server's
counts are eventually consistent anyway.

Retries live here, not in the client: 429 waits its Retry-After (and pushes the whole fleet's
limiter back) without counting as an attempt; 5xx/timeouts/garbage back off exponentially with
full jitter within an attempt and time budget; 404 is retried for a bounded wait (replica lag).
"""

from __future__ import annotations

import contextvars
import json
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog

from worker.errors import (
    ApiUnavailable,
    CustomerEventNotFound,
    EventDeadlineExceeded,
    EventNotFound,
    EventNotYetVisible,
    NoLongerNeeded,
    RateLimited,
    RateLimitWaitTooLong,
    RetriesExhausted,
    TransientError,
)
from worker.rapidly._client import LIST_PAGE_SIZE, RapidlyClient, is_event_id
from worker.rapidly._models import Event, EventPage
from worker.rapidly._ratelimit import RateLimiter
from worker.rapidly._windows import direct_count_params, family_params, sibling_window_params

log = structlog.get_logger()

T = TypeVar("T")

# API calls made on behalf of the unit of work running in this context (the summary line's
# ``api_calls``); the service resets it per event.
api_calls: contextvars.ContextVar[int] = contextvars.ContextVar("api_calls", default=0)

# When the unit of work running in this context must be over (time.monotonic()); None: no bound.
# A retry, backoff or replica-lag wait that would end past it is not started
# (EventDeadlineExceeded): the message goes back to the queue instead of overstaying.
event_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "event_deadline", default=None
)

# After a Redis error, the cache is bypassed for this long instead of paying a timeout per read.
REDIS_COOLDOWN_SECONDS = 5.0

# Calls in flight are shared by the fleet through Redis (``_fleet``): a process that finds a list
# call or a parent's GET in flight elsewhere waits this long at most for its answer to land in
# the cache (one call takes a round trip; a holder that died only costs this wait), polling at
# growing intervals, then makes the call itself.
FLIGHT_SECONDS = 2.0
FLIGHT_POLL_FIRST_SECONDS = 0.005
FLIGHT_POLL_MAX_SECONDS = 0.05
_LAND_OWN = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


def _check_deadline(delay: float, what: str) -> None:
    deadline = event_deadline.get()
    if deadline is not None and time.monotonic() + delay > deadline:
        raise EventDeadlineExceeded(what)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    budget_seconds: float = 45.0
    not_found_wait_seconds: float = 30.0
    parent_not_found_wait_seconds: float = 5.0
    rate_limit_wait_seconds: float = 60.0
    base_delay: float = 0.2
    max_delay: float = 8.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def backoff(self, attempt: int) -> float:
        # Full jitter: spreads a fleet's retries instead of synchronising them.
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))  # noqa: S311


@dataclass(frozen=True, slots=True)
class ChildCounts:
    direct: int
    descendants: int


@dataclass(slots=True)
class _Entry:
    event: Event  # the GET view (child_count 0)
    fetched_at: float
    descendants: int | None = None  # from a list response: all descendants
    counted_at: float = 0.0
    direct: int | None = None  # from listing this event's own children
    window: _Window | None = None  # the root window that brought it (this process only)
    position: int = 0  # its place in that window

    def merged_with(self, old: _Entry | None) -> _Entry:
        """Keep what an older entry knew and this one does not (a GET carries no counts)."""
        if old is None:
            return self
        if self.descendants is None and old.descendants is not None:
            self.descendants, self.counted_at, self.direct = (
                old.descendants,
                old.counted_at,
                old.direct,
            )
        elif self.direct is None and old.direct is not None and old.descendants == self.descendants:
            self.direct = old.direct
        return self

    def to_json(self) -> str:
        return json.dumps(
            {
                "e": self.event.as_get(),
                "f": self.fetched_at,
                "d": self.descendants,
                "c": self.counted_at,
                "n": self.direct,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> _Entry:
        data = json.loads(text)
        return cls(Event.from_api(data["e"]), data["f"], data["d"], data["c"], data.get("n"))


@dataclass(slots=True)
class _Window:
    last_at: datetime
    full: bool
    size: int
    read_ahead: bool = False
    parent_id: str | None = None  # a window over this parent's children; None: root events


class _Flight:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


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
        self._max_events = max_events
        self._event_max_age = event_max_age
        self._counts_max_age = counts_max_age
        self._redis = redis
        self._prefix = f"rapidly:{redis_namespace}:evt:"
        self._flight_prefix = f"rapidly:{redis_namespace}:flight:"
        self._land_own: Any = None
        self._redis_ttl = redis_ttl
        self._redis_down_until = 0.0
        self._clock = clock
        self._lru: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._root_window = root_window
        self._sibling_window = sibling_window
        # Parents seen with more children than one page (id -> when): their children are read
        # in windows, their family's first page is not asked again. Bounded like the LRU.
        self._wide: OrderedDict[str, float] = OrderedDict()

    @property
    def redis(self) -> Any:
        return self._redis

    def shared_key(self, event_id: str) -> str | None:
        """The Redis key of ``event_id``'s shared copy when the next ``event(event_id)`` would
        read it (not in this process's LRU, Redis not cooling down); None otherwise. Lets the
        caller fetch it in a round trip it makes anyway (``accept_shared``)."""
        if self._redis is None or self._clock() < self._redis_down_until:
            return None
        with self._lock:
            if event_id in self._lru:
                return None
        return self._prefix + event_id

    def accept_shared(self, raw: bytes | str | None) -> None:
        """The value read at ``shared_key``: cached here as ``event`` would have cached it."""
        if raw is None:
            return
        try:
            entry = _Entry.from_json(raw)
        except (ValueError, KeyError, TypeError):
            return
        self._remember([entry], shared=False)

    # --- what the enrichment asks for

    def event(self, event_id: str) -> Event:
        """The event being enriched; EventNotFound once it stays 404 past the replica-lag wait."""
        entry = self._lookup(event_id)
        if entry is None and self._await_lists():
            entry = self._lookup(event_id)  # a window that was in flight may have brought it
        if entry is not None and self._is_fresh(entry):
            self._maybe_read_ahead(entry)
            return entry.event
        return self._collapse(
            f"get:{event_id}", lambda: self._fetch(event_id, self._policy.not_found_wait_seconds)
        )

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
            found = self._collapse(
                f"system:{name}:{customer_id}",
                lambda: self._retrying(
                    find, not_found_wait=self._policy.not_found_wait_seconds, event_id=customer_id
                ),
            )
        except EventNotFound as exc:
            raise CustomerEventNotFound(
                name, customer_id, waited=exc.waited, attempts=exc.attempts
            ) from None
        now = self._clock()
        event = Event.from_api(found.as_get())
        self._remember([_Entry(event, now, found.child_count, now)])
        return event

    def _maybe_read_ahead(self, entry: _Entry) -> None:
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

    def _read_ahead(self, window: _Window) -> None:
        at = window.last_at
        try:
            if window.parent_id is None:
                self._collapse(f"window:{at.isoformat()}", lambda: self._root_window_at(at))
            else:
                self._sibling_window_at(window.parent_id, at)
        except Exception as exc:  # noqa: BLE001 - an optimisation: the events will be fetched anyway
            log.info("cache.read_ahead_failed", error=f"{type(exc).__name__}: {exc}")

    def parent(self, event_id: str) -> Event | None:
        """An ancestor (any cached copy will do); None when it stays 404 (not visible to us) or
        its id is not a UUID v4 (``""``, garbage, the nil UUID: no such event can exist, and
        the chain is published incomplete rather than the event dead-lettered)."""
        if not is_event_id(event_id):
            return None
        entry = self._lookup(event_id)
        if entry is not None:
            return entry.event

        def cached() -> Event | None:
            entry = self._lookup(event_id)
            return None if entry is None else entry.event

        try:
            # Siblings in other processes walk up to the same parent at the same moment.
            return self._collapse(
                f"get:{event_id}",
                lambda: self._fleet(
                    f"get:{event_id}",
                    lambda: self._fetch(event_id, self._policy.parent_not_found_wait_seconds),
                    cached,
                ),
            )
        except EventNotFound:
            return None

    def child_counts(self, event: Event) -> ChildCounts:
        known = self._known_counts(event.id)
        if known is not None:
            return known
        if self._known_descendants(event.id) is not None:
            # A window showed it with descendants already (here or in another process): another
            # window cannot tell more, only its children listing can.
            return self._resolve_counts(event)
        if event.parent_id is None:
            if self._root_window > 0 and self._from_root_window(event):
                return ChildCounts(0, 0)
        elif event.parent_id != event.id and self._from_siblings(event):
            return ChildCounts(0, 0)
        return self._resolve_counts(event)

    def _resolve_counts(self, event: Event) -> ChildCounts:
        """The event's own counts when no window answered them: one call for a wide event whose
        descendants a list response told us, else its children listed."""
        known = self._known_counts(event.id)
        if known is None and self._await_flight(f"family:{event.id}"):
            known = self._known_counts(event.id)  # a child's listing of the whole family
        if known is not None:
            return known
        descendants = self._known_descendants(event.id)
        if descendants is not None and descendants > LIST_PAGE_SIZE:
            return self._collapse(
                f"direct:{event.id}",
                lambda: self._fleet(
                    f"direct:{event.id}",
                    lambda: self._count_direct(event, descendants),
                    lambda: self._known_counts(event.id),
                ),
            )
        return self._collapse(
            f"children:{event.id}",
            lambda: self._fleet(
                f"children:{event.id}",
                lambda: self._count_children(event),
                lambda: self._known_counts(event.id),
            ),
        )

    def _known_descendants(self, event_id: str) -> int | None:
        entry = self._lookup(event_id)
        if entry is None or self._clock() - entry.counted_at > self._counts_max_age:
            return None
        return entry.descendants

    def _known_counts(self, event_id: str) -> ChildCounts | None:
        entry = self._lookup(event_id)
        if (
            entry is None
            or entry.descendants is None
            or self._clock() - entry.counted_at > self._counts_max_age
        ):
            return None
        if entry.descendants == 0:
            # No descendants at all means no direct children either: no call needed.
            return ChildCounts(0, 0)
        if entry.direct is not None:
            return ChildCounts(entry.direct, entry.descendants)
        shared = self._shared_counts(event_id)
        if shared is not None:
            return ChildCounts(shared.direct, shared.descendants)  # type: ignore[arg-type]
        return None

    def _shared_counts(self, event_id: str) -> _Entry | None:
        """The shared copy, when it has the direct count this process lacks: another process
        (``rapidly-worker backfill``, which caches an event first and its direct count once it
        has seen the children) may have completed it since this process cached it."""
        if self._redis is None or self._clock() < self._redis_down_until:
            return None
        try:
            raw = self._redis.get(self._prefix + event_id)
        except Exception as exc:  # noqa: BLE001 - any Redis failure only costs us the cache
            self._redis_failed(exc)
            return None
        try:
            entry = _Entry.from_json(raw) if raw is not None else None
        except (ValueError, KeyError, TypeError):
            return None
        if (
            entry is None
            or entry.direct is None
            or entry.descendants is None
            or self._clock() - entry.counted_at > self._counts_max_age
        ):
            return None
        self._remember([entry], shared=False)
        return entry

    def _known_leaf(self, event_id: str) -> bool:
        return self._known_counts(event_id) == ChildCounts(0, 0)

    def _from_siblings(self, event: Event) -> bool:
        """True if a listing of the parent's children shows ``event`` without descendants.

        Most children have none; one list call of the parent's children, oldest first, tells,
        and caches the siblings whole with their counts. When that page holds the whole family
        it gives the parent its own counts too; a wider family is never paged through: the
        page is the first window over it, and a child beyond it gets a window from itself on.
        A child missing from every listing (user events reach ``depth`` lists seconds late) is
        not taken as absent: its own children are listed instead.
        """
        parent = self._lookup(str(event.parent_id))
        if parent is None:
            return False  # not visible to us (parent_not_found): nothing to list
        parent_id = parent.event.id
        # A listing in flight (the parent's own, a sibling's window, a read-ahead) may well
        # hold this event.
        if self._await_lists() and self._known_descendants(event.id) is not None:
            return self._known_leaf(event.id)
        family = self._known_descendants(parent_id)
        small = family is not None and family <= self._sibling_window
        if small and self._known_counts(parent_id) is not None:
            return False  # listed already: had this event been in it, its count would be known
        wide = (family is not None and not small) or self._known_wide(parent_id)

        def family_listed() -> bool | None:
            """After another process listed the family: whole (its counts cached), or this
            event seen in it; None: list it here."""
            if self._known_counts(parent_id) is not None:
                return True
            return False if self._known_descendants(event.id) is not None else None

        try:
            if not wide and self._collapse(
                f"family:{parent_id}",
                lambda: self._fleet(
                    f"family:{parent_id}", lambda: self._list_family(parent.event), family_listed
                ),
            ):
                return self._known_leaf(event.id)  # the whole family: no window can say more
            if self._known_descendants(event.id) is None:
                self._sibling_window_at(parent_id, _parse_timestamp(event.timestamp))
        except (TransientError, ValueError):
            return False  # the children listing will retry with its own budget
        return self._known_leaf(event.id)

    # --- for producers that page the list endpoint themselves (``rapidly-worker backfill``)

    def list_page(self, params: dict[str, Any]) -> EventPage:
        """One list call with the store's retries (429s, 5xx, timeouts); nothing is cached."""
        return self._retrying(lambda: self._client.list_events(params))

    def prime(self, listed: Sequence[tuple[Event, int, int | None]]) -> None:
        """Cache events as a list response showed them, for whichever worker enriches them:
        ``(event, descendants, direct)`` with ``descendants`` the list's ``child_count`` and
        ``direct`` the direct children when known (None: the worker lists them). Stamped now,
        so they count as fresh for ``event_max_age`` and ``counts_max_age``."""
        now = self._clock()
        self._remember(
            [
                _Entry(Event.from_api(event.as_get()), now, descendants, now, direct)
                for event, descendants, direct in listed
            ]
        )

    def count_children(self, event: Event) -> ChildCounts:
        """List ``event``'s direct children now (cached with their counts, the event's too)."""
        return self._collapse(f"children:{event.id}", lambda: self._count_children(event))

    def _list_family(self, parent: Event) -> bool:
        """The first page of ``parent``'s children, oldest first, cached; True when it holds the
        whole family (the parent's own counts are then cached too)."""
        size = self._sibling_window
        page = self._retrying(lambda: self._client.list_events(family_params(parent.id, size)))
        now = self._clock()
        children = _children_of(parent.id, page.events)
        whole = page.total <= len(page.events)
        window = _Window(
            last_at=_parse_timestamp(children[-1].timestamp) if children else _EPOCH,
            full=not whole,
            size=len(children),
            parent_id=parent.id,
        )
        entries = [
            _Entry(Event.from_api(e.as_get()), now, e.child_count, now, window=window, position=i)
            for i, e in enumerate(children)
        ]
        if not whole:
            with self._lock:
                self._wide[parent.id] = now
                self._wide.move_to_end(parent.id)
                while len(self._wide) > max(1, self._max_events // LIST_PAGE_SIZE):
                    self._wide.popitem(last=False)
        else:
            direct = max(page.total, len(children))
            descendants = max(direct, sum(1 + e.child_count for e in children))
            entries.append(
                _Entry(parent, self._entry_time(parent.id, now), descendants, now, direct)
            )
        self._remember(entries)
        return whole

    def _known_wide(self, parent_id: str) -> bool:
        with self._lock:
            since = self._wide.get(parent_id)
        return since is not None and self._clock() - since <= self._counts_max_age

    # --- sibling windows: one list call answers for the next ``sibling_window`` children

    def _sibling_window_at(self, parent_id: str, at: datetime) -> None:
        self._collapse(
            f"siblings:{parent_id}:{at.isoformat()}",
            lambda: self._fetch_sibling_window(parent_id, at),
        )

    def _fetch_sibling_window(self, parent_id: str, at: datetime) -> None:
        """``parent_id``'s children from ``at`` on, in time order, each with its descendant
        count; cached like a root window's events, read ahead the same way."""
        params = sibling_window_params(parent_id, at, self._sibling_window)
        page = self._retrying(lambda: self._client.list_events(params))
        now = self._clock()
        children = _children_of(parent_id, page.events)
        if not children:
            return
        window = _Window(
            last_at=_parse_timestamp(children[-1].timestamp),
            full=len(page.events) >= self._sibling_window,
            size=len(children),
            parent_id=parent_id,
        )
        self._remember(
            [
                _Entry(
                    Event.from_api(e.as_get()), now, e.child_count, now, window=window, position=i
                )
                for i, e in enumerate(children)
            ]
        )

    def _count_direct(self, event: Event, descendants: int) -> ChildCounts:
        """A wide event's direct count: ``meta.total`` of a one-item page of its children, one
        call instead of every page (its descendants came with a list response already)."""
        page = self._retrying(
            lambda: self._client.list_events(direct_count_params(event.id)),
        )
        direct = page.total
        now = self._clock()
        # Counts are eventually consistent: a total read later may exceed the older sum.
        counts = ChildCounts(direct, max(descendants, direct))
        self._remember(
            [_Entry(event, self._entry_time(event.id, now), counts.descendants, now, direct)]
        )
        return counts

    # --- root windows: one list call answers for the next ``root_window`` root events

    def _from_root_window(self, event: Event) -> bool:
        """True if a window of root events (fetched now, or in flight already) shows ``event``
        without descendants.

        Producers send IDs of new events, mostly roots (``customer.created``), roughly in time
        order. ``GET /api/events/?depth=0&sorting=timestamp&start_timestamp=T-1us&limit=100``
        returns the root at T and the 99 roots after it, complete, with their descendant counts:
        the following events then cost no call at all. A window never costs more than the
        per-event children listing it replaces.
        """
        try:
            at = _parse_timestamp(event.timestamp)
        except ValueError:
            return False
        # A window in flight may well hold this event: one call in flight at a time serves the
        # whole burst of events a full prefetch brings, instead of one window each.
        if self._await_lists():
            entry = self._lookup(event.id)
            if entry is not None and entry.descendants is not None:
                return self._known_leaf(event.id)  # known now, leaf or not: no window needed
        try:
            self._collapse(f"window:{at.isoformat()}", lambda: self._root_window_at(at))
        except TransientError:
            return False  # the children listing will retry with its own budget
        return self._known_leaf(event.id)

    def _root_window_at(self, at: datetime) -> bool:
        self._fetch_root_window(at)
        return True

    def _await_lists(self) -> bool:
        """Wait for the list calls in flight (root windows, children listings): they bring
        whole events with counts, so waiting one round trip often saves a call."""
        with self._lock:
            waiting = [f for key, f in self._flights.items() if not key.startswith("get:")]
        for flight in waiting:
            flight.done.wait()
        return bool(waiting)

    def _await_flight(self, key: str) -> bool:
        with self._lock:
            flight = self._flights.get(key)
        if flight is not None:
            flight.done.wait()
        return flight is not None

    def _fetch_root_window(self, at: datetime) -> None:
        start = (at - timedelta(microseconds=1)).isoformat().replace("+00:00", "Z")
        params = {
            "depth": 0,
            "sorting": "timestamp",
            "start_timestamp": start,
            "limit": self._root_window,
            "page": 1,
        }
        page = self._retrying(lambda: self._client.list_events(params))
        now = self._clock()
        roots = [e for e in page.events if e.parent_id is None]
        if not roots:
            return
        window = _Window(
            last_at=_parse_timestamp(roots[-1].timestamp),
            full=len(page.events) >= self._root_window,
            size=len(roots),
        )
        self._remember(
            [
                _Entry(
                    Event.from_api(e.as_get()), now, e.child_count, now, window=window, position=i
                )
                for i, e in enumerate(roots)
            ]
        )
        parents = [self._lru_event(e.id) for e in roots if e.child_count > 0]
        if parents:
            # Each of these roots needs its children listed when it is enriched (its direct
            # count); listing them now also caches the children before their messages arrive.
            threading.Thread(target=self._list_children_of, args=(parents,), daemon=True).start()

    def _lru_event(self, event_id: str) -> Event:
        with self._lock:
            return self._lru[event_id].event

    def _list_children_of(self, parents: list[Event]) -> None:
        for parent in parents:
            if self._known_counts(parent.id) is not None:
                continue
            try:
                self._resolve_counts(parent)
            except Exception as exc:  # noqa: BLE001 - an optimisation: enrichment lists them anyway
                log.info("cache.read_ahead_failed", error=f"{type(exc).__name__}: {exc}")
                return

    # --- fetching

    def _fetch(self, event_id: str, not_found_wait: float) -> Event:
        while True:
            try:
                # Asked again when the budget lets the GET go: a list call may have brought the
                # event while it waited (DispatchingLimiter), and then no call is made.
                event = self._retrying(
                    lambda: self._client.get_event(
                        event_id, still_needed=lambda: self._fresh_event(event_id) is None
                    ),
                    not_found_wait=not_found_wait,
                    event_id=event_id,
                )
            except NoLongerNeeded:
                cached = self._fresh_event(event_id)
                if cached is not None:
                    return cached
                continue  # evicted in between: the next ask says it is needed
            self._remember([_Entry(event, self._clock())])
            return event

    def _fresh_event(self, event_id: str) -> Event | None:
        entry = self._lookup(event_id)
        return entry.event if entry is not None and self._is_fresh(entry) else None

    def _is_fresh(self, entry: _Entry) -> bool:
        """Whether a cached copy may stand for the enriched event itself (its customer is live)."""
        return self._clock() - entry.fetched_at <= self._event_max_age

    def _count_children(self, event: Event) -> ChildCounts:
        page_no, direct, descendants = 1, 0, 0
        seen: set[str] = set()
        entries: list[_Entry] = []
        now = self._clock()
        while True:
            still_needed = (lambda: self._known_counts(event.id) is None) if page_no == 1 else None
            try:
                page = self._retrying(
                    lambda p=page_no, n=still_needed: self._client.list_children(  # type: ignore[misc]
                        event.id, page=p, still_needed=n
                    )
                )
            except NoLongerNeeded:
                known = self._known_counts(event.id)  # listed meanwhile (a sibling's listing)
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
                entries.append(_Entry(Event.from_api(child.as_get()), now, child.child_count, now))
            if not page.events or page_no >= page.pages:
                break
            page_no += 1
        direct = max(direct, len(seen))
        descendants = max(descendants, direct)
        entries.append(_Entry(event, self._entry_time(event.id, now), descendants, now, direct))
        self._remember(entries)
        return ChildCounts(direct, descendants)

    def _entry_time(self, event_id: str, default: float) -> float:
        with self._lock:
            entry = self._lru.get(event_id)
        return entry.fetched_at if entry is not None else default

    def _retrying(
        self,
        call: Callable[[], T],
        *,
        not_found_wait: float | None = None,
        event_id: str | None = None,
    ) -> T:
        # Each kind of failure has its own clock, so that one never eats another's allowance:
        # the replica-lag window starts at the first 404, the error budget at the first error,
        # and a 429's wait counts against neither (it is never the event's failure).
        policy = self._policy
        failures = not_found = 0
        rate_limited_for = lag_waited = error_waited = 0.0
        while True:
            api_calls.set(api_calls.get() + 1)
            try:
                return call()
            except NoLongerNeeded:
                api_calls.set(api_calls.get() - 1)  # not sent
                raise
            except RateLimited as exc:
                if self._limiter is not None:
                    self._limiter.penalize(exc.retry_after)
                rate_limited_for += exc.retry_after
                if rate_limited_for > policy.rate_limit_wait_seconds:
                    raise RateLimitWaitTooLong(rate_limited_for) from exc
                log.warning(
                    "api.rate_limited", retry_after=exc.retry_after, request_id=exc.request_id
                )
                _check_deadline(exc.retry_after, "rate limited")
                policy.sleep(exc.retry_after + random.uniform(0, 0.1))  # noqa: S311
            except EventNotYetVisible:
                not_found += 1
                if not_found_wait is None or lag_waited >= not_found_wait:
                    raise EventNotFound(
                        event_id or "?", waited=lag_waited, attempts=not_found
                    ) from None
                # The last attempt lands at the end of the window, not before it.
                delay = min(
                    policy.max_delay, 0.25 * 2 ** (not_found - 1), not_found_wait - lag_waited
                )
                _check_deadline(delay, "event not visible yet")
                policy.sleep(delay)
                lag_waited += delay
            except ApiUnavailable as exc:
                failures += 1
                delay = policy.backoff(failures)
                if failures >= policy.max_attempts or error_waited + delay > policy.budget_seconds:
                    raise RetriesExhausted(exc, attempts=failures, elapsed=error_waited) from None
                log.info("api.retry", error=str(exc), attempt=failures, delay=round(delay, 3))
                _check_deadline(delay, "API unavailable")
                policy.sleep(delay)
                error_waited += delay

    def _fleet(self, key: str, work: Callable[[], T], answer: Callable[[], T | None]) -> T:
        """``work`` (an API call that caches its answer), unless another process sharing the
        Redis is making the same call: then its answer is waited for and taken from the cache
        (``answer``; None: not there, the call is made here). Without Redis, or when it fails,
        the call is simply made: sharing only ever saves calls.

        Not while the rate limit holds requests back (``throttled``): a call then waits in the
        limiter's queue, which drops it once the cache answers it, and does better than a
        bounded wait here (measured: 0.32 calls per event with flights under a 30/s budget,
        0.28 without)."""
        redis = self._redis
        if (
            redis is None
            or self._clock() < self._redis_down_until
            or getattr(self._limiter, "throttled", False)
        ):
            return work()
        flight = self._flight_prefix + key
        token = uuid.uuid4().hex
        try:
            taken = redis.set(flight, token, nx=True, px=int(FLIGHT_SECONDS * 1000))
        except Exception as exc:  # noqa: BLE001 - not shared this time
            log.debug("cache.flight_unavailable", error=type(exc).__name__)
            return work()
        if taken:
            try:
                return work()
            finally:
                self._land(flight, token)
        waited, delay = 0.0, FLIGHT_POLL_FIRST_SECONDS
        while waited < FLIGHT_SECONDS:
            deadline = event_deadline.get()
            if deadline is not None and time.monotonic() + delay > deadline:
                break
            self._policy.sleep(delay)
            waited += delay
            delay = min(FLIGHT_POLL_MAX_SECONDS, delay * 2)
            try:
                if not redis.exists(flight):
                    break
            except Exception:  # noqa: BLE001 - not shared this time
                break
        found = answer()
        return found if found is not None else work()

    def _land(self, flight: str, token: str) -> None:
        """The call is over and its answer cached: waiters stop waiting (only our own key)."""
        try:
            if self._land_own is None:
                self._land_own = self._redis.register_script(_LAND_OWN)
            self._land_own(keys=[flight], args=[token])
        except Exception as exc:  # noqa: BLE001 - the key expires by itself
            log.debug("cache.flight_unavailable", error=type(exc).__name__)

    def _collapse(self, key: str, work: Callable[[], T]) -> T:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.result  # type: ignore[no-any-return]
        try:
            flight.result = work()
            return flight.result  # type: ignore[no-any-return]
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    # --- the two cache levels

    def _lookup(self, event_id: str) -> _Entry | None:
        with self._lock:
            entry = self._lru.get(event_id)
            if entry is not None:
                self._lru.move_to_end(event_id)
                return entry
        if self._redis is None or self._clock() < self._redis_down_until:
            return None
        try:
            raw = self._redis.get(self._prefix + event_id)
        except Exception as exc:  # noqa: BLE001 - any Redis failure only costs us the cache
            self._redis_failed(exc)
            return None
        if raw is None:
            return None
        try:
            entry = _Entry.from_json(raw)
        except (ValueError, KeyError, TypeError):
            return None
        self._remember([entry], shared=False)
        return entry

    def _remember(self, entries: list[_Entry], *, shared: bool = True) -> None:
        if self._max_events > 0:
            with self._lock:
                for entry in entries:
                    event_id = entry.event.id
                    self._lru[event_id] = entry.merged_with(self._lru.get(event_id))
                    self._lru.move_to_end(event_id)
                while len(self._lru) > self._max_events:
                    self._lru.popitem(last=False)
        if not shared or self._redis is None or self._clock() < self._redis_down_until:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for entry in entries:
                pipe.set(self._prefix + entry.event.id, entry.to_json(), ex=self._redis_ttl)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self._redis_failed(exc)

    def _redis_failed(self, exc: BaseException) -> None:
        self._redis_down_until = self._clock() + REDIS_COOLDOWN_SECONDS
        log.warning("cache.redis_unavailable", error=f"{type(exc).__name__}: {exc}")

    def cached_count(self) -> int:
        with self._lock:
            return len(self._lru)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _children_of(parent_id: str, events: list[Event]) -> list[Event]:
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


def _parse_timestamp(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
