"""The process's Redis pool holds the worst case of its greenlets: two connections each."""

from __future__ import annotations

import threading
import time
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


# --- the short command path (worker._redis): redis-py's answers, fewer steps


@pytest.fixture
def lean() -> Any:
    client = redis_client(URL, 4)
    client.delete("lean:a", "lean:z")
    yield client
    client.delete("lean:a", "lean:z")
    client.close()


def test_commands_answer_as_redis_py_does(lean: Any) -> None:
    assert lean.set("lean:a", b"v", nx=True, ex=10) is True
    assert lean.set("lean:a", b"w", nx=True, ex=10) is None
    assert lean.get("lean:a") == b"v"
    assert lean.exists("lean:a", "lean:none") == 1
    lean.zadd("lean:z", {"t": 5})
    assert lean.zmscore("lean:z", ["t", "u"]) == [5.0, None]
    with pytest.raises(redis.ResponseError):
        lean.incr("lean:a")  # not an integer: the server's error, and the connection goes on
    assert lean.get("lean:a") == b"v"


def test_scripts_load_again_after_a_flush(lean: Any) -> None:
    script = lean.register_script("return redis.call('GET', KEYS[1])")
    lean.set("lean:a", b"v")
    assert script(keys=["lean:a"]) == b"v"
    lean.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
    assert script(keys=["lean:a"]) == b"v"


def test_pipelines_answer_in_order_and_report_errors(lean: Any) -> None:
    pipe = lean.pipeline(transaction=False)
    pipe.set("lean:a", b"v", nx=True, ex=10)
    pipe.get("lean:a")
    pipe.get("lean:none")
    assert pipe.execute() == [True, b"v", None]
    pipe = lean.pipeline(transaction=False)
    pipe.incr("lean:a")
    pipe.get("lean:a")
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    pipe = lean.pipeline(transaction=False)
    pipe.incr("lean:a")
    pipe.get("lean:a")
    first, second = pipe.execute(raise_on_error=False)
    assert isinstance(first, redis.ResponseError)
    assert second == b"v"
    assert lean.pipeline(transaction=False).execute() == []
    with lean.pipeline(transaction=True) as tx:  # transactions stay redis-py's
        tx.set("lean:a", b"x")
        tx.get("lean:a")
        assert tx.execute() == [True, b"x"]


def test_a_connection_the_server_closed_is_replaced(lean: Any) -> None:
    lean.set("lean:a", b"v")
    admin = redis.Redis.from_url(URL)
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1  # every pooled socket
    assert lean.get("lean:a") == b"v"
    admin.client_kill_filter(_type="normal", skipme=True)
    pipe = lean.pipeline(transaction=False)
    pipe.get("lean:a")
    assert pipe.execute() == [b"v"]
    admin.close()


def test_a_connection_given_back_mid_reply_is_not_reused_as_it_is(lean: Any) -> None:
    lean.set("lean:a", b"v")
    pool = lean.connection_pool
    connection = pool.get_connection()
    connection.send_command("GET", "lean:none")  # its reply is never read
    pool.release(connection)
    time.sleep(0.1)  # the reply is in the socket by the time the connection is taken again
    assert lean.get("lean:a") == b"v"  # not the stale reply (None)


def test_only_a_connection_given_back_in_step_skips_the_check(lean: Any) -> None:
    lean.set("lean:a", b"v")  # leaves one connection in the pool, every reply read
    pool = lean.connection_pool
    connection = pool.get_connection()
    checked: list[int] = []
    check = connection.can_read
    connection.can_read = lambda *args, **kwargs: checked.append(1) or check(*args, **kwargs)
    pool.release_in_step(connection)
    assert pool.get_connection() is connection
    assert checked == []
    pool.release(connection)  # by a caller that may have left a reply unread
    assert pool.get_connection() is connection
    assert checked == [1]
    connection.send_command("GET", "lean:none")  # its reply is never read
    pool.release(connection)
    time.sleep(0.1)
    assert lean.get("lean:a") == b"v"  # checked, dropped, not the stale reply
    assert checked == [1, 1]


def test_the_sent_marks_connection_goes_back_in_step_unless_it_broke(lean: Any) -> None:
    """The sent mark reads its reply, so its connection needs no check for data left waiting;
    a mark that failed leaves its connection disconnected, and the next taker checks it."""
    from worker.dedupe import Lease, RedisDedupeStore

    store = RedisDedupeStore(lean, "lean-test", ttl=60, lease=30)
    pool = lean.connection_pool
    lease = store.claim("lean:marked")
    assert isinstance(lease, Lease)
    with store.sent_marks() as mark:
        assert mark([lease]) == [True]
    connection = pool.get_connection()
    checked: list[int] = []
    check = connection.can_read
    connection.can_read = lambda *args, **kwargs: checked.append(1) or check(*args, **kwargs)
    pool.release_in_step(connection)
    with store.sent_marks() as mark:
        assert mark([lease]) == [True]
    assert pool.get_connection() is connection
    assert checked == []  # given back in step: taken again without the check
    pool.release_in_step(connection)
    assert store.is_done("lean:marked")

    def refused(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("gone")

    taken = pool.get_connection()
    assert taken is connection
    pool.release_in_step(taken)
    taken.send_packed_command = refused
    with store.sent_marks() as mark:
        assert mark([lease]) == [False]  # reported, not raised: the done mark decides
    del taken.send_packed_command
    assert taken._sock is None  # disconnected
    assert pool.get_connection() is taken
    assert checked == [1]  # given back as not in step: the next taker checked it
    lean.delete("rapidly:lean-test:done:lean:marked")


def test_a_taker_blocked_on_a_full_pool_gets_the_next_connection_given_back() -> None:
    from worker._redis import lean_client

    client = lean_client(URL, max_connections=2, timeout=5.0)
    pool = client.connection_pool
    first, second = pool.get_connection(), pool.get_connection()
    got: list[float] = []

    def take() -> None:
        started = time.monotonic()
        pool.release(pool.get_connection())
        got.append(time.monotonic() - started)

    taker = threading.Thread(target=take)
    taker.start()
    time.sleep(0.2)
    pool.release(first)
    taker.join(10)
    pool.release(second)
    client.close()
    assert got and got[0] < 2.0  # served by the release, not by its 5 s timeout
