"""Records to the downstream broker: batched on RabbitMQ under the gevent pool
(``_batched``), else one at a time through the confirmed pool (``_publisher``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from kombu import Connection

from worker._gevent import _patched
from worker.enrichment import EnrichedRecord
from worker.errors import DedupeUnavailable, PublishError
from worker.publishing._batched import BatchedConfirms, SentMarks
from worker.publishing._publisher import DEFAULT_POOL_SIZE, _ConfirmedPool
from worker.publishing._topology import ENRICHED_EXCHANGE, Topology, topology
from worker.publishing._wire import open_channel, persistent_message, publish_arguments


class RecordPublisher:
    """Records to the ``rapidly.enriched`` topic exchange on the downstream broker.

    On RabbitMQ under the gevent pool the records of one event-loop turn go out together
    (``worker.publishing._batched``); elsewhere each through a pooled connection of its own."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        pool_size: int = DEFAULT_POOL_SIZE,
        observer: Callable[[PublishError | None], None] | None = None,
        queues: Topology | None = None,
        sent_marks: SentMarks | None = None,
        batched: bool | None = None,
    ):
        self._entities = (queues or topology()).downstream_broker_entities
        # Declared again on every new connection: the binding survives a broker that lost it.
        self._pool = _ConfirmedPool(url, timeout=timeout, size=pool_size, declare=self._entities)
        # Told of every confirmed publish (None) and every failure that is not the record's own:
        # readiness follows the downstream broker's answers.
        self._observer = observer
        # Writes the sent marks (``DedupeStore.sent_marks``) of the records ``publish`` is given
        # a ``mark`` for, right after they are written to the broker.
        self._sent_marks = sent_marks
        if batched is None:
            batched = _patched() and Connection(url).transport.driver_type == "amqp"
        self._batches: BatchedConfirms | None = None
        if batched:
            import gevent  # noqa: PLC0415 - only with gevent's patching

            self._batches = BatchedConfirms(
                lambda: open_channel(url, timeout, self._entities)[:2],
                timeout=timeout,
                sent_marks=sent_marks,
                spawn=gevent.spawn,
            )

    def declare_topology(self) -> None:
        self._pool.declare(self._entities)

    def publish(self, record: EnrichedRecord, *, mark: Any = None) -> bool:
        """Returns once the broker confirmed: whether the sent mark of ``mark`` (a dedupe lease)
        landed, written as soon as the record was (True without one). Raises PublishError, or
        DedupeUnavailable when no connection to the marks' store could be had (then nothing
        was written)."""
        try:
            try:
                # As kombu's json serializer writes it (ASCII, default separators).
                body = json.dumps(record.body).encode("utf-8")
            except (TypeError, ValueError) as exc:
                raise PublishError(
                    f"record is not JSON: {exc}", sent=False, unpublishable=True
                ) from exc
            if self._batches is not None:
                message = persistent_message(
                    body,
                    content_type="application/json",
                    content_encoding="utf-8",
                    headers={"schema": record.schema},
                    properties={"message_id": record.event_id},
                )
                try:
                    arguments = publish_arguments(ENRICHED_EXCHANGE.name, record.routing_key)
                except Exception as exc:  # a routing key AMQP cannot carry: the record's own
                    raise PublishError(
                        f"publish not confirmed: {type(exc).__name__}: {exc}",
                        sent=False,
                        unpublishable=True,
                    ) from exc
                marked = self._batches.publish(message, arguments, mark=mark)
            else:
                marked = self._publish_one(body, record, mark)
        except PublishError as exc:
            if self._observer is not None and not exc.unpublishable:
                self._observer(exc)
            raise
        if self._observer is not None:
            self._observer(None)
        return marked

    def _publish_one(self, body: bytes, record: EnrichedRecord, mark: Any) -> bool:
        landed = [True]
        with ExitStack() as stack:
            marks: Callable[[list[Any]], list[bool]] | None = None
            if mark is not None and self._sent_marks is not None:
                try:
                    marks = stack.enter_context(self._sent_marks())
                except Exception as exc:
                    raise DedupeUnavailable(exc) from exc

            def on_sent() -> None:
                if marks is not None:
                    landed[0] = marks([mark])[0]

            self._pool.publish(
                body,
                on_sent=on_sent,
                exchange=ENRICHED_EXCHANGE.name,
                routing_key=record.routing_key,
                content_type="application/json",
                content_encoding="utf-8",
                headers={"schema": record.schema},
                properties={"message_id": record.event_id},
            )
        return landed[0]

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
        self._pool.close()


__all__ = ["RecordPublisher"]
