"""Request budgets: wait for a slot instead of provoking a 429.

GCRA by reservation: each caller atomically takes the next free slot on a timeline spaced by
``1/rate`` and sleeps until it. ``LocalRateLimiter`` keeps the timeline in the process; with
``REDIS_URL`` set, ``RedisRateLimiter`` keeps it in one Redis key per token, so every worker sharing
the token shares the budget. A 429 that still arrives pushes the timeline past its ``Retry-After``
for everyone (``penalize``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from worker.settings import RateLimit

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
