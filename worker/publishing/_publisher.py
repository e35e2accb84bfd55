"""Confirmed publishing through pooled producers: dead letters, task messages, and records where
they are not batched (``_records``).

A publish returns only once the broker has taken responsibility for the message: on RabbitMQ the
channel is in confirm mode (``confirm_publish``) and ``publish`` waits for the ack; on Redis the
LPUSH has returned. Each producer (one connection) is used by one caller at a time, so confirms
are never attributed to the wrong message. Never a connection per message.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from amqp import spec
from amqp.exceptions import AMQPError, MessageNacked
from kombu import Connection, Producer
from kombu.exceptions import OperationalError

from worker._gevent import bounded_semaphore
from worker.errors import PublishError
from worker.publishing._topology import (
    DEAD_LETTER_QUEUE_NAME,
    Topology,
    topology,
)
from worker.publishing._wire import (
    PUBLISH_HEARTBEAT_SECONDS,
    open_channel,
    persistent_message,
    write_basic_publish,
)

log = structlog.get_logger()

DEFAULT_POOL_SIZE = 16
# Properties of a consumed message that a dead letter keeps, so it replays as the same task.
_KEPT_PROPERTIES = (
    "correlation_id",
    "reply_to",
    "priority",
    "expiration",
    "message_id",
    "type",
    "app_id",
    "user_id",
    "timestamp",
)


# Failures of the broker, the network or the connection: the message may well go through later.
# Anything else raised before the message was written is the message's own (UNPUBLISHABLE).
_INFRASTRUCTURE_ERRORS = (OSError, AMQPError, OperationalError, queue.Empty, TimeoutError)


def _nothing() -> None:
    return None


@dataclass
class _Slot:
    connection: Connection
    channel: Any
    producer: Producer
    confirms: bool
    used_at: float


class _ConfirmedPool:
    """At most ``size`` connections, each used by one caller at a time; a connection that failed
    is closed and replaced, never handed out again.

    Confirms are handled here rather than by kombu's ``confirm_publish`` so that the caller hears
    the moment the message was written (``on_sent``), before the wait for the broker's ack: the
    dedupe store records it there, which leaves a kill no window in which a record the broker
    holds is unknown to the store for longer than a few microseconds.
    """

    def __init__(self, url: str, *, timeout: float, size: int, declare: tuple[Any, ...] = ()):
        self._url = url
        self._timeout = timeout
        self._declare = declare
        # Most recently used last; list operations are atomic, the permits bound the length.
        self._idle: list[_Slot] = []
        self._permits = bounded_semaphore(size)

    def _open(self) -> _Slot:
        connection, channel, confirms = open_channel(self._url, self._timeout, self._declare)
        return _Slot(connection, channel, Producer(channel), confirms, time.monotonic())

    def publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        content_type: str,
        content_encoding: str,
        headers: dict[str, Any],
        properties: dict[str, Any],
        on_sent: Callable[[], None] = _nothing,
    ) -> None:
        """``body`` as it goes on the wire, persistent (delivery mode 2); ``properties`` are the
        other AMQP properties (message_id, correlation_id...)."""
        if not self._permits.acquire(timeout=self._timeout):
            raise PublishError("no publishing connection free in time", sent=False)
        slot: _Slot | None = None
        sent = False
        try:
            slot = self._take()
            if slot.confirms:
                write_basic_publish(
                    slot.channel,
                    persistent_message(
                        body,
                        content_type=content_type,
                        content_encoding=content_encoding,
                        headers=headers,
                        properties=properties,
                    ),
                    exchange,
                    routing_key,
                    timeout=self._timeout,
                )
            else:
                slot.producer.publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    content_type=content_type,
                    content_encoding=content_encoding,
                    headers=headers,
                    delivery_mode=2,
                    retry=False,
                    timeout=self._timeout,
                    **properties,
                )
            sent = True
            on_sent()
            if slot.confirms:
                slot.channel.wait(
                    [spec.Basic.Ack, spec.Basic.Nack],
                    callback=_raise_on_nack,
                    timeout=self._timeout,
                )
        except MessageNacked:
            # A new channel next time: on a cluster, a channel whose publishes were refused
            # because a quorum queue's leader died kept refusing them after a new leader was
            # elected (seen in tests/cluster); a fresh channel looks the leader up again.
            if slot is not None:
                _close_quietly(slot)
                slot = None
            raise PublishError(
                "the broker refused (nacked) the message", sent=True, nacked=True
            ) from None
        except Exception as exc:
            opened = slot is not None
            if slot is not None:
                _close_quietly(slot)
                slot = None
            infrastructure = isinstance(exc, _INFRASTRUCTURE_ERRORS)
            raise PublishError(
                f"publish not confirmed: {type(exc).__name__}: {exc}",
                sent=sent,
                refused=isinstance(exc, AMQPError),
                # Only once a connection was there to write to: a failure to open one is the
                # broker's, never the message's.
                unpublishable=opened and not sent and not infrastructure,
            ) from exc
        else:
            self._idle.append(slot)
            slot = None
        finally:
            self._permits.release()

    def _take(self) -> _Slot:
        """An idle connection that is still good, else a new one."""
        while True:
            try:
                slot = self._idle.pop()
            except IndexError:
                return self._open()
            if time.monotonic() - slot.used_at < PUBLISH_HEARTBEAT_SECONDS:
                try:
                    # Sends our heartbeat if one is due; raises if the broker's stopped coming.
                    slot.connection.heartbeat_check()
                    slot.used_at = time.monotonic()
                    return slot
                except Exception as exc:  # noqa: BLE001 - replaced below
                    log.info("publish.connection_stale", error=type(exc).__name__)
            # Idle past the heartbeat interval: the broker may have dropped it meanwhile.
            _close_quietly(slot)

    def prefill(self, count: int) -> None:
        """Open ``count`` connections now (at most the pool's size), so that the first publishes
        do not each pay for a connection, a channel and the declarations."""
        opened = []
        try:
            for _ in range(count):
                if not self._permits.acquire(blocking=False):
                    break
                opened.append(True)
                self._idle.append(self._open())
        finally:
            for _ in opened:
                self._permits.release()

    def declare(self, entities: tuple[Any, ...]) -> None:
        with Connection(self._url, connect_timeout=self._timeout) as conn:
            conn.ensure_connection(max_retries=3)
            channel = conn.default_channel
            for entity in entities:
                entity.bind(channel).declare()

    def close(self) -> None:
        while True:
            try:
                _close_quietly(self._idle.pop())
            except IndexError:
                return


def _raise_on_nack(method: Any, *args: Any) -> None:
    if method == spec.Basic.Nack:
        raise MessageNacked()


def _close_quietly(slot: _Slot) -> None:
    try:
        slot.connection.release()
    except Exception as exc:  # noqa: BLE001 - it is being thrown away
        log.debug("publish.close_failed", error=type(exc).__name__)


class DeadLetterPublisher:
    """The original task message, unchanged, to ``rapidly.events.dead`` on the input broker."""

    def __init__(
        self, url: str, *, timeout: float = 10.0, pool_size: int = 4, queues: Topology | None = None
    ):
        self._queues = queues or topology()
        self._pool = _ConfirmedPool(
            url, timeout=timeout, size=pool_size, declare=(self._queues.dead_letter_queue,)
        )

    def declare_topology(self) -> None:
        self._pool.declare(self._queues.input_broker_entities)

    def publish(
        self,
        message: Any,
        *,
        reason: str,
        detail: str,
        attempts: int,
        on_sent: Callable[[], None] = _nothing,
    ) -> None:
        """``message`` is the consumed kombu Message; its body bytes are sent as they came."""
        properties = getattr(message, "properties", {}) or {}
        headers = dict(getattr(message, "headers", None) or {})
        headers.update(
            {
                "x-death-reason": reason,
                "x-death-detail": detail[:1000],
                "x-attempts": attempts,
            }
        )
        kept = {key: properties[key] for key in _KEPT_PROPERTIES if properties.get(key) is not None}
        body = message.body
        if isinstance(body, str):
            body = body.encode("utf-8")
        self._pool.publish(
            body,
            on_sent=on_sent,
            exchange="",
            routing_key=DEAD_LETTER_QUEUE_NAME,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
            headers=headers,
            properties=kept,
        )

    def close(self) -> None:
        self._pool.close()


__all__ = ["DeadLetterPublisher", "PublishError"]
