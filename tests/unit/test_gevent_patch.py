"""``worker._gevent.patch``: the worker's socket shortcuts keep gevent's semantics.

Run in a child interpreter: monkey-patching is process-wide and must not reach the test run.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.children import run_child

CHILD = textwrap.dedent(
    """
    from worker._gevent import patch
    patch()
    import gevent, socket

    asked = []
    getsockopt = socket.socket.getsockopt
    socket.socket.getsockopt = lambda self, *args: asked.append(args) or getsockopt(self, *args)
    small_writer, small_reader = socket.socketpair()
    small_writer.sendall(b"one frame")
    assert small_reader.recv(64) == b"one frame"
    assert asked == []  # written by one send, without asking the buffer's size

    # Far more than the kernel buffers: the first send takes part, gevent's loop the rest,
    # while a reader greenlet drains it.
    payload = bytes(range(256)) * 40_000
    big_writer, big_reader = socket.socketpair()
    received = bytearray()

    def read() -> None:
        while len(received) < len(payload):
            received.extend(big_reader.recv(65536))

    reader = gevent.spawn(read)
    big_writer.sendall(memoryview(payload))
    reader.join(10)
    assert bytes(received) == payload, (len(received), len(payload))

    # A subclass (gevent's TLS socket is one) writes through its own send.
    class Wrapped(socket.socket):
        sends = 0

        def send(self, data, flags=0, timeout=None):
            Wrapped.sends += 1
            return super().send(data, flags)

    left, right = socket.socketpair()
    wrapped = Wrapped(fileno=left.detach())
    wrapped.sendall(b"through send")
    assert right.recv(64) == b"through send"
    assert Wrapped.sends >= 1
    print("ok")
    """
)


def test_sendall_sends_small_and_large_writes_whole_and_leaves_subclasses_alone() -> None:
    assert run_child(CHILD) == "ok"


AMQP_CHILD = textwrap.dedent(
    """
    from worker._gevent import patch
    patch()
    import socket, struct
    from amqp.transport import TCPTransport

    def frame(channel, payload):
        return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\\xce"

    ours, broker = socket.socketpair()
    transport = TCPTransport.__new__(TCPTransport)
    transport.sock, transport.raise_on_initial_eintr, transport.connected = ours, True, True
    transport._setup_transport()
    asked = []
    recv = transport._quick_recv
    transport._quick_recv = lambda n: asked.append(n) or recv(n)

    broker.sendall(frame(1, b"first") + frame(2, b"second" * 100))
    assert transport.read_frame() == (1, 1, b"first")
    assert transport.read_frame() == (1, 2, b"second" * 100)
    assert len(asked) == 1, asked  # both frames, six reads, from one recv

    # A frame cut by a read timeout is kept whole for the next read.
    ours.settimeout(0.2)
    split = frame(3, b"split")
    broker.sendall(split[:9])
    try:
        transport.read_frame()
        raise SystemExit("no timeout")
    except socket.timeout:
        pass
    broker.sendall(split[9:])
    assert transport.read_frame() == (1, 3, b"split")

    broker.close()
    try:
        transport.read_frame()
        raise SystemExit("read past the end")
    except OSError as exc:
        assert "closed" in str(exc), exc
    print("ok")
    """
)


def test_amqp_frames_are_read_ahead_and_kept_across_timeouts() -> None:
    assert run_child(AMQP_CHILD) == "ok"


TREE_CHILD = textwrap.dedent(
    """
    from worker._gevent import patch
    patch()
    import gevent
    child = gevent.spawn(lambda: None)
    child.join()
    assert child.spawning_stack is None and child.spawning_greenlet is None
    print("ok")
    """
)


def test_greenlets_are_spawned_without_the_spawn_tree_bookkeeping() -> None:
    assert run_child(TREE_CHILD) == "ok"


WAIT_CHILD = textwrap.dedent(
    """
    from worker._gevent import patch, wait_for
    patch()
    import sys, threading, gevent

    plain = sys.argv[1] == "plain"
    wait = (lambda event, timeout: event.wait(timeout)) if plain else wait_for
    order = []
    event = threading.Event()
    linked = gevent.spawn(lambda: (event.wait(), order.append("linked")))
    gevent.sleep(0)  # the other greenlet waits: set() must wake it through the hub
    event.set()  # the wake-up is scheduled, not run yet
    assert wait(event, 5.0) is True
    order.append("caller")
    linked.join()

    later = threading.Event()
    gevent.spawn_later(0.05, later.set)
    assert wait_for(later) is True  # untimed: returns once set
    assert wait_for(threading.Event(), 0.01) is False
    print(",".join(order))
    """
)


@pytest.mark.parametrize(
    ("how", "order"), [("wait_for", "caller,linked"), ("plain", "linked,caller")]
)
def test_wait_for_does_not_park_on_an_event_already_set(how: str, order: str) -> None:
    """gevent's own ``wait`` on a set event whose waiters the hub has yet to wake parks the
    caller behind them, with no timer (a lost wake-up there is a task stuck for good);
    ``wait_for`` returns at once."""
    assert run_child(WAIT_CHILD, how) == order
