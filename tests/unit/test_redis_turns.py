"""Under gevent, the Redis commands of one event-loop turn share one round trip
(``worker._redis._Turns``): each caller its own reply or error, in order, against a real Redis.

The turns exist only under gevent's patching, so each case runs in a child interpreter."""

from __future__ import annotations

import textwrap

from tests.children import last_line, run_child
from tests.unit import test_redis_pool

# The same Redis database as the pool's tests, skipped as they are when Redis is not there.
URL = test_redis_pool.URL
pytestmark = test_redis_pool.pytestmark

PRELUDE = """
from worker._gevent import patch
patch()
import sys, uuid
import gevent
import redis
import redis.connection
from worker._redis import lean_client

client = lean_client(sys.argv[1], max_connections=8, timeout=5.0)
assert client.turns is not None, "turns under gevent"
prefix = "turns:" + uuid.uuid4().hex[:8] + ":"
trips = []
send = redis.connection.AbstractConnection.send_packed_command
redis.connection.AbstractConnection.send_packed_command = (
    lambda self, *a, **k: trips.append(1) or send(self, *a, **k))


def together(*calls):
    def one(call):
        try:
            return call()
        except Exception as exc:
            return exc
    greenlets = [gevent.spawn(one, call) for call in calls]
    gevent.joinall(greenlets)
    return [g.value for g in greenlets]
"""


def run(script: str) -> str:
    return last_line(run_child(PRELUDE + textwrap.dedent(script), URL))


def test_the_commands_of_one_turn_share_one_round_trip_and_each_gets_its_reply() -> None:
    script = """
    client.ping()  # connected before counting
    trips.clear()

    def piped(i):
        pipe = client.pipeline(transaction=False)
        pipe.set(prefix + f"p{i}", i)
        pipe.get(prefix + f"p{i}")
        return pipe.execute()

    calls = [lambda i=i: client.set(prefix + str(i), f"v{i}") for i in range(20)]
    calls += [lambda i=i: piped(i) for i in range(5)]
    results = together(*calls)
    assert results[:20] == [True] * 20, results
    assert results[20:] == [[True, str(i).encode()] for i in range(5)], results[20:]
    assert len(trips) == 1, trips  # twenty commands and five pipelines: one write
    trips.clear()
    got = together(*[lambda i=i: client.get(prefix + str(i)) for i in range(20)])
    assert got == [f"v{i}".encode() for i in range(20)], got
    assert len(trips) == 1, trips
    print("ok")
    """
    assert run(script) == "ok"


def test_an_error_reply_is_its_own_commands_alone() -> None:
    script = """
    client.set(prefix + "text", "not a number")
    trips.clear()
    results = together(
        lambda: client.incr(prefix + "count"),
        lambda: client.incr(prefix + "text"),
        lambda: client.get(prefix + "text"),
    )
    assert results[0] == 1, results
    assert isinstance(results[1], redis.ResponseError), results
    assert results[2] == b"not a number", results
    assert len(trips) == 1, trips
    # The connection stayed in step: the next turn reads its own replies.
    assert together(lambda: client.get(prefix + "count")) == [b"1"]
    print("ok")
    """
    assert run(script) == "ok"


def test_a_turn_whose_connection_died_is_sent_again_on_a_fresh_one() -> None:
    script = """
    client.set(prefix + "a", "1")
    ours = {
        "%s:%d" % c._sock.getsockname()[:2] for c in client.connection_pool._ready if c._sock
    }
    assert ours
    killer = redis.Redis.from_url(sys.argv[1])
    for info in killer.client_list():  # our connections only, as a Redis restart would
        if info["addr"] in ours:
            killer.client_kill_filter(_id=info["id"])
    trips.clear()
    results = together(lambda: client.get(prefix + "a"), lambda: client.set(prefix + "b", "2"))
    assert results == [b"1", True], results
    assert len(trips) >= 2, trips  # the dead socket's attempt, then the fresh connection's
    print("ok")
    """
    assert run(script) == "ok"


def test_a_turn_that_fails_twice_fails_every_caller_with_an_exception_of_its_own() -> None:
    script = """
    client.ping()
    def refused(self, *a, **k):
        raise redis.ConnectionError("redis is down")
    redis.connection.AbstractConnection.send_packed_command = refused
    results = together(lambda: client.get(prefix + "a"), lambda: client.get(prefix + "b"))
    assert all(isinstance(r, redis.ConnectionError) for r in results), results
    assert results[0] is not results[1]
    redis.connection.AbstractConnection.send_packed_command = send
    assert together(lambda: client.ping()) == [True]  # the next turn goes through
    print("ok")
    """
    assert run(script) == "ok"


def test_without_gevent_each_command_is_its_own_round_trip() -> None:
    from worker._redis import lean_client

    client = lean_client(URL, max_connections=2, timeout=5.0)
    try:
        assert client.turns is None
        assert client.set("turns:plain", "1") is True
        assert client.get("turns:plain") == b"1"
    finally:
        client.delete("turns:plain")
        client.close()
