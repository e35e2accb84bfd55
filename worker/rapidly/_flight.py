"""Single-flight: concurrent reads of one key in this process collapse into one call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from worker._gevent import wait_for

T = TypeVar("T")

ARRIVED_FORGET_SECONDS = 60.0  # an event taken up this long ago failed on the way


@dataclass(slots=True)
class _TakenUp:
    done: threading.Event
    at: float  # time.monotonic()
    brought: bool  # found in the cache when taken up


class _Flight:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Flights:
    """Calls in flight in this process, by key (``get:…`` for GETs, anything else a list)."""

    def __init__(
        self, around_lists: Callable[[], AbstractContextManager[None]] | None = None
    ) -> None:
        # Around each list call led here: the fleet's view of the lists in flight.
        self._around_lists = around_lists or nullcontext
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._counting: dict[str, threading.Event] = {}
        self._enriching: dict[str, _TakenUp] = {}
        # Events being enriched, in arrival order: (counted, when it arrived).
        self._arrived: dict[str, tuple[threading.Event, float]] = {}
        self._mine = threading.local()  # the event this thread (greenlet) took up last

    def collapse(self, key: str, work: Callable[[], T]) -> T:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            wait_for(flight.done)
            if flight.error is not None:
                raise flight.error
            return flight.result  # type: ignore[no-any-return]
        try:
            if key.startswith("get:"):
                flight.result = work()
            else:
                with self._around_lists():
                    flight.result = work()
            return flight.result  # type: ignore[no-any-return]
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    def await_lists(self) -> bool:
        """Wait for the list calls in flight (root windows, children listings): they bring
        whole events with counts, so waiting one round trip often saves a call."""
        with self._lock:
            waiting = [f for key, f in self._flights.items() if not key.startswith("get:")]
        for flight in waiting:
            wait_for(flight.done)
        return bool(waiting)

    def await_flight(self, key: str) -> bool:
        with self._lock:
            flight = self._flights.get(key)
        if flight is not None:
            wait_for(flight.done)
        return flight is not None

    @contextmanager
    def counting(self, event_id: str, ancestors: list[str]) -> Iterator[bool]:
        """While ``event_id``'s counts are resolved here. An event whose nearest ancestors (or
        itself) are being counted already waits for that first: the listing it makes often
        holds this event with its counts. Yields whether it waited.

        An event waits once at most, before it is marked as being counted, and never after: so
        no two ever wait for each other (not even in a cycle of events). Checked and marked
        without a switch in between, so that a burst of events arriving together (a chain)
        waits for the first of them instead of each listing at once."""
        with self._lock:
            busy = next(
                (self._counting[k] for k in (event_id, *ancestors) if k in self._counting), None
            )
        if busy is not None:
            wait_for(busy)
        with self._lock:
            mine = None if event_id in self._counting else threading.Event()
            if mine is not None:
                self._counting[event_id] = mine
        try:
            yield busy is not None
        finally:
            if mine is not None:
                with self._lock:
                    del self._counting[event_id]
                mine.set()

    def enter(
        self, event_id: str, gate_seconds: float, *, brought_since: float | None = None
    ) -> bool:
        """An uncached event about to be fetched: first wait for the events this process took
        up before it to be counted (``leave``), ``gate_seconds`` at most from when each was taken
        up: their windows and listings often bring this one, so a burst of IDs (a tree, a
        chain) is fetched in waves, each after the lists of the one before, instead of every
        event at once. The first of a burst, with nothing to wait for, is taken up at once
        (checked and marked without a switch in between): the rest wait for it.

        ``brought_since``: a further round, only for the events taken up since then that were
        found in the cache and are still being counted (a chain coming in with listings,
        four levels at a time). True if there was anything to wait for."""
        self._drop_previous(event_id)
        now = time.monotonic()
        with self._lock:
            for stale in [k for k, t in self._enriching.items() if now - t.at > 10 * gate_seconds]:
                del self._enriching[stale]  # left without being counted (failed on the way)
            before = [
                t
                for k, t in self._enriching.items()
                if k != event_id
                and (brought_since is None or (t.brought and t.at >= brought_since))
            ]
            if not before and brought_since is None:
                self._take_up(event_id, brought=False)
        for taken in before:
            remaining = taken.at + gate_seconds - time.monotonic()
            if remaining > 0:
                wait_for(taken.done, remaining)
        return bool(before)

    def taken_up(self, event_id: str, *, brought: bool) -> None:
        """The event is being enriched (``brought``: found in the cache)."""
        self._drop_previous(event_id)
        with self._lock:
            self._take_up(event_id, brought=brought)

    def _take_up(self, event_id: str, *, brought: bool) -> None:
        self._mine.event_id = event_id
        if event_id not in self._enriching:
            self._enriching[event_id] = _TakenUp(threading.Event(), time.monotonic(), brought)

    def _drop_previous(self, event_id: str) -> None:
        """A thread that reads events one after another without counting them (a caller of
        ``EventStore.event`` alone) is done with the one before. The worker's unit of work
        leaves its event itself, counted or failed: each task runs in a greenlet of its own."""
        previous = getattr(self._mine, "event_id", None)
        if previous is not None and previous != event_id:
            self.leave(previous)

    def arrive(self, event_id: str) -> threading.Event | None:
        """The event starts being enriched here: what tells when the one that arrived before it
        (still being enriched) is counted. IDs come in time order, parents first: a chain's
        next event waits for the one before it, whose listing (four levels down) brings it,
        instead of every event of the chain being fetched at once."""
        now = time.monotonic()
        with self._lock:
            while self._arrived:
                oldest = next(iter(self._arrived))
                if now - self._arrived[oldest][1] <= ARRIVED_FORGET_SECONDS:
                    break
                del self._arrived[oldest]  # never counted (failed on the way)
            last = next(reversed(self._arrived), None)
            before = self._arrived[last][0] if last is not None and last != event_id else None
            self._arrived.setdefault(event_id, (threading.Event(), now))
        return before

    def leave(self, event_id: str) -> None:
        """The event is counted (or failed): the events waiting in ``enter`` may go."""
        with self._lock:
            entry = self._enriching.pop(event_id, None)
            arrived = self._arrived.pop(event_id, None)
        if entry is not None:
            entry.done.set()
        if arrived is not None:
            arrived[0].set()
