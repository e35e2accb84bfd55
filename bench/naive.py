"""The naive baseline the benchmark compares the product against. Never part of the product.

What a straightforward first implementation would do, with Celery's defaults:

    celery -A bench.naive worker --pool=prefork --concurrency=2

- one synchronous httpx ``GET /api/events/{id}`` per event (one keep-alive ``httpx.Client`` per
  pool process, so the comparison is not about TCP handshakes);
- one ``GET /api/events/{parent_id}`` per ancestor, every time: no cache, no single-flight;
- one list call ``GET /api/events/?parent_id=ID&depth=1&limit=100`` for the counts
  (``child_count`` = ``meta.total``; ``descendant_count`` = total + the sum of the listed
  children's ``child_count``);
- the record published with kombu to the ``rapidly.enriched`` topic exchange (routing key
  ``source.name``, ``message_id`` = event id, persistent, with publisher confirms like the product).

No retries, no rate limiter, no dedupe: the benchmark runs without faults, so it never needs
them, and it keeps the baseline honest about what the product's extra machinery costs.

Environment: ``RAPIDLY_API_URL``, ``RAPIDLY_API_TOKEN``, ``BROKER_URL`` (the same as the product).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import httpx
from celery import Celery, signals
from kombu import Connection, Exchange, Queue

BROKER_URL = os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/bench")
API_URL = os.environ.get("RAPIDLY_API_URL", "http://127.0.0.1:8000").rstrip("/")
TOKEN = os.environ.get("RAPIDLY_API_TOKEN", "")
MAX_DEPTH = 100
SCHEMA = "rapidly.enriched_event.v1"
ANCESTOR_FIELDS = ("id", "name", "source", "label", "timestamp", "parent_id")

EVENTS_QUEUE = Queue(
    "rapidly.events",
    Exchange("rapidly.events", type="direct", durable=True),
    routing_key="rapidly.events",
    durable=True,
)
ENRICHED = Exchange("rapidly.enriched", type="topic", durable=True)

app = Celery("bench-naive", broker=BROKER_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_queues=(EVENTS_QUEUE,),
    task_default_queue="rapidly.events",
    broker_connection_retry_on_startup=True,
)

# Per pool process, created lazily after the fork.
_state: dict[str, Any] = {}


def _http() -> httpx.Client:
    client = _state.get("http")
    if client is None or _state.get("pid") != os.getpid():
        client = httpx.Client(
            base_url=API_URL, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10.0
        )
        _state.update(http=client, pid=os.getpid(), producer=None)
    return client


def _producer() -> Any:
    _http()  # resets the state after a fork
    producer = _state.get("producer")
    if producer is None:
        connection = Connection(BROKER_URL, transport_options={"confirm_publish": True})
        producer = connection.Producer()
        _state["connection"] = connection
        _state["producer"] = producer
    return producer


def _get(event_id: str) -> httpx.Response:
    return _http().get(f"/api/events/{event_id}")


def enrich_one(event_id: str) -> dict[str, Any]:
    response = _get(event_id)
    response.raise_for_status()
    event = response.json()

    chain: list[dict[str, Any]] = []  # nearest parent first
    seen = {event["id"]}
    reason = None
    next_id = event.get("parent_id")
    while next_id is not None:
        if next_id in seen:
            reason = "cycle"
            break
        if len(chain) >= MAX_DEPTH:
            reason = "max_depth"
            break
        parent_response = _get(next_id)
        if parent_response.status_code == 404:
            reason = "parent_not_found"
            break
        parent_response.raise_for_status()
        parent = parent_response.json()
        chain.append(parent)
        seen.add(parent["id"])
        next_id = parent.get("parent_id")
    chain.reverse()

    listing = _http().get(
        "/api/events/", params={"parent_id": event["id"], "depth": 1, "limit": 100}
    )
    listing.raise_for_status()
    page = listing.json()
    total = int(page["meta"]["total"])
    descendants = total + sum(int(child.get("child_count") or 0) for child in page["data"])

    return {
        "schema": SCHEMA,
        "event": event,
        "hierarchy": {
            "root_id": chain[0]["id"] if chain else event["id"],
            "depth": len(chain),
            "ancestors": [{k: a.get(k) for k in ANCESTOR_FIELDS} for a in chain],
            "complete": reason is None,
            "incomplete_reason": reason,
            "child_count": total,
            "descendant_count": descendants,
        },
        "enriched_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }


@app.task(name="events.enrich")
def enrich(event_id: str) -> None:
    record = enrich_one(event_id)
    event = record["event"]
    _producer().publish(
        record,
        exchange=ENRICHED,
        routing_key=f"{event['source']}.{event['name']}",
        declare=[ENRICHED],
        serializer="json",
        delivery_mode=2,
        message_id=event["id"],
        headers={"schema": SCHEMA},
        retry=True,
    )


@signals.worker_ready.connect
def _ready(**_: Any) -> None:
    # The same marker the product logs, so the benchmark waits for both the same way.
    print("worker.consumer_ready", flush=True)
