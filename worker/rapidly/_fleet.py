"""Calls in flight shared by the fleet through Redis.

A process that finds a list call or a parent's GET in flight elsewhere waits ``FLIGHT_SECONDS``
at most for its answer to land in the cache (one call takes a round trip; a holder that died only
costs this wait), polling at growing intervals, then makes the call itself.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import structlog

from worker.rapidly._cache import EventCache
from worker.rapidly._ratelimit import RateLimiter
from worker.rapidly._retry import past_deadline

log = structlog.get_logger()

T = TypeVar("T")

FLIGHT_SECONDS = 2.0
FLIGHT_POLL_FIRST_SECONDS = 0.005
FLIGHT_POLL_MAX_SECONDS = 0.05
# What an ancestor is doing elsewhere when its listing may tell a descendant's counts.
_COUNTED_BY = ("subtree", "counting")
# Whether this greenlet is inside a listing the fleet sees already (``listing``).
_listing: contextvars.ContextVar[bool] = contextvars.ContextVar("fleet_listing", default=False)
_LAND_OWN = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


class FleetFlights:
    def __init__(
        self,
        cache: EventCache,
        limiter: RateLimiter | None,
        sleep: Callable[[float], None],
        redis_namespace: str,
    ) -> None:
        self._cache = cache
        self._limiter = limiter
        self._sleep = sleep
        self._prefix = f"rapidly:{redis_namespace}:flight:"
        self._lists = f"rapidly:{redis_namespace}:lists"
        self._land_own: Any = None

    def share(
        self,
        key: str,
        work: Callable[[], T],
        answer: Callable[[], T | None],
        *,
        seconds: float = FLIGHT_SECONDS,
    ) -> T:
        """``work`` (an API call that caches its answer), unless another process sharing the
        Redis is making the same call: then its answer is waited for and taken from the cache
        (``answer``; None: not there, the call is made here). Without Redis, or when it fails,
        the call is simply made: sharing only ever saves calls. ``seconds``: how long the call
        may take (its own retries included), so how long the others wait for it.

        Not while the rate limit holds requests back (``throttled``): a call then waits in the
        limiter's queue, which drops it once the cache answers it, and does better than a
        bounded wait here (measured: 0.32 calls per event with flights under a 30/s budget,
        0.28 without)."""
        redis = self._cache.redis
        if not self._cache.redis_usable() or getattr(self._limiter, "throttled", False):
            return work()
        flight = self._prefix + key
        token = os.urandom(16).hex()
        try:
            taken = redis.set(flight, token, nx=True, px=int(seconds * 1000))
        except Exception as exc:  # noqa: BLE001 - not shared this time
            log.debug("cache.flight_unavailable", error=type(exc).__name__)
            return work()
        if taken:
            try:
                return work()
            finally:
                self._land(flight, token)
        self._wait_gone([flight], seconds)
        found = answer()
        return found if found is not None else work()

    @contextmanager
    def counting(self, event_id: str, ancestors: list[str]) -> Iterator[bool]:
        """While ``event_id``'s counts are resolved here, the fleet sees it (``counting:<id>``,
        ``FLIGHT_SECONDS`` at most). First, in the same round trip, it waits as ``share`` does
        while any of ``ancestors`` is being counted or has its subtree listed in another
        process: the listing that follows tells this event's counts too. Yields whether it
        waited (their answers are then in the shared cache).

        Checked before it is marked, in one pipeline: of two events that each have the other
        among their ancestors (a cycle), at most one sees the other, so no two wait for each
        other. Without Redis, or while the limit throttles: no wait, no mark."""
        if not self._sharing():
            yield False
            return
        mine, token = self._prefix + "counting:" + event_id, os.urandom(16).hex()
        theirs = [self._prefix + f"{kind}:{a}" for a in ancestors for kind in _COUNTED_BY]
        try:
            pipe = self._cache.redis.pipeline(transaction=False)
            if theirs:
                pipe.exists(*theirs)
            pipe.set(mine, token, nx=True, px=int(FLIGHT_SECONDS * 1000))
            *busy, held = pipe.execute()
        except Exception as exc:  # noqa: BLE001 - not shared this time
            log.debug("cache.flight_unavailable", error=type(exc).__name__)
            busy, held = [], False
        try:
            waited = bool(busy and busy[0])
            if waited:
                self._wait_gone(theirs)
            yield waited
        finally:
            if held:
                self._land(mine, token)

    @contextmanager
    def listing(self) -> Iterator[None]:
        """Around a list call: the fleet sees it in flight (``await_lists``) until it is over.
        A sorted set of tokens scored by when they expire, so a holder that died is forgotten.
        Once per greenlet: a listing inside another (an event's children counted through its
        subtree listing) is already seen, and each registration costs two round trips."""
        if _listing.get():
            yield
            return
        entered = _listing.set(True)
        try:
            with self._registered():
                yield
        finally:
            _listing.reset(entered)

    @contextmanager
    def _registered(self) -> Iterator[None]:
        token = os.urandom(16).hex() if self._sharing() else None
        if token is not None:
            now_ms = int(time.time() * 1000)
            try:
                pipe = self._cache.redis.pipeline(transaction=False)
                pipe.zremrangebyscore(self._lists, "-inf", now_ms)
                pipe.zadd(self._lists, {token: now_ms + int(FLIGHT_SECONDS * 1000)})
                pipe.pexpire(self._lists, int(FLIGHT_SECONDS * 1000))
                pipe.execute()
            except Exception as exc:  # noqa: BLE001 - not shared this time
                log.debug("cache.flight_unavailable", error=type(exc).__name__)
                token = None
        try:
            yield
        finally:
            if token is not None:
                try:
                    self._cache.redis.zrem(self._lists, token)
                except Exception as exc:  # noqa: BLE001 - it expires by itself
                    log.debug("cache.flight_unavailable", error=type(exc).__name__)

    def await_lists(self) -> bool:
        """Wait, as ``share`` does, for the list calls in flight in the fleet (any process's
        window or listing may bring the event about to be fetched); True if there were."""
        if not self._sharing():
            return False
        redis = self._cache.redis
        try:
            tokens = redis.zrangebyscore(self._lists, int(time.time() * 1000), "+inf")
        except Exception as exc:  # noqa: BLE001 - not shared this time
            log.debug("cache.flight_unavailable", error=type(exc).__name__)
            return False
        if not tokens:
            return False
        self._poll(lambda: all(score is None for score in redis.zmscore(self._lists, tokens)))
        return True

    def _sharing(self) -> bool:
        return self._cache.redis_usable() and not getattr(self._limiter, "throttled", False)

    def _wait_gone(self, flights: list[str], seconds: float = FLIGHT_SECONDS) -> None:
        """Poll until none of ``flights`` is held any more, ``seconds`` at most."""
        redis = self._cache.redis
        self._poll(lambda: not redis.exists(*flights), seconds)

    def _poll(self, over: Callable[[], bool], seconds: float = FLIGHT_SECONDS) -> None:
        """Sleep at growing intervals until ``over()`` (a Redis read), ``seconds`` at most,
        never past the event's deadline; a failing read ends the wait."""
        waited, delay = 0.0, FLIGHT_POLL_FIRST_SECONDS
        while waited < seconds:
            if past_deadline(delay):
                break
            self._sleep(delay)
            waited += delay
            delay = min(FLIGHT_POLL_MAX_SECONDS, delay * 2)
            try:
                if over():
                    break
            except Exception:  # noqa: BLE001 - not shared this time
                break

    def _land(self, flight: str, token: str) -> None:
        """The call is over and its answer cached: waiters stop waiting (only our own key)."""
        try:
            if self._land_own is None:
                self._land_own = self._cache.redis.register_script(_LAND_OWN)
            self._land_own(keys=[flight], args=[token])
        except Exception as exc:  # noqa: BLE001 - the key expires by itself
            log.debug("cache.flight_unavailable", error=type(exc).__name__)
