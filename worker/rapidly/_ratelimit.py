"""Request budgets: wait for a slot instead of provoking a 429.

GCRA by reservation: each caller atomically takes the next free slot on a timeline spaced by
``1/rate`` and sleeps until it. ``LocalRateLimiter`` keeps the timeline in the process; with
``REDIS_URL`` set, ``RedisRateLimiter`` keeps it in one Redis key per token, so every worker sharing
the token shares the budget. A 429 that still arrives pushes the timeline past its ``Retry-After``
for everyone (``penalize``).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from worker._gevent import wait_for
from worker.errors import NoLongerNeeded
from worker.settings import RateLimit

T = TypeVar("T")

# A slot granted by ``DispatchingLimiter.slot`` to the request made inside it in this context.
_granted: contextvars.ContextVar[bool] = contextvars.ContextVar("slot_granted", default=False)

# A small burst absorbs scheduling jitter without letting a fleet exceed the budget in any second.
DEFAULT_BURST = 1.0


class RateLimiter(Protocol):
    def acquire(self) -> float:
        """Block until a request may be sent; return the seconds waited."""

    def penalize(self, seconds: float) -> None:
        """No request anywhere before ``seconds`` from now (a 429's Retry-After)."""


class LocalRateLimiter:
    def __init__(self, limit: RateLimit, *, burst: float = DEFAULT_BURST):
        self._interval = 1.0 / limit.per_second
        self._tolerance = max(0.0, burst - 1.0) * self._interval
        self._next = 0.0
        self._lock = threading.Lock()

    def _reserve(self) -> float:
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now - self._tolerance)
            self._next = slot + self._interval
            return max(0.0, slot - now)

    def acquire(self) -> float:
        wait = self._reserve()
        if wait > 0:
            time.sleep(wait)
        return wait

    def penalize(self, seconds: float) -> None:
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


# KEYS[1] = the timeline's key. ARGV = interval, tolerance, penalty (0 for a plain acquire).
# Times are Redis's own clock (TIME) so that workers' clocks never matter.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local penalty = tonumber(ARGV[3])
local nxt = tonumber(redis.call('GET', KEYS[1]) or '0')
if penalty > 0 then
  nxt = math.max(nxt, now + penalty)
  redis.call('SET', KEYS[1], tostring(nxt), 'PX', math.ceil((nxt - now) * 1000) + 60000)
  return '0'
end
local slot = math.max(nxt, now - tolerance)
nxt = slot + interval
redis.call('SET', KEYS[1], tostring(nxt), 'PX', math.ceil((nxt - now) * 1000) + 60000)
return tostring(math.max(0, slot - now))
"""


class RedisRateLimiter:
    def __init__(self, redis: Any, key: str, limit: RateLimit, *, burst: float = DEFAULT_BURST):
        self._redis = redis
        self._key = key
        self._interval = 1.0 / limit.per_second
        self._tolerance = max(0.0, burst - 1.0) * self._interval
        self._script = redis.register_script(_RESERVE)

    def acquire(self) -> float:
        wait = float(self._script(keys=[self._key], args=[self._interval, self._tolerance, 0]))
        if wait > 0:
            time.sleep(wait)
        return wait

    def penalize(self, seconds: float) -> None:
        self._script(keys=[self._key], args=[self._interval, self._tolerance, seconds])


# A request that waited less than this cannot have been answered meanwhile: the store awaits the
# list calls in flight before it asks for a GET, and a list call started later takes at least an
# API round trip. Not asking then spares the hot path a cache lookup (a Redis GET) per call.
RECHECK_AFTER_SECONDS = 0.005
# A slot the budget held back this long means the budget, not the API, bounds the pace;
# ``throttled`` stays true this long after the last such wait. The budget's own wait, not the
# caller's: a burst of callers queues behind the one pump for a few milliseconds each (a Redis
# round trip per slot) with no budget in sight, and that is no reason to stop sharing calls.
THROTTLED_BUDGET_WAIT_SECONDS = 0.01
THROTTLED_FOR_SECONDS = 5.0


class _Waiter:
    __slots__ = ("error", "granted", "queued_at", "ready", "still_needed")

    def __init__(self, still_needed: Callable[[], bool] | None) -> None:
        self.still_needed = still_needed
        self.queued_at = time.monotonic()
        self.ready = threading.Event()
        self.granted = False
        self.error: BaseException | None = None

    def needs_slot(self) -> bool:
        if self.still_needed is None or time.monotonic() - self.queued_at < RECHECK_AFTER_SECONDS:
            return True
        try:
            return bool(self.still_needed())
        except Exception:  # noqa: BLE001 - when in doubt, send the request
            return True


class DispatchingLimiter:
    """Hands out slots at the moment they come due, to the first waiter that still needs one.

    With every caller reserving its own slot (plain GCRA), a hundred greenlets that miss the
    cache under a tight budget each hold a slot seconds ahead, and each sends its request when
    the slot comes, even if a list call that landed meanwhile (a root window, a children listing)
    already brought the answer: the calls per event under budget were three times the
    unthrottled ones. Here the process keeps its waiters in a local queue and one pump holds at
    most one reservation on the (fleet-wide) timeline: when the slot comes due the pump asks the
    waiters in order whether they still need it (``still_needed``, a cache lookup) and gives it
    to the first that does; the others return without a call. List calls go first: they bring
    whole events with counts and answer many GETs. A slot nobody needs any more is simply
    passed on to the next waiter, so the budget is neither exceeded nor left unused while there
    is demand. ``observe`` gets each caller's wait, queue included.
    """

    def __init__(
        self, inner: RateLimiter, *, observe: Callable[[float], None] | None = None
    ) -> None:
        self._inner = inner
        self._observe = observe
        self._lock = threading.Lock()
        self._lists: deque[_Waiter] = deque()
        self._gets: deque[_Waiter] = deque()
        self._pumping = False
        self._throttled_at = -THROTTLED_FOR_SECONDS

    @property
    def throttled(self) -> bool:
        """Whether the budget held slots back lately: requests then queue here, where a slot
        goes only to a request the cache has not answered meanwhile."""
        return time.monotonic() - self._throttled_at < THROTTLED_FOR_SECONDS

    def acquire(
        self, still_needed: Callable[[], bool] | None = None, *, priority: bool = False
    ) -> float:
        """Block until this caller may send; NoLongerNeeded if the cache answered meanwhile.
        Inside ``slot`` the slot asked for there is taken at once, without queueing again."""
        if _granted.get():
            _granted.set(False)  # one slot, one request
            return 0.0
        waiter = _Waiter(still_needed)
        with self._lock:
            (self._lists if priority else self._gets).append(waiter)
            start = not self._pumping
            self._pumping = True
        if start:
            threading.Thread(target=self._pump, daemon=True, name="ratelimit-pump").start()
        wait_for(waiter.ready)
        waited = time.monotonic() - waiter.queued_at
        if self._observe is not None:
            self._observe(waited)
        if waiter.error is not None:
            raise waiter.error
        if not waiter.granted:
            raise NoLongerNeeded
        return waited

    @contextmanager
    def slot(self, still_needed: Callable[[], bool], *, priority: bool = False) -> Iterator[None]:
        """A slot for the one request made inside, asked for now with ``still_needed`` (asked
        again when the slot comes due; NoLongerNeeded instead of a slot if it says False)."""
        self.acquire(still_needed, priority=priority)
        token = _granted.set(True)
        try:
            yield
        finally:
            _granted.reset(token)

    def penalize(self, seconds: float) -> None:
        self._inner.penalize(seconds)

    def _has_waiters(self) -> bool:
        """False ends the pump; the next acquire starts another."""
        with self._lock:
            self._pumping = bool(self._lists or self._gets)
            return self._pumping

    def _take(self) -> _Waiter | None:
        with self._lock:
            queue = self._lists or self._gets
            return queue.popleft() if queue else None

    def _pump(self) -> None:
        while self._has_waiters():
            try:
                if self._inner.acquire() >= THROTTLED_BUDGET_WAIT_SECONDS:
                    self._throttled_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the first waiter gets it, the pump lives on
                if (waiter := self._take()) is not None:
                    waiter.error = exc
                    waiter.ready.set()
                continue
            # The slot is due now: the first waiter that still needs it takes it; the ones
            # before it were answered from the cache and return without a call.
            while (waiter := self._take()) is not None:
                waiter.granted = waiter.needs_slot()
                waiter.ready.set()
                if waiter.granted:
                    break


def when_needed(
    limiter: object,
    still_needed: Callable[[], bool] | None,
    call: Callable[[], T],
    *,
    priority: bool = False,
) -> T:
    """``call`` (one request through a client sharing ``limiter``) once a slot is granted and
    ``still_needed`` still says so when it comes due: NoLongerNeeded otherwise (the cache
    answered while it waited). A limiter that hands out slots in turn (or none) leaves the
    call as it is."""
    if still_needed is None or not isinstance(limiter, DispatchingLimiter):
        return call()
    with limiter.slot(still_needed, priority=priority):
        return call()
