"""EVENT_DEADLINE_SECONDS bounds an event's waiting on the API, not only its 429s."""

from __future__ import annotations

import time

import httpx
import pytest
from pydantic import SecretStr

from tests.unit.fakeapi import BASE, TOKEN, new_id
from worker.errors import EventDeadlineExceeded
from worker.rapidly import EventStore, RapidlyClient, RetryPolicy
from worker.rapidly._retry import event_deadline


@pytest.mark.parametrize(("status", "headers"), [(503, {}), (404, {}), (429, {"retry-after": "2"})])
def test_waits_stop_at_the_deadline(status: int, headers: dict[str, str]) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, headers=headers))
    client = RapidlyClient(BASE, SecretStr(TOKEN), transport=transport)
    policy = RetryPolicy(
        max_attempts=100,
        budget_seconds=3600,
        not_found_wait_seconds=3600,
        rate_limit_wait_seconds=3600,
        base_delay=0.5,
    )
    store = EventStore(client, policy=policy, max_events=10)
    started = time.monotonic()
    token = event_deadline.set(started + 1.5)
    try:
        with pytest.raises(EventDeadlineExceeded):
            store.event(new_id())
    finally:
        event_deadline.reset(token)
    # Every budget above is an hour: only the deadline ended the waiting, and before it passed.
    assert time.monotonic() - started < 1.6
