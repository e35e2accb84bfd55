"""Records, dead letters and task messages reach the broker exactly as kombu's producer sends
them: the publisher writes Basic.Publish itself (worker/publishing/_publisher.py), and
consumers must not see the difference."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

import redis
from kombu import Connection, Exchange, Producer, Queue

from tests.integration.conftest import require
from tests.integration.harness import REDIS_BROKER_URL
from worker.enrichment import EnrichedRecord
from worker.publishing import RecordPublisher
from worker.publishing._publisher import DeadLetterPublisher
from worker.publishing._topology import DEAD_LETTER_QUEUE_NAME, ENRICHED_EXCHANGE


def _record(event_id: str) -> EnrichedRecord:
    body = {
        "schema": "rapidly.enriched_event/v1",
        "event": {"id": event_id, "name": "customer.created", "label": "caf\u00e9 \u2603"},
        "hierarchy": {"root_id": event_id, "depth": 0, "ancestors": [], "child_count": 3},
        "enriched_at": "2026-12-01T00:00:00.000000Z",
    }
    return EnrichedRecord(event_id=event_id, routing_key="system.customer.created", body=body)


def _take(connection: Connection, queue: Queue) -> Any:
    message = queue.bind(connection.default_channel).get(no_ack=True)
    assert message is not None
    return message


def _wire(message: Any) -> tuple[Any, str, str, dict[str, Any], dict[str, Any]]:
    properties = dict(message.properties)
    properties.pop("delivery_tag", None)
    # kombu's Redis transport stamps each message with its own delivery tag and info.
    for key in ("delivery_info", "body_encoding"):
        properties.pop(key, None)
    return (
        message.body,
        message.content_type,
        message.content_encoding,
        properties,
        dict(message.headers),
    )


def test_a_record_is_on_the_wire_as_kombus_producer_sends_it(amqp_url: str) -> None:
    _compare_records(amqp_url)


def test_a_record_is_on_the_wire_as_kombus_producer_sends_it_on_redis() -> None:
    require("redis")
    redis.Redis.from_url(REDIS_BROKER_URL).flushdb()
    _compare_records(REDIS_BROKER_URL)


def _compare_records(url: str) -> None:
    queue = Queue(
        f"test.wire.{uuid.uuid4().hex[:8]}",
        exchange=ENRICHED_EXCHANGE,
        routing_key="system.#",
        auto_delete=False,
    )
    record = _record("evt_wire")
    with Connection(url) as connection:
        queue.bind(connection.default_channel).declare()
        try:
            publisher = RecordPublisher(url, timeout=5.0)
            publisher.publish(record)
            publisher.close()
            # What the publisher sent through kombu's producer before it wrote frames itself.
            Producer(connection.default_channel).publish(
                record.body,
                exchange=ENRICHED_EXCHANGE,
                routing_key=record.routing_key,
                serializer="json",
                delivery_mode=2,
                message_id=record.event_id,
                headers={"schema": record.schema},
            )
            ours, kombus = _take(connection, queue), _take(connection, queue)
            assert _wire(ours) == _wire(kombus)
            assert json.loads(ours.body) == record.body
            assert ours.properties["message_id"] == "evt_wire"
            assert ours.properties["delivery_mode"] == 2
            assert ours.content_type == "application/json"
        finally:
            queue.bind(connection.default_channel).delete()


def test_a_dead_letter_is_on_the_wire_as_kombus_producer_sends_it(amqp_url: str) -> None:
    consumed = SimpleNamespace(  # a consumed task message, as the dead-letter publisher reads it
        body=b'[["evt_1"], {}, {}]',
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": "events.enrich", "id": "t-1"},
        properties={"correlation_id": "t-1", "priority": 0, "reply_to": "r"},
    )

    with Connection(amqp_url) as connection:
        dead = Queue(DEAD_LETTER_QUEUE_NAME, exchange=Exchange(""), routing_key="")
        dead.bind(connection.default_channel).declare()
        dead.bind(connection.default_channel).purge()
        publisher = DeadLetterPublisher(amqp_url, timeout=5.0)
        publisher.publish(consumed, reason="event_not_found", detail="404", attempts=1)
        publisher.close()
        headers = dict(consumed.headers)
        headers.update(
            {"x-death-reason": "event_not_found", "x-death-detail": "404", "x-attempts": 1}
        )
        Producer(connection.default_channel).publish(
            consumed.body,
            exchange="",
            routing_key=DEAD_LETTER_QUEUE_NAME,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            headers=headers,
            correlation_id="t-1",
            reply_to="r",
        )
        ours, kombus = _take(connection, dead), _take(connection, dead)
        assert _wire(ours) == _wire(kombus)
        assert ours.headers["x-death-reason"] == "event_not_found"
