"""The process's Redis pool holds the worst case of its greenlets: two connections each."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from worker.runtime import redis_client

URL = "redis://127.0.0.1:6379/12"


def _reachable() -> bool:
    try:
        return bool(redis.Redis.from_url(URL, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


pytestmark = pytest.mark.skipif(not _reachable(), reason="Redis is not reachable at 127.0.0.1:6379")


def hold_two_and_run(client: Any, barrier: threading.Barrier, errors: list[BaseException]) -> None:
    """What a greenlet does while publishing: it holds the "sent" mark's connection and runs a
    command on another, at the same moment as every other greenlet."""
    pool = client.connection_pool
    try:
        held = pool.get_connection()
        try:
            barrier.wait(10)
            client.ping()
        finally:
            pool.release(held)
    except BaseException as exc:  # noqa: BLE001 - collected and asserted on
        errors.append(exc)


@pytest.mark.parametrize("concurrency", [10, 60])
def test_every_slot_can_hold_two_connections_at_once(concurrency: int) -> None:
    client = redis_client(URL, concurrency)
    barrier = threading.Barrier(concurrency)
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=hold_two_and_run, args=(client, barrier, errors))
        for _ in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    client.close()
    assert errors == []


def test_redis_pys_default_pool_is_what_ran_dry() -> None:
    """The defect this sizing fixes: redis-py's default pool stops at 100 connections."""
    default = redis.Redis.from_url(URL)
    assert default.connection_pool.max_connections == 100
    assert redis_client(URL, 100).connection_pool.max_connections >= 200
