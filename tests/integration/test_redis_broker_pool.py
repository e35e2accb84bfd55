"""The Redis broker's connection pool holds an ack from every task greenlet at once.

kombu's Redis transport acks each message on a connection of its channel's pool, and that pool
raises instead of waiting when it is full. Under the gevent pool each task greenlet acks its own
message, so with kombu's default of 10 a burst of finishing tasks fails its acks, the consumer
restarts, and a message caught between BRPOP and the unacked hash is lost (seen in the
end-to-end test on Redis, one run in six here).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from kombu import Connection

from tests.integration.conftest import require
from tests.integration.harness import REDIS_BROKER_URL
from worker.app import broker_transport_options
from worker.settings import load_settings


def hold(channel: Any, count: int) -> None:
    """Take ``count`` connections of the channel's pool at once, as concurrent acks do."""
    pool = channel.pool
    held = []
    try:
        for _ in range(count):
            held.append(pool.get_connection())
    finally:
        for connection in held:
            pool.release(connection)


def test_every_task_greenlet_can_ack_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    require("redis")
    monkeypatch.setenv("BROKER_URL", REDIS_BROKER_URL)
    monkeypatch.setenv("WORKER_CONCURRENCY", "150")
    settings = load_settings(require_token=False)
    options = broker_transport_options(settings)
    with Connection(REDIS_BROKER_URL, transport_options=options) as conn:
        # every task greenlet acking, and one more for the consumer's own commands
        hold(conn.default_channel, settings.worker_concurrency + 1)


def test_kombus_default_pool_fails_the_same_burst() -> None:
    """The check above can fail: without the option the same burst runs out of connections."""
    require("redis")
    with Connection(REDIS_BROKER_URL) as conn, pytest.raises(redis.exceptions.ConnectionError):
        hold(conn.default_channel, 51)
