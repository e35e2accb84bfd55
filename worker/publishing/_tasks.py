"""Task messages to ``rapidly.events`` on the input broker, confirmed one by one: the webhook
ingress's ``events.enrich_customer`` tasks, the backfill's ``events.enrich`` tasks and replayed dead
letters. The same confirmed pool as the record publisher (``_publisher``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kombu import Connection

from worker.publishing._publisher import _KEPT_PROPERTIES, _ConfirmedPool
from worker.publishing._topology import EVENTS_EXCHANGE, EVENTS_QUEUE_NAME, Topology, topology


class TaskPublisher:
    """Task messages to ``rapidly.events`` on the input broker, confirmed one by one: the
    backfill's new ``events.enrich`` tasks and replayed dead letters."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        pool_size: int = 1,
        queues: Topology | None = None,
    ):
        self._url = url
        self._timeout = timeout
        self._queues = queues or topology()
        self._pool = _ConfirmedPool(
            url, timeout=timeout, size=pool_size, declare=(self._queues.events_queue,)
        )

    def declare_topology(self) -> None:
        self._pool.declare(self._queues.input_broker_entities)

    def prefill(self, count: int) -> None:
        """Open up to ``count`` pooled connections now (the webhook ingress's first webhooks)."""
        self._pool.prefill(count)

    def discard_idle(self) -> None:
        """Close every idle connection: after one failed, the broker most likely restarted (or
        its vhost went away) under all of them."""
        self._pool.close()

    def probe(self) -> None:
        """Raises unless a new connection to the broker opens now (readiness)."""
        connection = Connection(self._url, connect_timeout=self._timeout, heartbeat=0)
        try:
            connection.ensure_connection(max_retries=1)
            connection.channel().close()  # type: ignore[attr-defined]  # kombu's stub lacks it
        finally:
            connection.release()

    def publish_task(self, message: TaskMessage) -> None:
        """Returns once the broker confirmed the message; PublishError otherwise."""
        self._pool.publish(
            message.body,
            exchange=EVENTS_EXCHANGE.name,
            routing_key=EVENTS_QUEUE_NAME,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=message.headers,
            properties=message.properties,
        )

    def close(self) -> None:
        self._pool.close()


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """A task message as it travels: body bytes, content type and encoding, headers and the
    AMQP properties that make it the same task (see ``_KEPT_PROPERTIES``)."""

    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any]
    content_type: str = "application/json"
    content_encoding: str = "utf-8"

    @classmethod
    def from_consumed(cls, message: Any, headers: dict[str, Any]) -> TaskMessage:
        """A consumed kombu Message, its body bytes as they came, with ``headers`` instead of
        its own."""
        properties = getattr(message, "properties", {}) or {}
        body = message.body
        if isinstance(body, str):
            body = body.encode("utf-8")
        return cls(
            body=bytes(body),
            headers=headers,
            properties={
                key: properties[key] for key in _KEPT_PROPERTIES if properties.get(key) is not None
            },
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
        )


__all__ = ["TaskMessage", "TaskPublisher"]
