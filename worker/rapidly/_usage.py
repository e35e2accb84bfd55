"""API calls made on behalf of one unit of work (the summary line's ``api_calls``).

The service opens ``count_calls()`` around each event it processes; every call the store sends
inside it (retries included, requests the cache answered while they queued excluded) is counted
there. Contexts are per thread/greenlet, so concurrent events never share a count.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(slots=True)
class ApiUsage:
    """The calls counted so far in one unit of work."""

    calls: int = 0


# The unit of work open in this context; calls made outside any are counted in ``_loose``.
_unit: contextvars.ContextVar[ApiUsage | None] = contextvars.ContextVar("api_unit", default=None)
_loose: contextvars.ContextVar[ApiUsage | None] = contextvars.ContextVar("api_loose", default=None)


@contextmanager
def count_calls() -> Iterator[ApiUsage]:
    """The count of the unit of work run inside it. Inside one already open (a webhook's work
    finds its event, then processes it like any other), the open one goes on counting."""
    usage = _unit.get()
    if usage is not None:
        yield usage
        return
    usage = ApiUsage()
    token = _unit.set(usage)
    try:
        yield usage
    finally:
        _unit.reset(token)


def current_usage() -> ApiUsage:
    """Where a call made here is counted: the open unit of work, else this context's own
    count of calls made outside any (``rapidly-worker backfill`` reports it)."""
    usage = _unit.get()
    if usage is None:
        usage = _loose.get()
        if usage is None:
            usage = ApiUsage()
            _loose.set(usage)
    return usage


def api_calls_made() -> int:
    """Calls counted so far where a call made here would be counted (``current_usage``)."""
    return current_usage().calls
