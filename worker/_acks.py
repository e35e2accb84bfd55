"""Acks of task messages written together, on RabbitMQ under the gevent pool.

Every finished task acks its message (late acks, one ``basic.ack`` per message), and each ack
was a ``send`` of its own on the consumer's socket: a tenth of the worker's CPU in profiles, and
as many reads for RabbitMQ. Here an ack is queued instead, and the acks queued while the other
task greenlets ran go out in one write as soon as the event loop comes round (a greenlet spawned
with the first of them). Still one ``basic.ack`` frame per message, with its own delivery tag;
only the writes are shared. Any other frame on the connection (a reject, a heartbeat, the close)
writes the queued acks first, so frames keep their order.

An ack that never reached the broker (the process killed within that loop turn, a lost
connection) means a redelivery, which the dedupe store answers without a second record: what a
kill a moment before the ack always meant.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import structlog
from celery import bootsteps

log = structlog.get_logger()

_BASIC_ACK = struct.Struct(">BHIHHQBB")  # method frame: type, channel, size; 60/80; tag, bits; end
_ACK_SIZE = 13  # class and method ids (4), delivery tag (8), the ``multiple`` bit (1)


def ack_frame(channel_id: int, delivery_tag: int, multiple: bool) -> bytes:
    """The ``basic.ack`` method frame, as py-amqp writes it (a test compares them)."""
    return _BASIC_ACK.pack(1, channel_id, _ACK_SIZE, 60, 80, delivery_tag, int(multiple), 0xCE)


def coalesce_acks(channel: Any, spawn: Any) -> None:
    """Queue ``channel``'s acks and write them together (``spawn`` starts the writer greenlet).

    ``channel`` is a py-amqp channel; its connection's ``frame_writer`` is wrapped so that any
    other frame writes the queued acks first, under one lock with the queued-ack writer."""
    connection = channel.connection
    transport = connection.transport
    write_frame = connection.frame_writer
    channel_id = channel.channel_id
    lock = threading.Lock()  # gevent's when monkey-patched: writers wait as greenlets
    queued: list[bytes] = []

    def write_queued() -> None:
        if queued:
            data = b"".join(queued)
            queued.clear()
            transport.write(data)
            connection.bytes_sent += 1  # traffic, as far as heartbeats are concerned

    def write_soon() -> None:
        try:
            with lock:
                write_queued()
        except Exception as exc:  # noqa: BLE001 - the consumer sees the lost connection itself
            log.info("worker.acks_not_written", error=f"{type(exc).__name__}: {exc}")

    def basic_ack(delivery_tag: int, multiple: bool = False, argsig: str = "Lb") -> None:
        if not queued:
            spawn(write_soon)
        queued.append(ack_frame(channel_id, delivery_tag, multiple))

    def frame_writer(*args: Any, **kwargs: Any) -> Any:
        with lock:
            write_queued()
            return write_frame(*args, **kwargs)

    channel.basic_ack = basic_ack
    connection.frame_writer = frame_writer


class CoalescedAcks(bootsteps.StartStopStep):
    """A consumer step: on each (re)connection, the task consumer's channel gets its acks
    coalesced, when the broker is RabbitMQ (a py-amqp channel) and the pool is gevent's."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        import amqp  # noqa: PLC0415
        from gevent import monkey  # noqa: PLC0415

        channel = getattr(getattr(c, "task_consumer", None), "channel", None)
        if not isinstance(channel, amqp.Channel) or not monkey.is_module_patched("socket"):
            return
        import gevent  # noqa: PLC0415

        coalesce_acks(channel, gevent.spawn)
