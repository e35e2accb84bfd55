"""Every queue and exchange the worker touches, declared once (CONTRACT.md sections 1-3).

``rapidly.events`` is declared exactly as a plain Celery producer declares it when it calls
``send_task(..., queue="rapidly.events")`` (a direct exchange of the same name, durable, no
arguments): any other arguments would make one side's declaration fail with PRECONDITION_FAILED.
For the same reason dead-lettering is done by the worker, not by a broker-side DLX argument.
"""

from __future__ import annotations

from kombu import Exchange, Queue

EVENTS_QUEUE_NAME = "rapidly.events"
# The task the webhook ingress enqueues: args [event name, customer id] (CONTRACT.md section 6).
ENRICH_CUSTOMER_TASK_NAME = "events.enrich_customer"
DEAD_LETTER_QUEUE_NAME = "rapidly.events.dead"
ENRICHED_EXCHANGE_NAME = "rapidly.enriched"
CUSTOMER_CREATED_QUEUE_NAME = "rapidly.customer_created"
CUSTOMER_CREATED_ROUTING_KEY = "system.customer.created"

EVENTS_EXCHANGE = Exchange(EVENTS_QUEUE_NAME, type="direct", durable=True)
EVENTS_QUEUE = Queue(
    EVENTS_QUEUE_NAME, EVENTS_EXCHANGE, routing_key=EVENTS_QUEUE_NAME, durable=True
)

# Dead letters go through the default exchange straight to their queue, beside rapidly.events.
DEAD_LETTER_QUEUE = Queue(
    DEAD_LETTER_QUEUE_NAME,
    Exchange(DEAD_LETTER_QUEUE_NAME, type="direct", durable=True),
    routing_key=DEAD_LETTER_QUEUE_NAME,
    durable=True,
)

ENRICHED_EXCHANGE = Exchange(ENRICHED_EXCHANGE_NAME, type="topic", durable=True)
CUSTOMER_CREATED_QUEUE = Queue(
    CUSTOMER_CREATED_QUEUE_NAME,
    ENRICHED_EXCHANGE,
    routing_key=CUSTOMER_CREATED_ROUTING_KEY,
    durable=True,
)

# What the worker declares at start-up, per broker.
INPUT_BROKER_ENTITIES = (EVENTS_QUEUE, DEAD_LETTER_QUEUE)
DOWNSTREAM_BROKER_ENTITIES = (ENRICHED_EXCHANGE, CUSTOMER_CREATED_QUEUE)
