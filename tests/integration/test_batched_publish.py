"""Records published together (``worker.publishing._batched``), against the real RabbitMQ and
Redis: one write and one sent-mark round trip for the records of one loop turn, each record
confirmed by its own delivery tag, and every way a batch can fail reported per record.

Each test runs a child interpreter, since the batches exist only under gevent's patching."""

from __future__ import annotations

import textwrap

from tests.children import last_line, run_child
from tests.integration.harness import REDIS_STORE_URL

PRELUDE = """
from worker._gevent import patch
patch()
import socket, sys, uuid
import gevent
import amqp.transport
from kombu import Connection, Queue
from worker.dedupe import Lease, RedisDedupeStore
from worker.enrichment import EnrichedRecord
from worker.errors import DedupeUnavailable, PublishError
from worker.publishing import RecordPublisher
from worker.publishing import _batched
from worker.publishing._topology import ENRICHED_EXCHANGE
from worker.runtime import redis_client

url, redis_url = sys.argv[1:3]
tag = uuid.uuid4().hex[:8]
store = RedisDedupeStore(redis_client(redis_url, 10), "batched-" + tag, ttl=60, lease=30)
connection = Connection(url)
channel = connection.default_channel


def queue(key, **arguments):
    q = Queue(f"test.batched.{tag}.{key}", exchange=ENRICHED_EXCHANGE, routing_key=f"{key}.#",
              auto_delete=False, queue_arguments=arguments or None)
    q.bind(channel).declare()
    return q


def record(i, key):
    event_id = f"evt-{tag}-{i}"
    body = {"schema": "rapidly.enriched_event/v1", "event": {"id": event_id}, "n": i}
    return EnrichedRecord(event_id=event_id, routing_key=f"{key}.x", body=body)


def publish_together(records, leases=None):
    leases = leases or [None] * len(records)
    def one(r, lease):
        try:
            return publisher.publish(r, mark=lease)
        except Exception as exc:
            return exc
    greenlets = [gevent.spawn(one, r, lease) for r, lease in zip(records, leases)]
    gevent.joinall(greenlets)
    return [g.value for g in greenlets]


def drain(q):
    bound, got = q.bind(channel), []
    while (message := bound.get(no_ack=True)) is not None:
        got.append(message)
    return got


publisher = RecordPublisher(url, timeout=5.0, sent_marks=store.sent_marks)
assert publisher._batches is not None, "batched under gevent on RabbitMQ"
"""


def run(script: str, amqp_url: str) -> str:
    return last_line(
        run_child(PRELUDE + textwrap.dedent(script), amqp_url, REDIS_STORE_URL, timeout=120)
    )


def test_one_loop_turn_is_one_write_and_one_mark_trip_and_every_record_is_confirmed(
    amqp_url: str,
) -> None:
    script = """
    q = queue("together")
    assert publish_together([record(-1, "together")]) == [True]  # opens the connection
    records = [record(i, "together") for i in range(20)]
    leases = [store.claim(r.event_id) for r in records]
    assert all(isinstance(lease, Lease) for lease in leases)
    writes, trips = [], []
    write = amqp.transport._AbstractTransport.write
    amqp.transport._AbstractTransport.write = lambda self, s: writes.append(1) or write(self, s)
    import redis.connection
    send = redis.connection.AbstractConnection.send_packed_command
    redis.connection.AbstractConnection.send_packed_command = (
        lambda self, *a, **k: trips.append(1) or send(self, *a, **k))
    assert publish_together(records, leases) == [True] * 20  # confirmed, marks landed
    assert len(writes) == 1, writes  # twenty records, one write
    assert len(trips) == 1, trips  # twenty sent marks, one round trip
    amqp.transport._AbstractTransport.write = write
    redis.connection.AbstractConnection.send_packed_command = send
    assert all(store.is_done(r.event_id) for r in records)
    got = drain(q)
    ids = sorted(m.properties["message_id"] for m in got)
    assert ids == sorted([r.event_id for r in records] + [record(-1, "together").event_id]), ids
    assert all(m.properties["delivery_mode"] == 2 for m in got)
    assert all(m.headers == {"schema": "rapidly.enriched_event/v1"} for m in got)
    q.bind(channel).delete()
    print("ok")
    """
    assert run(script, amqp_url) == "ok"


def test_a_nack_fails_the_records_it_names_and_the_next_go_on_a_new_connection(
    amqp_url: str,
) -> None:
    # A queue that holds one message and refuses the rest: RabbitMQ nacks them.
    script = """
    q = queue("nacked", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    results = publish_together([record(i, "nacked") for i in range(3)])
    assert results[0] is True, results
    for refused in results[1:]:
        assert isinstance(refused, PublishError) and refused.nacked and refused.sent, refused
    first = publisher._batches._link
    assert not first.usable  # retired: the next records take a new connection
    drain(q)
    assert publish_together([record(9, "nacked")]) == [True]
    assert publisher._batches._link is not first
    q.bind(channel).delete()
    print("ok")
    """
    assert run(script, amqp_url) == "ok"


def test_a_connection_lost_after_the_write_fails_its_records_as_sent(amqp_url: str) -> None:
    script = """
    q = queue("lost")
    write = _batched._Link.write
    def write_then_lose(self, batch):
        write(self, batch)
        self._transport.sock.shutdown(socket.SHUT_RDWR)  # before any confirm can come
    _batched._Link.write = write_then_lose
    records = [record(i, "lost") for i in range(3)]
    leases = [store.claim(r.event_id) for r in records]
    for lost in publish_together(records, leases):
        assert isinstance(lost, PublishError) and lost.sent and not lost.nacked, lost
    # The marks were written with the records: the service releases them on this error.
    assert all(store.is_done(r.event_id) for r in records)
    _batched._Link.write = write
    assert publish_together([record(7, "lost")]) == [True]  # a new connection
    q.bind(channel).delete()
    print("ok")
    """
    assert run(script, amqp_url) == "ok"


def test_a_confirm_that_never_comes_times_out_and_the_connection_is_replaced(
    amqp_url: str,
) -> None:
    script = """
    publisher = RecordPublisher(url, timeout=1.0, sent_marks=store.sent_marks)
    q = queue("silent")
    assert publish_together([record(0, "silent")]) == [True]
    link = publisher._batches._link
    link._on_ack = lambda tag, multiple: None  # a broker that stopped confirming
    link.channel.events["basic_ack"].clear()
    link.channel.events["basic_ack"].add(link._on_ack)
    (late,) = publish_together([record(1, "silent")])
    assert isinstance(late, PublishError) and late.sent and "no confirm" in str(late), late
    assert not link.usable
    assert publish_together([record(2, "silent")]) == [True]
    q.bind(channel).delete()
    print("ok")
    """
    assert run(script, amqp_url) == "ok"


def test_no_connection_for_the_marks_writes_nothing(amqp_url: str) -> None:
    script = """
    q = queue("unmarked")
    def no_marks():
        raise ConnectionError("redis down")
    publisher = RecordPublisher(url, timeout=5.0, sent_marks=no_marks)
    records = [record(i, "unmarked") for i in range(2)]
    leases = [store.claim(r.event_id) for r in records]
    for refused in publish_together(records, leases):
        assert isinstance(refused, DedupeUnavailable), refused
    assert drain(q) == []  # nothing reached the broker
    assert publish_together([record(5, "unmarked")]) == [True]  # no mark asked: no store needed
    q.bind(channel).delete()
    print("ok")
    """
    assert run(script, amqp_url) == "ok"


def test_a_record_that_cannot_be_encoded_fails_alone(amqp_url: str) -> None:
    script = """
    q = queue("encoding")
    bad = record(0, "encoding")
    bad = EnrichedRecord(event_id=bad.event_id, routing_key="encoding." + "x" * 300, body=bad.body)
    results = publish_together([bad, record(1, "encoding")])
    assert isinstance(results[0], PublishError) and results[0].unpublishable, results
    assert not results[0].sent
    assert results[1] is True, results
    assert [m.properties["message_id"] for m in drain(q)] == [record(1, "encoding").event_id]
    q.bind(channel).delete()
    print("ok")
    """
    assert run(script, amqp_url) == "ok"
