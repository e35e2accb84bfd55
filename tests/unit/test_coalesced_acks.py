"""Acks queued and written together (worker._acks), checked against py-amqp's own frames."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from amqp import spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps

from worker._acks import ack_frame, coalesce_acks


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))


class Connection:
    frame_max = 131072

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.transport = Transport()
        self.frame_writer = frame_writer(self, self.transport)


class Channel:
    channel_id = 3

    def __init__(self) -> None:
        self.connection = Connection()

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        raise AssertionError("replaced by coalesce_acks")


def py_amqp_ack(channel_id: int, tag: int, multiple: bool) -> bytes:
    reference = Connection()
    reference.frame_writer(1, channel_id, spec.Basic.Ack, dumps("Lb", (tag, multiple)), None)
    return reference.transport.writes[0]


def test_the_ack_frame_is_py_amqps() -> None:
    for tag, multiple in ((1, False), (2**40 + 7, False), (99, True)):
        assert ack_frame(5, tag, multiple) == py_amqp_ack(5, tag, multiple)


def test_acks_queued_in_one_turn_go_out_in_one_write_once_the_writer_runs() -> None:
    channel = Channel()
    spawned: list[Callable[[], None]] = []
    coalesce_acks(channel, spawned.append)
    for tag in (1, 2, 3):
        channel.basic_ack(tag)
    writes = channel.connection.transport.writes
    assert writes == []  # nothing until the writer greenlet runs
    assert len(spawned) == 1  # one writer for the whole batch
    spawned.pop()()
    assert writes == [b"".join(py_amqp_ack(3, tag, False) for tag in (1, 2, 3))]
    assert channel.connection.bytes_sent == 1

    channel.basic_ack(4)  # the next turn has a writer of its own
    assert len(spawned) == 1


def test_any_other_frame_writes_the_queued_acks_first() -> None:
    channel = Channel()
    spawned: list[Callable[[], None]] = []
    coalesce_acks(channel, spawned.append)
    channel.basic_ack(8)
    requeue = dumps("Lb", (9, True))
    channel.connection.frame_writer(1, 3, spec.Basic.Reject, requeue, None)
    writes = channel.connection.transport.writes
    assert writes[0] == py_amqp_ack(3, 8, False)
    assert writes[1][7:11] == b"\x00\x3c\x00\x5a"  # basic.reject after the ack
    spawned.pop()()  # the writer finds nothing left to write
    assert len(writes) == 2


def test_a_failed_write_is_logged_and_dropped_not_raised() -> None:
    channel = Channel()
    spawned: list[Callable[[], None]] = []
    coalesce_acks(channel, spawned.append)

    def broken(_data: Any) -> None:
        raise ConnectionResetError("gone")

    channel.connection.transport.write = broken  # type: ignore[method-assign]
    channel.basic_ack(1)
    spawned.pop()()  # the consumer notices the lost connection itself; the broker redelivers
    channel.basic_ack(2)
    assert len(spawned) == 1
