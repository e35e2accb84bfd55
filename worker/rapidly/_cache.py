"""The two cache levels: a bounded in-process LRU, then Redis shared by the fleet.

Events are immutable, so a fetched event can be reused. Freshness: an ancestor's six fields never
change, so any cached copy is used. The enriched event itself is used from cache only if fetched
within ``event_max_age`` (its ``customer`` is the live customer). Child counts are reused for
``counts_max_age``; the server's counts are eventually consistent anyway.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from worker.rapidly._client import LIST_PAGE_SIZE
from worker.rapidly._models import Event

log = structlog.get_logger()

# After a Redis error, the cache is bypassed for this long instead of paying a timeout per read.
REDIS_COOLDOWN_SECONDS = 5.0
# The claim's round trip reads the event's shared copy, and the store looks the event up right
# after it, with no switch to another greenlet in between: a miss the claim read that recently
# stands for that one lookup. The lookups after a wait (an entry gate, a predecessor, a fleet
# flight) read Redis again.
SHARED_MISS_FRESH_SECONDS = 0.002


@dataclass(frozen=True, slots=True)
class ChildCounts:
    direct: int
    descendants: int


@dataclass(slots=True)
class Window:
    last_at: datetime
    full: bool
    size: int
    read_ahead: bool = False
    parent_id: str | None = None  # a window over this parent's children; None: root events


@dataclass(slots=True)
class Entry:
    event: Event  # the GET view (child_count 0)
    fetched_at: float
    descendants: int | None = None  # from a list response: all descendants
    counted_at: float = 0.0
    direct: int | None = None  # from listing this event's own children
    window: Window | None = None  # the root window that brought it (this process only)
    position: int = 0  # its place in that window

    def merged_with(self, old: Entry | None) -> Entry:
        """Keep what an older entry knew and this one does not (a GET carries no counts)."""
        if old is None:
            return self
        if self.window is None and old.window is not None:
            self.window, self.position = old.window, old.position
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
    def from_json(cls, text: str | bytes) -> Entry:
        data = json.loads(text)
        return cls(Event.from_api(data["e"]), data["f"], data["d"], data["c"], data.get("n"))


def listed_entry(event: Event, now: float, **extra: Any) -> Entry:
    """A list response's event, cached as its GET view with its descendant count."""
    return Entry(Event.from_api(event.as_get()), now, event.child_count, now, **extra)


class EventCache:
    def __init__(
        self,
        *,
        max_events: int,
        event_max_age: float,
        counts_max_age: float,
        redis: Any,
        redis_namespace: str,
        redis_ttl: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_events = max_events
        self._event_max_age = event_max_age
        self._counts_max_age = counts_max_age
        self.redis = redis
        self.prefix = f"rapidly:{redis_namespace}:evt:"
        self._redis_ttl = redis_ttl
        self._redis_down_until = 0.0
        self.clock = clock
        self._lru: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()
        # Parents seen with more children than one page (id -> when): their children are read
        # in windows, their family's first page is not asked again. Bounded like the LRU.
        self._wide: OrderedDict[str, float] = OrderedDict()
        # Parents that stayed 404 past the replica-lag wait (id -> until when).
        self._missing: OrderedDict[str, float] = OrderedDict()
        # Ids whose shared copy the claim just found missing, and when (SHARED_MISS_FRESH_SECONDS).
        self._missed_at: OrderedDict[str, float] = OrderedDict()

    def redis_usable(self) -> bool:
        return self.redis is not None and self.clock() >= self._redis_down_until

    def shared_key(self, event_id: str) -> str | None:
        if not self.redis_usable():
            return None
        with self._lock:
            if event_id in self._lru:
                return None
        return self.prefix + event_id

    def accept_shared(self, raw: bytes | str | None, event_id: str) -> None:
        """``raw``: what the caller read at ``shared_key(event_id)``; None: nothing there."""
        if raw is None:
            self._missed(event_id)
            return
        try:
            entry = Entry.from_json(raw)
        except (ValueError, KeyError, TypeError):
            return
        self.remember([entry], shared=False)

    def lookup(self, event_id: str) -> Entry | None:
        with self._lock:
            entry = self._lru.get(event_id)
            if entry is not None:
                self._lru.move_to_end(event_id)
                return entry
        entry = self._read_shared(event_id)
        if entry is not None:
            self.remember([entry], shared=False)
        return entry

    def peek(self, event_id: str) -> Entry | None:
        """This process's copy, without reading Redis (no I/O, no switch)."""
        with self._lock:
            return self._lru.get(event_id)

    def _read_shared(self, event_id: str) -> Entry | None:
        """The shared copy; None when there is none, or when the claim's round trip has just
        found it missing (once: ``accept_shared``)."""
        if not self.redis_usable():
            return None
        with self._lock:
            missed_at = self._missed_at.pop(event_id, None)
        if missed_at is not None and time.monotonic() - missed_at < SHARED_MISS_FRESH_SECONDS:
            return None
        try:
            raw = self.redis.get(self.prefix + event_id)
        except Exception as exc:  # noqa: BLE001 - any Redis failure only costs us the cache
            self._redis_failed(exc)
            return None
        try:
            return Entry.from_json(raw) if raw is not None else None
        except (ValueError, KeyError, TypeError):
            return None

    def _missed(self, event_id: str) -> None:
        with self._lock:
            self._missed_at[event_id] = time.monotonic()
            self._missed_at.move_to_end(event_id)
            while len(self._missed_at) > 4096:
                self._missed_at.popitem(last=False)

    def remember(self, entries: list[Entry], *, shared: bool = True) -> None:
        if self.max_events > 0:
            with self._lock:
                for entry in entries:
                    event_id = entry.event.id
                    self._lru[event_id] = entry.merged_with(self._lru.get(event_id))
                    self._lru.move_to_end(event_id)
                while len(self._lru) > self.max_events:
                    self._lru.popitem(last=False)
        if not shared or not self.redis_usable():
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for entry in entries:
                pipe.set(self.prefix + entry.event.id, entry.to_json(), ex=self._redis_ttl)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self._redis_failed(exc)

    def _redis_failed(self, exc: BaseException) -> None:
        self._redis_down_until = self.clock() + REDIS_COOLDOWN_SECONDS
        log.warning("cache.redis_unavailable", error=f"{type(exc).__name__}: {exc}")

    def cached_count(self) -> int:
        with self._lock:
            return len(self._lru)

    def lru_event(self, event_id: str) -> Event:
        with self._lock:
            return self._lru[event_id].event

    def entry_time(self, event_id: str, default: float) -> float:
        with self._lock:
            entry = self._lru.get(event_id)
        return entry.fetched_at if entry is not None else default

    # --- what the cached copies tell

    def fresh_event(self, event_id: str) -> Event | None:
        entry = self.lookup(event_id)
        return entry.event if entry is not None and self.is_fresh(entry) else None

    def is_fresh(self, entry: Entry) -> bool:
        """Whether a cached copy may stand for the enriched event itself (its customer is live)."""
        return self.clock() - entry.fetched_at <= self._event_max_age

    def known_descendants(self, event_id: str) -> int | None:
        entry = self.lookup(event_id)
        if entry is None or self.clock() - entry.counted_at > self._counts_max_age:
            return None
        return entry.descendants

    def known_counts(self, event_id: str, *, shared: bool = True) -> ChildCounts | None:
        """The event's counts as far as they are known. ``shared=False``: this process's copy
        only, for a caller that has just read the shared copy and found nothing (each read is a
        Redis round trip on the event's path)."""
        entry = self.lookup(event_id) if shared else self.peek(event_id)
        if entry is None or not self._counted(entry):
            return None
        counts = self._counts_in(entry)
        if counts is not None or not shared:
            return counts
        shared_entry = self._shared_counts(event_id)
        if shared_entry is not None:
            return ChildCounts(shared_entry.direct, shared_entry.descendants)  # type: ignore[arg-type]
        return None

    def _counted(self, entry: Entry) -> bool:
        return (
            entry.descendants is not None
            and self.clock() - entry.counted_at <= self._counts_max_age
        )

    def _counts_in(self, entry: Entry | None) -> ChildCounts | None:
        """What ``entry`` alone tells of the counts (no I/O)."""
        if entry is None or not self._counted(entry):
            return None
        if entry.descendants == 0:
            # No descendants at all means no direct children either: no call needed.
            return ChildCounts(0, 0)
        if entry.direct is not None:
            return ChildCounts(entry.direct, entry.descendants)  # type: ignore[arg-type]
        return None

    def _shared_counts(self, event_id: str) -> Entry | None:
        """The shared copy, when it has the direct count this process lacks: another process
        (``rapidly-worker backfill``, which caches an event first and its direct count once it
        has seen the children) may have completed it since this process cached it."""
        entry = self._read_shared(event_id)
        if (
            entry is None
            or entry.direct is None
            or entry.descendants is None
            or self.clock() - entry.counted_at > self._counts_max_age
        ):
            return None
        self.remember([entry], shared=False)
        return entry

    def counts_landed(self, event_id: str) -> ChildCounts | None:
        """The event's counts once another process's listing of them landed: read from the
        shared copy when this process's own copy has none (a copy cached by a GET or an
        earlier list keeps answering None here until it is read again)."""
        known = self._counts_in(self.peek(event_id))
        if known is not None:
            return known
        entry = self._read_shared(event_id)  # one read: what the other process's listing left
        if entry is None or entry.descendants is None:
            return None
        self.remember([entry], shared=False)
        return self._counts_in(self.peek(event_id) or entry)

    def known_leaf(self, event_id: str) -> bool:
        return self.known_counts(event_id) == ChildCounts(0, 0)

    def mark_wide(self, parent_id: str, now: float) -> None:
        with self._lock:
            self._wide[parent_id] = now
            self._wide.move_to_end(parent_id)
            while len(self._wide) > max(1, self.max_events // LIST_PAGE_SIZE):
                self._wide.popitem(last=False)

    def known_wide(self, parent_id: str) -> bool:
        with self._lock:
            since = self._wide.get(parent_id)
        return since is not None and self.clock() - since <= self._counts_max_age

    # --- parents that stayed 404 (not visible with this token) past the replica-lag wait

    def remember_missing(self, event_id: str, seconds: float) -> None:
        """For ``seconds`` (the wait it stayed 404 through), the next walks through it take it
        as not found at once, in every process, instead of waiting and asking again."""
        until = self.clock() + seconds
        with self._lock:
            self._missing[event_id] = until
            while len(self._missing) > max(1, self.max_events // LIST_PAGE_SIZE):
                self._missing.popitem(last=False)
        if not self.redis_usable():
            return
        try:
            self.redis.set(self._missing_key(event_id), "1", px=max(1, int(seconds * 1000)))
        except Exception as exc:  # noqa: BLE001
            self._redis_failed(exc)

    def known_missing(self, event_id: str) -> bool:
        with self._lock:
            until = self._missing.get(event_id)
        if until is not None:
            return self.clock() < until
        if not self.redis_usable():
            return False
        try:
            return bool(self.redis.get(self._missing_key(event_id)))
        except Exception as exc:  # noqa: BLE001
            self._redis_failed(exc)
            return False

    def _missing_key(self, event_id: str) -> str:
        return self.prefix.replace(":evt:", ":missing:") + event_id
