"""Confirmed publishing of records and dead letters through pooled producers.

A publish returns only once the broker has taken responsibility for the message: on RabbitMQ the
channel is in confirm mode (``confirm_publish``) and ``publish`` waits for the ack; on Redis the
LPUSH has returned. Each producer (one connection) is used by one caller at a time, so confirms
are never attributed to the wrong message. Never a connection per message.
"""

from __future__ import annotations

from typing import Any

import structlog
from kombu import Connection, Producer
from kombu.pools import ProducerPool

from worker.enrichment import EnrichedRecord
from worker.publishing._topology import (
    CUSTOMER_CREATED_QUEUE,
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_QUEUE_NAME,
    DOWNSTREAM_BROKER_ENTITIES,
    ENRICHED_EXCHANGE,
    INPUT_BROKER_ENTITIES,
)

log = structlog.get_logger()

DEFAULT_POOL_SIZE = 16
# kombu's retry for a publish whose connection dropped: reconnect and send again, within bounds.
PUBLISH_RETRY_POLICY = {
    "max_retries": 5,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 2.0,
}
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


class PublishError(Exception):
    """The broker did not confirm: the input must not be acknowledged."""


def _connection(url: str, timeout: float) -> Connection:
    return Connection(
        url,
        connect_timeout=timeout,
        transport_options={"confirm_publish": True},
        heartbeat=0,
    )


class _ConfirmedPool:
    def __init__(self, url: str, *, timeout: float, size: int):
        self._url = url
        self._timeout = timeout
        self._connection = _connection(url, timeout)
        self._pool = ProducerPool(self._connection.Pool(limit=size), limit=size)

    def publish(self, body: Any, **kwargs: Any) -> None:
        try:
            with self._pool.acquire(block=True, timeout=self._timeout) as producer:
                producer.publish(
                    body,
                    retry=True,
                    retry_policy=PUBLISH_RETRY_POLICY,
                    timeout=self._timeout,
                    confirm_timeout=self._timeout,
                    **kwargs,
                )
        except Exception as exc:
            raise PublishError(f"publish not confirmed: {type(exc).__name__}: {exc}") from exc

    def declare(self, entities: tuple[Any, ...]) -> None:
        with _connection(self._url, self._timeout) as conn:
            conn.ensure_connection(max_retries=3)
            channel = conn.default_channel
            for entity in entities:
                entity.bind(channel).declare()

    def close(self) -> None:
        self._pool.force_close_all()  # type: ignore[attr-defined]  # kombu Resource API, not in the stubs
        self._connection.release()


class RecordPublisher:
    """Records to the ``rapidly.enriched`` topic exchange on the downstream broker."""

    def __init__(self, url: str, *, timeout: float = 10.0, pool_size: int = DEFAULT_POOL_SIZE):
        self._pool = _ConfirmedPool(url, timeout=timeout, size=pool_size)

    def declare_topology(self) -> None:
        self._pool.declare(DOWNSTREAM_BROKER_ENTITIES)

    def publish(self, record: EnrichedRecord) -> None:
        self._pool.publish(
            record.body,
            exchange=ENRICHED_EXCHANGE,
            routing_key=record.routing_key,
            serializer="json",  # content_type application/json, utf-8
            delivery_mode=2,
            message_id=record.event_id,
            headers={"schema": record.schema},
            # Re-declared once per new connection: the binding survives a broker that lost it.
            declare=[ENRICHED_EXCHANGE, CUSTOMER_CREATED_QUEUE],
        )

    def close(self) -> None:
        self._pool.close()


class DeadLetterPublisher:
    """The original task message, unchanged, to ``rapidly.events.dead`` on the input broker."""

    def __init__(self, url: str, *, timeout: float = 10.0, pool_size: int = 4):
        self._pool = _ConfirmedPool(url, timeout=timeout, size=pool_size)

    def declare_topology(self) -> None:
        self._pool.declare(INPUT_BROKER_ENTITIES)

    def publish(self, message: Any, *, reason: str, detail: str, attempts: int) -> None:
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
            exchange="",
            routing_key=DEAD_LETTER_QUEUE_NAME,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
            delivery_mode=2,
            headers=headers,
            declare=[DEAD_LETTER_QUEUE],
            **kept,
        )

    def close(self) -> None:
        self._pool.close()


__all__ = ["DeadLetterPublisher", "Producer", "PublishError", "RecordPublisher"]
