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
waiting leaves the ID marked and the redelivery publishes nothing. Records are at least once
(CONTRACT.md section 3): only the broker's confirm (basic.ack) makes a record published. A live
owner whose publish was nacked, whose channel the broker closed (AccessRefused, NotFound,
PreconditionFailed), whose connection dropped or whose confirm never came releases the ``sent``
mark and requeues the input, and the redelivery publishes again. Duplicates that remain, each
carrying ``message_id`` = event ID for consumers to drop:

- the broker routed a record whose confirm was lost (connection dropped while waiting);
- a kill between the write to the broker and the ``sent`` write to Redis (two consecutive
  syscalls, microseconds): the redelivery publishes a second record.

And the one case where a kill can cost a record: a worker killed after its bytes reached its own
socket but before the broker read them keeps the ``sent`` mark, so the redelivery publishes
nothing (a kill mid-write is rare; the alternative, republishing after every kill, duplicates every
record in flight).

Before publishing, the claim's lease is confirmed (refreshed) in the store: a lease that lapsed
during a long enrichment and was taken by another claim, or a store that is unreachable, stops the
publish and the message goes back to the queue. The sent mark is written on a Redis connection
taken before the broker write, so no other greenlet runs between the two.

With ``REDIS_URL`` the store is shared by the fleet; without it, by the process only (duplicates
across workers are then possible; records always carry ``message_id`` = event ID).

The TTL (default 7 days) covers what re-sends an ID: broker redelivery after a crash (seconds),
the webhook sender's retries (10 attempts, exponential from 2 s: about 34 minutes), and operators
replaying a backlog or dead letters after an incident (days). Each key is ~80 bytes: at the API's
budget of 500 events/min that is under 60 MB for 7 days.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
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
# Before publishing: the lease is still this claim's (refresh it), or it lapsed unclaimed (take
# it again); 0 when another claim holds it or the ID was published meanwhile.
_CONFIRM_OWN = (
    "local v = redis.call('GET', KEYS[1]) "
    "if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end "
    "if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end return 0"
)


class Claim(Enum):
    DONE = "done"  # already published: acknowledge, publish nothing
    BUSY = "busy"  # another claim holds the lease: try again shortly


def _new_token() -> bytes:
    return os.urandom(16).hex().encode()  # a uuid4's entropy, without building a UUID


@dataclass(frozen=True, slots=True)
class Lease:
    """One claim on one key. The token is unique per claim, not per process: two deliveries
    of one ID inside one worker (a redelivery after a connection loss) never share a lease."""

    key: str
    token: bytes = field(default_factory=_new_token)
    claimed_at: float = field(default_factory=time.monotonic)

    @property
    def lease_value(self) -> bytes:
        return b"lease:" + self.token

    @property
    def sent_value(self) -> bytes:
        return SENT_PREFIX + self.token


class DedupeStore(Protocol):
    def is_done(self, key: str) -> bool: ...
    def claim(self, key: str) -> Lease | Claim: ...
    def confirm(self, lease: Lease) -> bool: ...
    def mark_sent(self, lease: Lease) -> None: ...
    def sent_marks(self) -> AbstractContextManager[Callable[[Sequence[Lease]], list[bool]]]: ...
    def complete(self, lease: Lease) -> None: ...
    def release(self, lease: Lease) -> None: ...


class LocalDedupeStore:
    """Per-process: bounded, so a long-running worker does not grow without end."""

    def __init__(self, *, ttl: float, lease: float, max_entries: int = 500_000):
        self._ttl = ttl
        self._lease = lease
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, key: str, now: float) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] < now:
            return None
        return entry[0]

    def _set(self, key: str, value: bytes, seconds: float) -> None:
        self._entries[key] = (value, time.monotonic() + seconds)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def is_done(self, key: str) -> bool:
        with self._lock:
            return _published(self._get(key, time.monotonic()))

    def claim(self, key: str) -> Lease | Claim:
        with self._lock:
            value = self._get(key, time.monotonic())
            if _published(value):
                return Claim.DONE
            if value is not None:
                return Claim.BUSY
            lease = Lease(key)
            self._set(key, lease.lease_value, self._lease)
            return lease

    def confirm(self, lease: Lease) -> bool:
        with self._lock:
            value = self._get(lease.key, time.monotonic())
            if value not in (None, lease.lease_value):
                return False
            self._set(lease.key, lease.lease_value, self._lease)
            return True

    def mark_sent(self, lease: Lease) -> None:
        with self._lock:
            self._set(lease.key, lease.sent_value, self._ttl)

    @contextmanager
    def sent_marks(self) -> Iterator[Callable[[Sequence[Lease]], list[bool]]]:
        def mark(leases: Sequence[Lease]) -> list[bool]:
            landed = []
            for lease in leases:
                try:
                    self.mark_sent(lease)
                except Exception as exc:  # noqa: BLE001 - reported; the caller's done mark decides
                    _report_unmarked([lease], exc)
                    landed.append(False)
                else:
                    landed.append(True)
            return landed

        yield mark

    def complete(self, lease: Lease) -> None:
        with self._lock:
            self._set(lease.key, DONE, self._ttl)

    def release(self, lease: Lease) -> None:
        with self._lock:
            if self._get(lease.key, time.monotonic()) in (lease.lease_value, lease.sent_value):
                self._entries.pop(lease.key, None)


# A lease younger than this share of its time cannot have lapsed, so ``confirm`` needs no round
# trip: nearly every event is enriched within milliseconds of its claim, and the confirm was one
# of its four Redis round trips. Only Redis losing the key in that moment (a restart) could make
# it wrong, and that costs at most a duplicate: the sent mark is written as before, the record
# carries its message_id.
FRESH_LEASE_SHARE = 0.25


class RedisDedupeStore:
    def __init__(
        self,
        redis: Any,
        namespace: str,
        *,
        ttl: int,
        lease: int,
        fresh_share: float = FRESH_LEASE_SHARE,
    ):
        self._redis = redis
        self._prefix = f"rapidly:{namespace}:done:"
        self._ttl = ttl
        self._lease = lease
        self._fresh_seconds = lease * fresh_share
        # EVALSHA with the script's digest (loaded again by redis-py after a Redis restart)
        # instead of sending the script's text with every confirm.
        self._confirm_own = redis.register_script(_CONFIRM_OWN)
        self._release_own = redis.register_script(_RELEASE_OWN)

    def is_done(self, key: str) -> bool:
        return _published(self._redis.get(self._prefix + key))

    @property
    def redis(self) -> Any:
        return self._redis

    def claim(self, key: str) -> Lease | Claim:
        lease = Lease(key)
        full = self._prefix + key
        if self._redis.set(full, lease.lease_value, nx=True, ex=self._lease):
            return lease
        return self._claim_refused(lease, full)

    def claim_reading(self, key: str, read: str) -> tuple[Lease | Claim, bytes | None]:
        """``claim`` and a GET of ``read`` (the event's cached copy, which the enrichment reads
        next) in one round trip: the hot path's first two reads become one."""
        lease = Lease(key)
        full = self._prefix + key
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(full, lease.lease_value, nx=True, ex=self._lease)
        pipe.get(read)
        taken, value = pipe.execute()
        return (lease if taken else self._claim_refused(lease, full)), value

    def _claim_refused(self, lease: Lease, full: str) -> Lease | Claim:
        value = self._redis.get(full)
        if _published(value):
            return Claim.DONE
        if value is None and self._redis.set(full, lease.lease_value, nx=True, ex=self._lease):
            return lease  # the lease lapsed between our two calls
        return Claim.BUSY

    def confirm(self, lease: Lease) -> bool:
        if time.monotonic() - lease.claimed_at < self._fresh_seconds:
            return True
        return bool(
            self._confirm_own(
                keys=[self._prefix + lease.key], args=[lease.lease_value, self._lease * 1000]
            )
        )

    def mark_sent(self, lease: Lease) -> None:
        self._redis.set(self._prefix + lease.key, lease.sent_value, ex=self._ttl)

    @contextmanager
    def sent_marks(self) -> Iterator[Callable[[Sequence[Lease]], list[bool]]]:
        """A connection taken from the pool *before* the records go to the broker, so that their
        marks are written right after them, all in one write, with no switch to another greenlet
        in between (taking a pooled connection polls its socket, which under gevent yields: the
        fault suite saw duplicates from kills in that gap). ``mark(leases)`` says which landed;
        a failure is logged (``dedupe.mark_sent_failed``) and left to the caller's done mark."""
        pool = self._redis.connection_pool
        connection = pool.get_connection()
        broken = False

        def mark(leases: Sequence[Lease]) -> list[bool]:
            nonlocal broken
            if not leases:
                return []
            commands = [
                ("SET", self._prefix + lease.key, lease.sent_value, "EX", self._ttl)
                for lease in leases
            ]
            try:
                connection.send_packed_command(
                    connection.pack_commands(commands), check_health=False
                )
                replies = [connection.read_response() for _ in commands]
            except Exception as exc:  # noqa: BLE001 - reported per lease, the caller decides
                broken = True
                _report_unmarked(leases, exc)
                return [False] * len(leases)
            return [reply is True or reply in (b"OK", "OK") for reply in replies]

        try:
            yield mark
        finally:
            if broken:
                connection.disconnect()
                pool.release(connection)
            else:
                # Nothing sent, or every reply read: the next taker may skip the poll for data
                # left waiting on it (``LeanPool``); a plain pool checks as before.
                getattr(pool, "release_in_step", pool.release)(connection)

    def complete(self, lease: Lease) -> None:
        self._redis.set(self._prefix + lease.key, DONE, ex=self._ttl)

    def release(self, lease: Lease) -> None:
        # Only this claim's lease or sent mark, never a done mark or another claim's lease.
        self._release_own(
            keys=[self._prefix + lease.key], args=[lease.lease_value, lease.sent_value]
        )


def _report_unmarked(leases: Sequence[Lease], error: Exception) -> None:
    for lease in leases:
        log.warning("dedupe.mark_sent_failed", event_id=lease.key, error=type(error).__name__)


def _published(value: bytes | None) -> bool:
    return value is not None and (value == DONE or value.startswith(SENT_PREFIX))


class RedeliveryCounter:
    """How many times a task message came back without an outcome (a crash, a kill, the worker
    lost, an OOM while enriching it). Celery's ``Reject(requeue=True)`` returns the message
    unchanged, so the count cannot ride in a header: it lives beside the dedupe marks, per task
    id (and replay). Requeues for the deployment's reasons (broker down, token rejected,
    downstream refusing) take their count back (``uncount``); a published or dead-lettered
    message ``forget``s it. Only redeliveries are counted: a first delivery costs no Redis call."""

    def __init__(self, redis: Any = None, namespace: str = "", *, ttl: int = 7 * 86_400):
        self._redis = redis
        self._prefix = f"rapidly:{namespace}:redeliveries:"
        self._ttl = ttl
        self._local: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def count(self, key: str) -> int:
        if self._redis is not None:
            pipe = self._redis.pipeline(transaction=False)
            pipe.incr(self._prefix + key)
            pipe.expire(self._prefix + key, self._ttl)
            return int(pipe.execute()[0])
        with self._lock:
            value = self._local.get(key, 0) + 1
            self._local[key] = value
            self._local.move_to_end(key)
            while len(self._local) > 100_000:
                self._local.popitem(last=False)
            return value

    def uncount(self, key: str) -> None:
        if self._redis is not None:
            self._redis.decr(self._prefix + key)
            return
        with self._lock:
            if key in self._local:
                self._local[key] = max(0, self._local[key] - 1)

    def forget(self, key: str) -> None:
        if self._redis is not None:
            self._redis.delete(self._prefix + key)
            return
        with self._lock:
            self._local.pop(key, None)
