"""The dedupe store: the event ID, not the message, is the unit of work.

States of an event ID, per namespace (token):

    (none) --claim--> lease:<owner>   (``lease`` TTL: the owner is enriching and publishing;
                                       if it dies, the redelivered message waits this out)
    lease  --record written to the broker--> sent:<owner>   (long TTL)
    sent   --broker confirmed--> done                        (long TTL)
    lease/sent --publish failed while the owner is alive--> (none), the message is requeued

``sent`` and ``done`` both mean "published": a redelivered or re-sent message whose ID is in
either state is acknowledged without a second record. ``sent`` is written the moment the record's
bytes were handed to the broker, before the wait for its confirm, so a worker killed while
waiting leaves the ID marked and the redelivery publishes nothing. What is left:

- a kill between the write to the broker and the ``sent`` write to Redis (two consecutive
  syscalls, microseconds): the redelivery publishes a second record;
- a kill after ``sent`` where the broker had in fact not taken the message (it crashed too, or
  refused it): that record is lost. A *live* worker that sees its confirm fail clears its mark and
  requeues instead, so a broker failure alone loses nothing (it may duplicate).

With ``REDIS_URL`` the store is shared by the fleet; without it, by the process only (duplicates
across workers are then possible; records always carry ``message_id`` = event ID).

The TTL (default 7 days) covers what re-sends an ID: broker redelivery after a crash (seconds),
the webhook sender's retries (10 attempts, exponential from 2 s: about 34 minutes), and operators
replaying a backlog or dead letters after an incident (days). Each key is ~80 bytes: at the API's
budget of 500 events/min that is under 60 MB for 7 days.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from enum import Enum
from typing import Any, Protocol

import structlog

log = structlog.get_logger()

DONE = b"done"  # written only when the sent mark could not be
SENT_PREFIX = b"sent:"


_RELEASE_OWN = (
    "local v = redis.call('GET', KEYS[1]) "
    "if v == ARGV[1] or v == ARGV[2] then return redis.call('DEL', KEYS[1]) end return 0"
)


class Claim(Enum):
    ACQUIRED = "acquired"  # publish now, then call complete()
    DONE = "done"  # already published: acknowledge, publish nothing
    BUSY = "busy"  # another worker holds the lease: try again shortly


class DedupeStore(Protocol):
    def is_done(self, event_id: str) -> bool: ...
    def claim(self, event_id: str) -> Claim: ...
    def mark_sent(self, event_id: str) -> None: ...
    def complete(self, event_id: str) -> None: ...
    def release(self, event_id: str) -> None: ...


class LocalDedupeStore:
    """Per-process: bounded, so a long-running worker does not grow without end."""

    def __init__(self, *, ttl: float, lease: float, max_entries: int = 500_000):
        self._ttl = ttl
        self._lease = lease
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, event_id: str, now: float) -> str | None:
        entry = self._entries.get(event_id)
        if entry is None or entry[1] < now:
            return None
        return entry[0]

    def is_done(self, event_id: str) -> bool:
        with self._lock:
            return self._get(event_id, time.monotonic()) in ("done", "sent")

    def claim(self, event_id: str) -> Claim:
        with self._lock:
            now = time.monotonic()
            state = self._get(event_id, now)
            if state in ("done", "sent"):
                return Claim.DONE
            if state is not None:
                return Claim.BUSY
            self._entries[event_id] = ("lease", now + self._lease)
            return Claim.ACQUIRED

    def mark_sent(self, event_id: str) -> None:
        with self._lock:
            self._entries[event_id] = ("sent", time.monotonic() + self._ttl)

    def complete(self, event_id: str) -> None:
        with self._lock:
            self._entries[event_id] = ("done", time.monotonic() + self._ttl)
            self._entries.move_to_end(event_id)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def release(self, event_id: str) -> None:
        with self._lock:
            if self._get(event_id, time.monotonic()) != "done":
                self._entries.pop(event_id, None)


class RedisDedupeStore:
    def __init__(self, redis: Any, namespace: str, *, ttl: int, lease: int):
        self._redis = redis
        self._prefix = f"rapidly:{namespace}:done:"
        self._ttl = ttl
        self._lease = lease
        owner = uuid.uuid4().hex
        self._owner = f"lease:{owner}".encode()
        self._sent = SENT_PREFIX + owner.encode()

    def is_done(self, event_id: str) -> bool:
        return _published(self._redis.get(self._prefix + event_id))

    def claim(self, event_id: str) -> Claim:
        key = self._prefix + event_id
        if self._redis.set(key, self._owner, nx=True, ex=self._lease):
            return Claim.ACQUIRED
        value = self._redis.get(key)
        if _published(value):
            return Claim.DONE
        if value is None:  # the lease expired between our two calls: try once more
            return (
                Claim.ACQUIRED
                if self._redis.set(key, self._owner, nx=True, ex=self._lease)
                else Claim.BUSY
            )
        return Claim.BUSY

    def mark_sent(self, event_id: str) -> None:
        self._redis.set(self._prefix + event_id, self._sent, ex=self._ttl)

    def complete(self, event_id: str) -> None:
        self._redis.set(self._prefix + event_id, DONE, ex=self._ttl)

    def release(self, event_id: str) -> None:
        # Only our own lease or sent mark, never a done mark or another worker's lease.
        self._redis.eval(_RELEASE_OWN, 1, self._prefix + event_id, self._owner, self._sent)


def _published(value: bytes | None) -> bool:
    return value is not None and (value == DONE or value.startswith(SENT_PREFIX))
