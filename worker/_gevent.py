"""Process set-up for the gevent pool: monkey-patching, plus one targeted fix-up.

httpcore asks, before reusing a pooled connection, whether its socket is readable, with a
zero-timeout ``select.poll``. Under monkey-patching that poll is gevent's cooperative one, which
costs a watcher per call and showed as a fifth of the worker's CPU in profiles. A zero-timeout poll
never blocks, so the original, unpatched poll is both correct and cheap there. redis-py asks the
same question (``_socket_can_read(sock, 0)``) each time a connection leaves its pool: the same fix.

gevent's ``sendall`` asks the kernel for the socket's send buffer size (a ``getsockopt`` syscall)
before every write, to size its chunks. The worker's writes (a Redis command, an AMQP frame, an
HTTP request) are small and a first non-blocking ``send`` almost always takes them whole, so
plain sockets try that first and hand only a remainder to gevent's loop.

gevent records, for every greenlet it creates, the greenlet that spawned it and that greenlet's
stack (ten frames, line numbers included): the worker spawns one per task, so that bookkeeping is
paid on every event and read by nothing here. ``patch`` turns it off; ``kill -USR1`` still prints
every greenlet's own stack.

``wait_for`` waits on a ``threading.Event`` (gevent's, once patched) without the one path of
gevent's ``wait`` that has no timer: waiting on an event already set whose waiters the hub has
yet to wake. Everything that waits on an event in the event store goes through it.

py-amqp reads each frame in three ``recv`` calls of exactly the bytes it needs (header, payload,
end octet), so a delivery (three frames) costs nine syscalls, each through gevent's socket
wrapper. Its plain-TCP transport here asks for up to ``AMQP_READ_AHEAD`` bytes instead and keeps
the rest for the next read; ``recv`` still returns what is there without waiting for more.
"""

from __future__ import annotations

import errno
import socket
import threading
from typing import Any

# Several deliveries' worth (a task message is about 1 KB in three frames); small enough that
# slicing the remainder off after each read stays cheaper than the syscall it saves.
AMQP_READ_AHEAD = 8192


def patch() -> None:
    import gevent  # noqa: PLC0415 - must run before anything else imports sockets
    from gevent import monkey  # noqa: PLC0415

    gevent.config.track_greenlet_tree = False
    monkey.patch_all()
    original_poll: Any = monkey.get_original("select", "poll")
    pollin: int = monkey.get_original("select", "POLLIN")

    def is_socket_readable(sock: socket.socket | None) -> bool:
        fd = None if sock is None else sock.fileno()
        if fd is None or fd < 0:
            return True
        poller = original_poll()
        poller.register(fd, pollin)
        return bool(poller.poll(0))

    import httpcore._backends.sync as sync_backend  # noqa: PLC0415

    sync_backend.is_socket_readable = is_socket_readable  # type: ignore[attr-defined]

    import redis._parsers.hiredis as hiredis_parser  # noqa: PLC0415

    cooperative_can_read = hiredis_parser._socket_can_read

    def socket_can_read(sock: Any, timeout: float) -> bool:
        if timeout != 0 or (hasattr(sock, "pending") and sock.pending()):
            return bool(cooperative_can_read(sock, timeout))  # may block: stay cooperative
        return is_socket_readable(sock)

    hiredis_parser._socket_can_read = socket_can_read
    _send_small_writes_at_once()
    _read_amqp_ahead()
    dump_greenlets_on_sigusr1()


# An untimed ``wait_for`` looks at its event again this often.
WAKE_UP_CHECK_SECONDS = 1.0


def wait_for(event: threading.Event, timeout: float | None = None) -> bool:
    """``event.wait(timeout)`` without gevent's one unguarded path. gevent's ``wait`` on an
    event that is already set, while the hub has yet to run the callback that wakes its waiters,
    parks the caller in that callback's list with no timer, whatever ``timeout`` says; a worker
    process was seen with 25 tasks parked there for good (the event set, their timeouts long
    past, nothing left to wake them). A set event is never waited on here, and an untimed wait
    looks at its event again every ``WAKE_UP_CHECK_SECONDS``: each ``wait`` made is a timed one
    on an event that was not set, which gevent's timer ends if no wake-up comes."""
    if timeout is not None:
        return event.is_set() or event.wait(timeout)
    while not event.is_set():
        event.wait(WAKE_UP_CHECK_SECONDS)
    return True


def _patched() -> bool:
    from gevent import monkey  # noqa: PLC0415 - only asks whether patch() ran

    return bool(monkey.is_module_patched("threading"))


def bounded_semaphore(value: int) -> Any:
    """``threading.BoundedSemaphore(value)``, or gevent's when threading is monkey-patched: the
    same behaviour, but one compiled call instead of a Python ``Condition`` over patched locks
    (taken twice per published record, it showed in profiles)."""
    if _patched():
        from gevent.lock import BoundedSemaphore  # noqa: PLC0415

        return BoundedSemaphore(value)
    return threading.BoundedSemaphore(value)


def _send_small_writes_at_once() -> None:
    from gevent import socket as gevent_socket  # noqa: PLC0415

    plain = gevent_socket.socket
    cooperative_sendall = plain.sendall

    def sendall(self: Any, data: Any, flags: int = 0) -> Any:
        # TLS sockets subclass this class and must write through their own ``send``.
        if type(self) is not plain or flags:
            return cooperative_sendall(self, data, flags)
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        view = memoryview(data).cast("B")
        if sent >= view.nbytes:
            return None
        return cooperative_sendall(self, view[sent:], flags)

    plain.sendall = sendall


def _read_amqp_ahead() -> None:
    from amqp.transport import TCPTransport  # noqa: PLC0415

    TCPTransport._read = _read_ahead  # type: ignore[attr-defined]


def _read_ahead(
    self: Any, n: int, initial: bool = False, _errnos: tuple[int, ...] = (errno.EAGAIN, errno.EINTR)
) -> bytes:
    """py-amqp 5.x ``TCPTransport._read`` (exactly ``n`` bytes, the rest kept in
    ``_read_buffer`` for the next call and across timeouts), asking for more than ``n``."""
    recv = self._quick_recv
    rbuf = self._read_buffer
    try:
        while len(rbuf) < n:
            try:
                s = recv(max(n - len(rbuf), AMQP_READ_AHEAD))
            except OSError as exc:
                if exc.errno in _errnos:
                    if initial and self.raise_on_initial_eintr:
                        raise TimeoutError from None
                    continue
                raise
            if not s:
                raise OSError("Server unexpectedly closed connection")
            rbuf += s
    except BaseException:
        self._read_buffer = rbuf
        raise
    result, self._read_buffer = rbuf[:n], rbuf[n:]
    return result  # type: ignore[no-any-return]


def dump_greenlets_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` prints every greenlet's stack to stderr: what a stuck worker is
    waiting on. Celery puts its own SIGUSR1 handler in place as the worker starts (the stacks of
    the threads, of which gevent leaves one), so ``worker.app`` calls this again once the
    consumer is ready. Nothing without gevent's patching (the solo pool in tests)."""
    if not _patched():
        return
    import signal  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from gevent import util  # noqa: PLC0415

    signal.signal(signal.SIGUSR1, lambda *_: util.print_run_info(file=sys.stderr))
