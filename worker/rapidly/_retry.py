"""Retries of the store's API calls, and the unit of work's deadline.

429 waits its Retry-After (and pushes the whole fleet's limiter back) without counting as an
attempt; 5xx/timeouts/garbage back off exponentially with full jitter within an attempt and time
budget; 404 is retried for a bounded wait (replica lag). Each call sent is counted in the unit of
work's ``ApiUsage``.
"""

from __future__ import annotations

import contextvars
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import structlog

from worker.errors import (
    ApiUnavailable,
    EventDeadlineExceeded,
    EventNotFound,
    EventNotYetVisible,
    NoLongerNeeded,
    RateLimited,
    RateLimitWaitTooLong,
    RetriesExhausted,
)
from worker.rapidly._ratelimit import RateLimiter
from worker.rapidly._usage import current_usage

log = structlog.get_logger()

T = TypeVar("T")

# When the unit of work running in this context must be over (time.monotonic()); None: no bound.
# A retry, backoff or replica-lag wait that would end past it is not started
# (EventDeadlineExceeded): the message goes back to the queue instead of overstaying.
event_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "event_deadline", default=None
)


def check_deadline(delay: float, what: str) -> None:
    deadline = event_deadline.get()
    if deadline is not None and time.monotonic() + delay > deadline:
        raise EventDeadlineExceeded(what)


def past_deadline(delay: float) -> bool:
    """Whether a wait of ``delay`` would end past the unit of work's deadline."""
    deadline = event_deadline.get()
    return deadline is not None and time.monotonic() + delay > deadline


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


class Retry(Protocol):
    """A call made with the store's retries (``EventStore._retrying``)."""

    def __call__(
        self,
        call: Callable[[], T],
        *,
        not_found_wait: float | None = ...,
        event_id: str | None = ...,
    ) -> T: ...


def retrying(
    policy: RetryPolicy,
    limiter: RateLimiter | None,
    call: Callable[[], T],
    *,
    not_found_wait: float | None = None,
    event_id: str | None = None,
) -> T:
    # Each kind of failure has its own clock, so that one never eats another's allowance:
    # the replica-lag window starts at the first 404, the error budget at the first error,
    # and a 429's wait counts against neither (it is never the event's failure).
    failures = not_found = 0
    rate_limited_for = lag_waited = error_waited = 0.0
    usage = current_usage()
    while True:
        usage.calls += 1
        try:
            return call()
        except NoLongerNeeded:
            usage.calls -= 1  # not sent
            raise
        except RateLimited as exc:
            if limiter is not None:
                limiter.penalize(exc.retry_after)
            rate_limited_for += exc.retry_after
            if rate_limited_for > policy.rate_limit_wait_seconds:
                raise RateLimitWaitTooLong(rate_limited_for) from exc
            log.warning("api.rate_limited", retry_after=exc.retry_after, request_id=exc.request_id)
            check_deadline(exc.retry_after, "rate limited")
            policy.sleep(exc.retry_after + random.uniform(0, 0.1))  # noqa: S311
        except EventNotYetVisible:
            not_found += 1
            if not_found_wait is None or lag_waited >= not_found_wait:
                raise EventNotFound(
                    event_id or "?", waited=lag_waited, attempts=not_found
                ) from None
            # The last attempt lands at the end of the window, not before it.
            delay = min(policy.max_delay, 0.25 * 2 ** (not_found - 1), not_found_wait - lag_waited)
            check_deadline(delay, "event not visible yet")
            policy.sleep(delay)
            lag_waited += delay
        except ApiUnavailable as exc:
            failures += 1
            delay = policy.backoff(failures)
            if failures >= policy.max_attempts or error_waited + delay > policy.budget_seconds:
                raise RetriesExhausted(exc, attempts=failures, elapsed=error_waited) from None
            log.info("api.retry", error=str(exc), attempt=failures, delay=round(delay, 3))
            check_deadline(delay, "API unavailable")
            policy.sleep(delay)
            error_waited += delay
