"""What publishing writes on an AMQP connection: the connection and channel it publishes on, and
the ``basic.publish`` frames, written without kombu's producer."""

from __future__ import annotations

from typing import Any

import amqp
from amqp import spec
from amqp.exceptions import RecoverableConnectionError
from amqp.serialization import dumps as encode_arguments
from kombu import Connection

# Heartbeats on publishing connections: a broker that vanished without a FIN (a dead host, a
# dropped NAT entry) is noticed within about two intervals instead of at the next write's TCP
# timeout. A pooled connection (``_publisher._ConfirmedPool``) has no loop to service them: it
# checks them each time it is taken from the pool (``heartbeat_check``), and the confirm wait
# reads frames, heartbeats included, while it waits; a batched one's reader services them.
# A connection idle past the broker's grace (twice the interval) is closed by the broker and
# replaced on its next use: its publish fails before sending and the message is requeued.
PUBLISH_HEARTBEAT_SECONDS = 30


def open_channel(
    url: str, timeout: float, declare: tuple[Any, ...]
) -> tuple[Connection, Any, bool]:
    """A connection, its channel (in confirm mode on RabbitMQ: the third item says so) and the
    declarations made on it."""
    connection = Connection(url, connect_timeout=timeout, heartbeat=PUBLISH_HEARTBEAT_SECONDS)
    try:
        connection.ensure_connection(max_retries=2, interval_start=1, interval_step=1)
        channel = connection.channel()
        confirms = connection.transport.driver_type == "amqp"
        if confirms:
            channel.confirm_select()  # type: ignore[attr-defined]  # py-amqp Channel
        for entity in declare:
            entity.bind(channel).declare()
        return connection, channel, confirms
    except BaseException:
        connection.release()
        raise


def persistent_message(
    body: bytes,
    *,
    content_type: str,
    content_encoding: str,
    headers: dict[str, Any],
    properties: dict[str, Any],
) -> amqp.Message:
    """``body`` as a persistent message (delivery mode 2) with kombu's default priority and
    ``properties`` (message_id, correlation_id...), as kombu's producer would send it."""
    return amqp.Message(
        body,
        content_type=content_type,
        content_encoding=content_encoding,
        application_headers=headers,
        delivery_mode=2,
        **{"priority": 0, **properties},
    )


def publish_arguments(exchange: str, routing_key: str) -> bytes:
    """Basic.Publish's encoded arguments, cached by (exchange, routing key)."""
    arguments = _PUBLISH_ARGUMENTS.get((exchange, routing_key))
    if arguments is None:
        arguments = encode_arguments("Bssbb", (0, exchange, routing_key, False, False))
        if len(_PUBLISH_ARGUMENTS) >= _MAX_PUBLISH_ARGUMENTS:
            _PUBLISH_ARGUMENTS.clear()
        _PUBLISH_ARGUMENTS[(exchange, routing_key)] = arguments
    return arguments


def write_basic_publish(
    channel: Any, message: amqp.Message, exchange: str, routing_key: str, *, timeout: float
) -> None:
    """What py-amqp's ``basic_publish`` writes, without the calls around it that a confirmed
    publish does not need: kombu's producer (serializer lookup, declarations, batch state) and
    the zero-timeout read for a ``connection.blocked`` notice before every publish (the confirm
    wait reads and dispatches any such frame). The frames are the same; a test compares them
    with kombu's."""
    connection = channel.connection
    if connection is None:
        raise RecoverableConnectionError("channel closed")
    arguments = publish_arguments(exchange, routing_key)
    try:
        with connection.transport.having_timeout(timeout):
            connection.frame_writer(1, channel.channel_id, spec.Basic.Publish, arguments, message)
    except StopIteration:
        raise RecoverableConnectionError("connection already closed") from None
    except TimeoutError:
        # As py-amqp: a write that timed out leaves the connection unusable.
        raise RecoverableConnectionError("basic_publish: timed out") from None


# Basic.Publish's encoded arguments by (exchange, routing key): routing keys come from event
# names, a few dozen in practice; the bound only keeps an unusual workspace from growing it.
_PUBLISH_ARGUMENTS: dict[tuple[str, str], bytes] = {}
_MAX_PUBLISH_ARGUMENTS = 4096
