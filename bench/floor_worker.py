"""The floor worker (``python -m bench.floor_worker``): the product's Celery app configuration and
pool, with an ``events.enrich`` task that does only the first steps of the product's work.

``FLOOR_STEP`` chooses them (each includes the ones before):

    celery     nothing: Celery's own cost per message (receive, trace, late ack)
    publish    one record published and confirmed, through the product's RecordPublisher
    dedupe     the claim, the lease's confirm and the sent mark through the product's Redis
               dedupe store, around that publish, as ``worker.service`` does them

No API, no enrichment, no summary log line, no metrics: what is left of the product's CPU per
event above the last step is what those cost.
"""

from __future__ import annotations

from worker._gevent import patch

patch()

import os  # noqa: E402 - after the monkey-patching, as in the product
import sys  # noqa: E402
from typing import Any  # noqa: E402

from celery import Celery, signals  # noqa: E402

import worker.app as product  # noqa: E402 - for its configuration; its signals are undone below
from bench.floor import STEPS  # noqa: E402

# The product's per-process runtime would start at worker_init; the floor has none.
for _signal, _receiver in (
    (signals.worker_init, product._boot),
    (signals.worker_ready, product._ready),
    (signals.worker_shutdown, product._shutdown),
):
    _signal.disconnect(_receiver)

STEP = os.environ.get("FLOOR_STEP", "celery")
BROKER_URL = os.environ["FLOOR_BROKER_URL"]
REDIS_URL = os.environ.get("FLOOR_REDIS_URL", "")

app = Celery("rapidly-floor", set_as_current=True)
app.conf.update({key: product.app.conf[key] for key in product.app.conf.changes})
app.conf.update(broker_url=BROKER_URL, include=[], worker_pool="worker._pool:TaskPool")

# A record of the usual size and shape (a customer.created at depth 1).
_BODY: dict[str, Any] = {
    "schema": "rapidly.enriched_event.v1",
    "event": {
        "id": "",
        "name": "customer.created",
        "source": "system",
        "timestamp": "2026-01-01T00:00:00Z",
        "organization_id": "0a4c8d52-4a49-4b0c-9d17-2d8b3b0b6d11",
        "customer_id": "5b9c2b1e-1f0c-4a34-8f53-0c7d2d5a9e01",
        "external_customer_id": "cus_floor",
        "parent_id": None,
        "label": "customer.created",
        "metadata": {},
        "customer": {"id": "5b9c2b1e-1f0c-4a34-8f53-0c7d2d5a9e01", "email": "a@example.com"},
    },
    "hierarchy": {
        "root_id": "",
        "depth": 0,
        "ancestors": [],
        "complete": True,
        "incomplete_reason": None,
    },
    "children": {"direct": 0, "descendants": 0},
    "enriched_at": "2026-01-01T00:00:00Z",
}

_publisher: Any = None
_dedupe: Any = None


@signals.worker_init.connect
def _boot(**_: Any) -> None:
    global _publisher, _dedupe  # noqa: PLW0603 - one per process, as the product's runtime
    from worker.dedupe import RedisDedupeStore  # noqa: PLC0415
    from worker.publishing import RecordPublisher  # noqa: PLC0415
    from worker.runtime import redis_client  # noqa: PLC0415

    app.tasks["events.enrich"].backend = app.backend  # as the product's worker_init does
    if STEP == "dedupe":
        concurrency = int(app.conf.worker_concurrency or 100)
        _dedupe = RedisDedupeStore(
            redis_client(REDIS_URL, concurrency), "floor", ttl=3600, lease=60
        )
    if STEP != "celery":
        _publisher = RecordPublisher(
            BROKER_URL, sent_marks=None if _dedupe is None else _dedupe.sent_marks
        )


@app.task(name="events.enrich", bind=True, typing=False)
def enrich(self: Any, event_id: str) -> str:
    if _publisher is None:
        return "done"
    from worker.enrichment import EnrichedRecord  # noqa: PLC0415

    body = dict(_BODY, event=dict(_BODY["event"], id=event_id))
    record = EnrichedRecord(event_id=event_id, routing_key="system.customer.created", body=body)
    if _dedupe is None:
        _publisher.publish(record)
        return "published"
    lease, _ = _dedupe.claim_reading(event_id, "rapidly:floor:evt:" + event_id)
    if not _dedupe.confirm(lease):
        return "busy"
    _publisher.publish(record, mark=lease)
    return "published"


def main() -> int:
    if STEP not in STEPS:
        print(f"FLOOR_STEP must be one of {STEPS}", file=sys.stderr)
        return 2
    app.worker_main(
        [
            "worker",
            f"--concurrency={os.environ.get('FLOOR_CONCURRENCY', '100')}",
            f"--queues={product.EVENTS_QUEUE_NAME}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
