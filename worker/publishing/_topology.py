"""Every queue and exchange the worker touches, declared once (CONTRACT.md sections 1-3).

``rapidly.events`` is declared exactly as a plain Celery producer declares it when it calls
``send_task(..., queue="rapidly.events")`` (a direct exchange of the same name, durable, no
arguments): any other arguments would make one side's declaration fail with PRECONDITION_FAILED.
For the same reason dead-lettering is done by the worker, not by a broker-side DLX argument.

``RABBITMQ_QUEUE_TYPE=quorum`` (``topology("quorum")``) declares the three queues as replicated
quorum queues instead: the same names, exchanges and bindings plus the one argument
``x-queue-type: quorum``, and nothing else (a delivery limit or a dead-letter exchange would be a
second argument every producer and consumer must repeat; they belong in a policy, see
docs/cluster.md). RabbitMQ refuses a declaration whose ``x-queue-type`` differs from the queue's,
so a producer of a quorum ``rapidly.events`` must declare it as quorum too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kombu import Exchange, Queue

QueueType = Literal["classic", "quorum"]

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


@dataclass(frozen=True)
class Topology:
    """The queues of one queue type; the exchanges are the same for every type."""

    queue_type: QueueType
    events_queue: Queue
    dead_letter_queue: Queue
    customer_created_queue: Queue

    @property
    def input_broker_entities(self) -> tuple[Queue, ...]:
        return (self.events_queue, self.dead_letter_queue)

    @property
    def downstream_broker_entities(self) -> tuple[Exchange | Queue, ...]:
        return (ENRICHED_EXCHANGE, self.customer_created_queue)


def queue_arguments(queue_type: QueueType) -> dict[str, str] | None:
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else None


def topology(queue_type: QueueType = "classic") -> Topology:
    if queue_type == "classic":  # the declarations above, unchanged (contract v1)
        return Topology("classic", EVENTS_QUEUE, DEAD_LETTER_QUEUE, CUSTOMER_CREATED_QUEUE)
    return Topology(
        queue_type,
        _with_arguments(EVENTS_QUEUE, queue_type),
        _with_arguments(DEAD_LETTER_QUEUE, queue_type),
        _with_arguments(CUSTOMER_CREATED_QUEUE, queue_type),
    )


def _with_arguments(queue: Queue, queue_type: QueueType) -> Queue:
    return Queue(
        queue.name,
        queue.exchange,
        routing_key=queue.routing_key,
        durable=True,
        queue_arguments=queue_arguments(queue_type),
    )
