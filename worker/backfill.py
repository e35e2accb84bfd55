"""``rapidly-worker backfill``: every event of a time window handed to the workers (CONTRACT.md
section 7), and with ``--follow`` every newer one as it appears.

It pages ``GET /api/events/?sorting=timestamp&limit=100`` and hands each event over as an
``events.enrich`` task on ``rapidly.events`` (confirmed publish). The page already holds the whole
event and its descendant count, so before the task is published the event goes into the fleet's
shared cache (Redis, the EventStore's own keys) with its counts: the worker that takes the ID
makes no API call for it. The record needs the *direct* child count too, which a list response
does not carry:

- no descendants: no direct children either;
- otherwise the event waits (unhanded) until the children it lists are seen in later pages: once
  the direct children seen account for every descendant (the sum of ``1 + child_count`` over them
  equals the event's own ``child_count``), none is missing and the count is exact. What is still
  unresolved at the end of the window (children outside it, counts not consistent yet) costs
  one children listing here, as the worker would have done.

Paging: ``start_timestamp`` is exclusive to the microsecond and there is no tie-breaker, so each
page restarts at ``last_timestamp - 1us`` and skips the IDs already handed over at that timestamp.
More than a page of events sharing one microsecond is read with page numbers over exactly that
microsecond, until as many distinct IDs as ``meta.total`` were seen.

Checkpoint (a JSON file, replaced atomically after each page): the cursor, the IDs handed over at
it, and the events still waiting for their counts. Killed and run again, it resumes at the last
saved page: at most that page is handed over a second time, and the workers' dedupe by event ID
publishes no second record for it.

``--follow``: after the window, poll every ``BACKFILL_POLL_SECONDS``, re-reading the last
``BACKFILL_MARGIN_SECONDS`` each time (an event can be listed after events with later
timestamps: producers set timestamps, and user events reach counts seconds late), deduplicated by
ID. SIGINT/SIGTERM stop it at the next page boundary with the checkpoint saved.

A backlog guard keeps ``rapidly.events`` under ``BACKFILL_MAX_BACKLOG`` messages: cached counts
are trusted by the workers for ``COUNTS_MAX_AGE_SECONDS`` only, so handing over far ahead of
them would make them list children again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from kombu import Connection

from worker.backfill_checkpoint import (
    Checkpoint,
    Pending,
    checkpoint_key,
    default_checkpoint_path,
    format_time,
    now_us,
    parse_time,
    task_message,
)
from worker.errors import BackfillError, PublishError
from worker.publishing import EVENTS_QUEUE, TaskPublisher
from worker.rapidly import Event, EventStore
from worker.rapidly import api_calls_made as rapidly_calls_made
from worker.rapidly._client import LIST_PAGE_SIZE

log = structlog.get_logger()

# A parent still waiting for its children this far (event time) behind the cursor is resolved
# with one call: its children are not coming in this window.
PENDING_SPAN_US = 3600 * 1_000_000
MAX_PENDING = 2000
TIE_RUN_ATTEMPTS = 3
PUBLISH_ATTEMPTS = 5


# --- the backfill


class Progress:
    """What the run reports; ``bar`` is anything with tqdm's update/total/refresh/close."""

    def __init__(self, bar: Any = None) -> None:
        self.bar = bar

    def remaining(self, done: int, remaining: int) -> None:
        if self.bar is not None and done + remaining > (self.bar.total or 0):
            self.bar.total = done + remaining
            self.bar.refresh()

    def handed(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Backfill:
    def __init__(
        self,
        *,
        store: EventStore,
        publisher: TaskPublisher,
        checkpoint: Checkpoint,
        broker_url: str,
        until: int | None,
        follow: bool,
        poll_seconds: float,
        margin_seconds: float,
        max_backlog: int,
        progress: Progress | None = None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._cp = checkpoint
        self._broker_url = broker_url
        self._until = until
        self._follow = follow
        self._poll = poll_seconds
        self._margin = int(margin_seconds * 1_000_000)
        self._max_backlog = max_backlog
        self._progress = progress or Progress()
        self._clock = clock
        self.stop = threading.Event()
        self.handed_this_run = 0
        self._backlog_conn: Connection | None = None

    # --- the two phases

    def run(self) -> bool:
        """True once every event of the window was handed over (with ``--follow``: stopped by a
        signal after that); False when stopped before."""
        try:
            end = self._until if self._until is not None else self._clock()
            if not self._page(self._cp.cursor, end):
                return False
            self._resolve_pending(before=2**62)
            self._save(floor=self._floor(self._cp.cursor))
            if not self._follow:
                return True
            log.info("backfill.following", poll_seconds=self._poll, margin_us=self._margin)
            while not self.stop.wait(self._poll):
                now = self._clock()
                start = min(self._cp.cursor, now - self._margin)
                if not self._page(start, None):
                    break
                self._resolve_pending(before=now - self._margin)
                self._save(floor=self._floor(self._cp.cursor))
            return True
        finally:
            if self._backlog_conn is not None:
                with contextlib.suppress(Exception):
                    self._backlog_conn.release()

    def _page(self, start: int, end: int | None) -> bool:
        """Hand over every event with ``start <= timestamp < end`` (``end`` None: up to now).
        False when stopped by a signal first."""
        cursor = start
        while True:
            if self.stop.is_set() or not self._await_backlog():
                return False
            params: dict[str, Any] = {
                "sorting": "timestamp",
                "limit": LIST_PAGE_SIZE,
                "page": 1,
                "start_timestamp": format_time(cursor - 1),  # exclusive: includes the cursor
            }
            if end is not None:
                params["end_timestamp"] = format_time(end)
            page = self._store.list_page(params)
            events = sorted(page.events, key=self._ts)  # stable: the server's order within ties
            fresh = [e for e in events if e.id not in self._cp.handed]
            self._progress.remaining(self._cp.count, page.total - (len(events) - len(fresh)))
            if not events:
                return True
            last = self._ts(events[-1])
            if len(events) >= LIST_PAGE_SIZE and last == cursor:
                # A whole page inside one microsecond: read exactly that microsecond by pages.
                self._hand_over(self._tie_run(cursor))
                cursor = last + 1
            else:
                self._hand_over(fresh)
                cursor = last
            self._cp.cursor = max(self._cp.cursor, cursor)
            self._resolve_pending(before=cursor - PENDING_SPAN_US)
            self._save(floor=self._floor(cursor))
            if len(events) < LIST_PAGE_SIZE:
                return True

    def _tie_run(self, at: int) -> list[Event]:
        found: dict[str, Event] = {}
        total = 0
        for _ in range(TIE_RUN_ATTEMPTS):
            page_no = 1
            while True:
                page = self._store.list_page(
                    {
                        "sorting": "timestamp",
                        "limit": LIST_PAGE_SIZE,
                        "page": page_no,
                        "start_timestamp": format_time(at - 1),
                        "end_timestamp": format_time(at + 1),
                    }
                )
                total = max(total, page.total)
                for event in page.events:
                    found.setdefault(event.id, event)
                if not page.events or page_no >= page.pages:
                    break
                page_no += 1
            if len(found) >= total:
                break
            log.warning("backfill.tie_run_incomplete", at=format_time(at), seen=len(found))
        return [e for e in found.values() if e.id not in self._cp.handed]

    # --- hand-over

    def _hand_over(self, events: list[Event]) -> None:
        pending = self._cp.pending
        ready: list[tuple[Event, int, int]] = []
        fresh = [e for e in events if e.id not in pending]
        waiting: list[tuple[Event, int, int | None]] = []
        for event in fresh:
            if event.child_count <= 0:
                ready.append((event, 0, 0))  # no descendants: no direct children either
            else:
                pending[event.id] = Pending(event)
                # Cached now, without its direct count: its children are handed over before it
                # and their workers walk up through it.
                waiting.append((event, event.child_count, None))
        resolve: list[Pending] = []
        for event in fresh:
            parent = pending.get(event.parent_id or "")
            if parent is None or event.parent_id == event.id:
                continue
            parent.direct += 1
            parent.descendants += 1 + max(0, event.child_count)
            if parent.descendants == parent.event.child_count:
                ready.append((parent.event, parent.descendants, parent.direct))
                del pending[parent.event.id]
            elif parent.descendants > parent.event.child_count:
                resolve.append(parent)  # the counts do not add up (yet): ask the API
        self._store.prime(waiting + [(e, desc, direct) for e, desc, direct in ready])
        self._publish(e for e, _, _ in ready)
        for unresolved in resolve:
            self._resolve(unresolved)
        if len(pending) > MAX_PENDING:
            oldest = sorted(pending.values(), key=lambda p: self._ts(p.event))
            for unresolved in oldest[: len(pending) - MAX_PENDING]:
                self._resolve(unresolved)

    def _resolve_pending(self, *, before: int) -> None:
        """Resolve the parents listed before ``before`` that still wait for their children."""
        for waiting in [p for p in self._cp.pending.values() if self._ts(p.event) < before]:
            self._resolve(waiting)

    def _resolve(self, waiting: Pending) -> None:
        """One children listing (cached with the event's counts, as the worker would do)."""
        if self._cp.pending.pop(waiting.event.id, None) is None:
            return
        self._store.count_children(waiting.event)
        self._publish([waiting.event])

    def _publish(self, events: Iterable[Event]) -> None:
        for event in events:
            for attempt in range(1, PUBLISH_ATTEMPTS + 1):
                try:
                    self._publisher.publish_task(task_message(event.id))
                    break
                except PublishError as exc:
                    if attempt == PUBLISH_ATTEMPTS:
                        raise BackfillError(f"rapidly.events did not confirm: {exc}") from None
                    log.warning("backfill.publish_retry", attempt=attempt, error=str(exc))
                    time.sleep(min(5.0, 0.5 * attempt))
            self._cp.handed[event.id] = self._ts(event)
            self._cp.count += 1
            self.handed_this_run += 1
            self._progress.handed(1)

    # --- bookkeeping

    def _floor(self, cursor: int) -> int:
        """The oldest timestamp that can be listed again: the cursor, or with ``--follow`` the
        margin that every poll re-reads (kept twice over)."""
        return min(cursor, self._clock() - 2 * self._margin) if self._follow else cursor

    def _save(self, *, floor: int) -> None:
        self._cp.prune(floor)
        self._cp.save()

    def _await_backlog(self) -> bool:
        """Wait while ``rapidly.events`` holds more than the backlog allows; False if stopped."""
        while True:
            try:
                if self._backlog_conn is None:
                    self._backlog_conn = Connection(self._broker_url, connect_timeout=10)
                bound = EVENTS_QUEUE.bind(self._backlog_conn.default_channel)
                # Not passive: on Redis an empty queue does not exist, a passive declare fails.
                declared: Any = bound.queue_declare()
                waiting = int(declared.message_count)
            except Exception as exc:  # noqa: BLE001 - the publish will surface a broker outage
                log.warning("backfill.backlog_unknown", error=type(exc).__name__)
                if self._backlog_conn is not None:
                    with contextlib.suppress(Exception):
                        self._backlog_conn.release()
                self._backlog_conn = None
                return not self.stop.is_set()
            if waiting <= self._max_backlog:
                return True
            if self.stop.wait(0.5):
                return False

    @staticmethod
    def _ts(event: Event) -> int:
        return parse_time(event.timestamp)


def api_calls_made() -> int:
    """List calls this process made (the store counts them in this context)."""
    return rapidly_calls_made()


__all__ = [
    "Backfill",
    "Checkpoint",
    "Pending",
    "Progress",
    "api_calls_made",
    "checkpoint_key",
    "default_checkpoint_path",
    "format_time",
    "parse_time",
    "task_message",
]
