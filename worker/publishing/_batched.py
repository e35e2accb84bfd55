"""Records of one event-loop turn published together, on RabbitMQ under the gevent pool.

Published one at a time, every record cost a write of its own, a Redis round trip for its sent
mark and a wait for its own confirm (a read and a wake-up): a third of the worker's CPU per event
at the floor. Here a record is queued instead, and the records queued while the other task
greenlets ran go out together as soon as the event loop comes round (a greenlet spawned with the
first of them, as ``worker._acks`` does for acks):

    one write      every record's ``basic.publish`` frames, each record its own delivery tag
    one round trip the sent marks of those records (``DedupeStore.sent_marks``), written right
                   after the broker write with no switch to another greenlet in between
    one reader     per connection, takes the broker's confirms (one ``basic.ack`` often covers
                   many, with ``multiple``) and wakes the records' publishers

A record is published only once its own delivery tag is confirmed; a nack fails the records it
names and retires the connection (a new one takes the next records, as a new channel did on a
cluster whose queue leader moved), a connection lost or a confirm that never came fails every
record that connection still owes, each reported as written or not (``PublishError.sent``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import amqp
import structlog
from amqp import spec
from amqp.exceptions import AMQPError, MessageNacked, RecoverableConnectionError
from amqp.method_framing import frame_writer
from kombu import Connection

from worker._gevent import wait_for
from worker.errors import DedupeUnavailable, PublishError

log = structlog.get_logger()

SentMarks = Callable[[], AbstractContextManager[Callable[[Sequence[Any]], list[bool]]]]


@dataclass(eq=False, slots=True)
class _Batch:
    """The records written together. ``settled`` is set once every record's confirm (or
    failure) came and the sent marks were written: ``parts`` counts down to it."""

    records: list[_Pending] = field(default_factory=list)
    parts: int = 1  # the sent marks; one more per record
    settled: threading.Event = field(default_factory=threading.Event)

    def part_done(self) -> None:
        self.parts -= 1
        if self.parts == 0:
            self.settled.set()


@dataclass(eq=False, slots=True)
class _Pending:
    message: amqp.Message
    arguments: bytes
    mark: Any
    batch: _Batch
    link: _Link | None = None
    sent: bool = False
    marked: bool = True
    error: BaseException | None = None
    settled: bool = False

    def settle(self, error: BaseException | None) -> None:
        if self.settled:
            return
        self.settled = True
        self.error = error
        self.batch.part_done()


class _Link:
    """One connection and its confirm-mode channel, the records it still owes a confirm for
    (by delivery tag, in the order written), and the greenlet that reads its confirms."""

    def __init__(
        self, connection: Connection, channel: Any, spawn: Callable[..., Any], *, timeout: float
    ):
        self.connection = connection
        # The reader's read timeout, and so the socket's while it reads (a write then has as
        # long to go out): it looks up this often from an idle connection, to send a heartbeat
        # when one is due and to close a retired connection whose records were all confirmed.
        self._tick = timeout
        self.channel = channel
        self._amqp = channel.connection
        self._transport = self._amqp.transport
        self._lock = threading.Lock()  # one writer at a time: records, heartbeats, close-ok
        self._unconfirmed: dict[int, _Pending] = {}
        self._next_tag = 1
        self.failed = False
        self.retired = False
        self._chunks: list[bytes] = []
        self._encode = frame_writer(self._amqp, _Collector(self._chunks))
        write_frame = self._amqp.frame_writer

        def locked_frame_writer(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return write_frame(*args, **kwargs)

        self._amqp.frame_writer = locked_frame_writer
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        spawn(self._read)

    @property
    def usable(self) -> bool:
        return not (self.failed or self.retired)

    def write(self, batch: list[_Pending]) -> None:
        """Every record's frames in one write; raises when the write failed (the connection is
        then failed, and every record it owed with it)."""
        chunks = self._chunks
        channel_id = self.channel.channel_id
        written: list[_Pending] = []
        for pending in batch:
            if pending.settled:  # its publisher gave up waiting: never written late
                continue
            encoded = len(chunks)
            try:
                self._encode(1, channel_id, spec.Basic.Publish, pending.arguments, pending.message)
            except Exception as exc:  # noqa: BLE001 - the record's own: unpublishable
                del chunks[encoded:]
                pending.settle(
                    PublishError(
                        f"publish not confirmed: {type(exc).__name__}: {exc}",
                        sent=False,
                        unpublishable=True,
                    )
                )
                continue
            written.append(pending)
        data = b"".join(chunks)
        chunks.clear()
        with self._lock:
            if self.failed:  # lost while this writer waited for the lock
                lost = RecoverableConnectionError("publishing connection lost")
                for pending in written:
                    pending.settle(lost)
                raise lost
            for pending in written:
                pending.link = self
                self._unconfirmed[self._next_tag] = pending
                self._next_tag += 1
            try:
                self._transport.write(data)
            except Exception as exc:
                self.fail(exc)
                raise
            self._amqp.bytes_sent += 1
        for pending in written:
            pending.sent = True

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, None)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        # A new connection for the next records: on a cluster, a channel whose publishes were
        # refused because a quorum queue's leader died kept refusing them after a new leader was
        # elected (seen in tests/cluster); a fresh one looks the leader up again.
        self.retired = True
        self._settle(delivery_tag, multiple, MessageNacked())

    def _settle(self, delivery_tag: int, multiple: bool, error: BaseException | None) -> None:
        unconfirmed = self._unconfirmed
        if not multiple:
            pending = unconfirmed.pop(delivery_tag, None)
            if pending is not None:
                pending.settle(error)
            return
        while unconfirmed:
            tag = next(iter(unconfirmed))
            if tag > delivery_tag:
                break
            unconfirmed.pop(tag).settle(error)

    def fail(self, error: BaseException) -> None:
        """Every record still owed a confirm fails with ``error``; the connection closes."""
        if self.failed:
            return
        self.failed = True
        owed = list(self._unconfirmed.values())
        self._unconfirmed.clear()
        for pending in owed:
            pending.settle(error)
        try:
            # Closed under the reader (which then stops), not with the close handshake: only
            # the reader may read this socket.
            self._amqp.collect()
        except Exception as exc:  # noqa: BLE001 - it is being thrown away
            log.debug("publish.close_failed", error=type(exc).__name__)

    def _read(self) -> None:
        try:
            while not self.failed:
                try:
                    self._amqp.drain_events(timeout=self._tick)
                except TimeoutError:
                    self._amqp.heartbeat_tick()  # sends ours when due; raises if theirs stopped
                if self.retired and not self._unconfirmed:
                    self.failed = True  # nothing owed: closed with the handshake, by the reader
                    try:
                        self.connection.release()
                    except Exception as exc:  # noqa: BLE001 - it is being thrown away
                        log.debug("publish.close_failed", error=type(exc).__name__)
                    return
        except Exception as exc:  # noqa: BLE001 - the records it owed are failed with it
            if not self.failed:
                log.info("publish.connection_lost", error=type(exc).__name__)
            self.fail(exc)


class _Collector:
    """The ``transport`` py-amqp's frame writer writes to: keeps a copy of each write (the
    writer hands out a view of one buffer it reuses)."""

    def __init__(self, chunks: list[bytes]):
        self._chunks = chunks

    def write(self, data: Any) -> None:
        self._chunks.append(bytes(data))


class BatchedConfirms:
    """``publish`` queues a record and waits for its confirm; a greenlet per loop turn writes
    the queued records and their sent marks (``sent_marks``) together."""

    def __init__(
        self,
        open_link: Callable[[], tuple[Connection, Any]],
        *,
        timeout: float,
        sent_marks: SentMarks | None,
        spawn: Callable[..., Any],
    ):
        self._open_link = open_link
        self._timeout = timeout
        self._sent_marks = sent_marks
        self._spawn = spawn
        self._next_batch: _Batch | None = None  # the records queued in this loop turn
        self._writing = threading.Lock()  # batches go out in the order they were queued
        self._link: _Link | None = None
        self._closed = False

    def publish(self, message: amqp.Message, arguments: bytes, *, mark: Any = None) -> bool:
        """Returns once the broker confirmed the record: whether its sent mark landed (True when
        there was none to write). Raises PublishError, or DedupeUnavailable when no connection
        for the sent marks could be had (nothing was written then)."""
        batch = self._next_batch
        if batch is None:
            batch = self._next_batch = _Batch()
            self._spawn(self._write_soon)
        pending = _Pending(message, arguments, mark, batch)
        batch.parts += 1
        batch.records.append(pending)
        if not wait_for(batch.settled, self._timeout) and not pending.settled:
            # The broker or the connection is stuck: everything that connection owes fails with
            # it, so that a late confirm is never waited for again.
            log.warning("publish.confirm_timed_out", seconds=self._timeout)
            timed_out = TimeoutError(f"no confirm within {self._timeout:g} s")
            if pending.link is not None:
                pending.link.fail(timed_out)
            pending.settle(timed_out)
        return _outcome(pending)

    def _write_soon(self) -> None:
        with self._writing:
            # Spawned with the batch's first record: the batch is there and not empty.
            batch, self._next_batch = self._next_batch, None
            assert batch is not None
            try:
                self._write(batch.records)
            finally:
                batch.part_done()  # the sent marks' part

    def _write(self, batch: list[_Pending]) -> None:
        marks = [pending for pending in batch if pending.mark is not None]
        try:
            marking = self._sent_marks() if marks and self._sent_marks else nullcontext(None)
            with marking as mark:
                try:
                    link = self._usable_link()
                except Exception as exc:  # noqa: BLE001 - the broker's, never the records'
                    for pending in batch:
                        pending.settle(PublishError(f"publish not confirmed: {exc!r}", sent=False))
                    return
                try:
                    link.write(batch)
                except Exception:  # noqa: BLE001 - the records were settled with the failure
                    return
                if mark is not None:
                    written = [pending for pending in marks if pending.sent]
                    landed = mark([pending.mark for pending in written])
                    for pending, ok in zip(written, landed, strict=True):
                        pending.marked = ok
        except Exception as exc:  # noqa: BLE001 - no connection for the marks: nothing written
            for pending in batch:
                if not pending.sent:
                    pending.settle(DedupeUnavailable(exc))

    def _usable_link(self) -> _Link:
        link = self._link
        if link is None or not link.usable:
            if self._closed:
                raise RecoverableConnectionError("publisher closed")
            connection, channel = self._open_link()
            link = self._link = _Link(connection, channel, self._spawn, timeout=self._timeout)
        return link

    def close(self) -> None:
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            link.fail(RecoverableConnectionError("publisher closed"))


def _outcome(pending: _Pending) -> bool:
    error = pending.error
    if error is None:
        return pending.marked
    if isinstance(error, (PublishError, DedupeUnavailable)):
        raise error
    if isinstance(error, MessageNacked):
        raise PublishError("the broker refused (nacked) the message", sent=True, nacked=True)
    raise PublishError(
        f"publish not confirmed: {type(error).__name__}: {error}",
        sent=pending.sent,
        refused=isinstance(error, AMQPError),
    ) from error
