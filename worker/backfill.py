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
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from kombu import Connection

from worker.errors import BackfillError, PublishError
from worker.publishing import EVENTS_QUEUE, TaskMessage, TaskPublisher
from worker.rapidly import Event, EventStore
from worker.rapidly._client import LIST_PAGE_SIZE
from worker.rapidly._store import api_calls

log = structlog.get_logger()

TASK_NAME = "events.enrich"
CHECKPOINT_VERSION = 1
# A parent still waiting for its children this far (event time) behind the cursor is resolved
# with one call: its children are not coming in this window.
PENDING_SPAN_US = 3600 * 1_000_000
MAX_PENDING = 2000
TIE_RUN_ATTEMPTS = 3
PUBLISH_ATTEMPTS = 5
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- time as integer microseconds: the API's timestamps are exact to the microsecond


def parse_time(text: str) -> int:
    """RFC 3339 with a timezone -> epoch microseconds; ValueError otherwise."""
    parsed = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone (e.g. 2025-03-03T08:00:00Z)")
    delta = parsed - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_time(us: int) -> str:
    """Epoch microseconds -> ``2025-03-03T08:00:00.000001Z`` (``Z``: a raw ``+00:00`` in a URL
    decodes to a space and the API answers 422)."""
    return (
        (_EPOCH + timedelta(microseconds=us))
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def _now_us() -> int:
    return parse_time(datetime.now(UTC).isoformat())


def task_message(event_id: str) -> TaskMessage:
    """An ``events.enrich`` task exactly as ``send_task(..., args=[event_id])`` writes it
    (Celery message protocol 2, JSON)."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": TASK_NAME,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr([event_id]),
        "kwargsrepr": "{}",
        "origin": "rapidly-worker-backfill",
        "ignore_result": False,
    }
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps([[event_id], {}, embed]).encode()
    return TaskMessage(body=body, headers=headers, properties={"correlation_id": task_id})


# --- the checkpoint


@dataclass
class _Pending:
    event: Event  # as listed: child_count = all descendants
    direct: int = 0  # direct children seen so far
    descendants: int = 0  # what they account for: sum of 1 + their child_count

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event.as_sent(), "direct": self.direct, "desc": self.descendants}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Pending:
        return cls(Event.from_api(data["event"]), int(data["direct"]), int(data["desc"]))


@dataclass
class Checkpoint:
    path: Path
    key: str
    cursor: int  # every event before it is handed over (or pending)
    handed: dict[str, int] = field(default_factory=dict)  # id -> timestamp, at/after the floor
    pending: dict[str, _Pending] = field(default_factory=dict)
    count: int = 0  # events handed over in all runs

    @classmethod
    def open(cls, path: Path, key: str, since: int) -> Checkpoint:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path, key, since)
        except (OSError, ValueError) as exc:
            raise BackfillError(f"checkpoint {path} is unreadable: {exc}") from None
        if data.get("version") != CHECKPOINT_VERSION or data.get("key") != key:
            raise BackfillError(
                f"checkpoint {path} belongs to another backfill (other token, API or --since): "
                "remove it or pass another --checkpoint"
            )
        return cls(
            path,
            key,
            int(data["cursor"]),
            {str(k): int(v) for k, v in data["handed"].items()},
            {p["event"]["id"]: _Pending.from_json(p) for p in data["pending"]},
            int(data["count"]),
        )

    def save(self) -> None:
        data = {
            "version": CHECKPOINT_VERSION,
            "key": self.key,
            "cursor": self.cursor,
            "cursor_time": format_time(self.cursor),
            "handed": self.handed,
            "pending": [p.to_json() for p in self.pending.values()],
            "count": self.count,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def prune(self, floor: int) -> None:
        """IDs handed over before ``floor`` can no longer be listed again: forget them."""
        self.handed = {k: ts for k, ts in self.handed.items() if ts >= floor}


def checkpoint_key(namespace: str, api_url: str, since: int) -> str:
    return hashlib.sha256(f"{namespace}|{api_url}|{since}".encode()).hexdigest()[:16]


def default_checkpoint_path(key: str) -> Path:
    return Path.cwd() / f"rapidly-backfill-{key}.json"


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
        clock: Callable[[], int] = _now_us,
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
                pending[event.id] = _Pending(event)
                # Cached now, without its direct count: its children are handed over before it
                # and their workers walk up through it.
                waiting.append((event, event.child_count, None))
        resolve: list[_Pending] = []
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

    def _resolve(self, waiting: _Pending) -> None:
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
    return api_calls.get()
