"""Topology, confirmed record publishing, dead letters. Knows nothing of HTTP."""

from worker.errors import PublishError
from worker.publishing._publisher import DeadLetterPublisher
from worker.publishing._records import RecordPublisher
from worker.publishing._tasks import TaskMessage, TaskPublisher
from worker.publishing._topology import (
    CUSTOMER_CREATED_QUEUE,
    CUSTOMER_CREATED_QUEUE_NAME,
    CUSTOMER_CREATED_ROUTING_KEY,
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_QUEUE_NAME,
    ENRICH_CUSTOMER_TASK_NAME,
    ENRICHED_EXCHANGE,
    ENRICHED_EXCHANGE_NAME,
    EVENTS_QUEUE,
    EVENTS_QUEUE_NAME,
    QueueType,
    Topology,
    topology,
)

__all__ = [
    "CUSTOMER_CREATED_QUEUE",
    "CUSTOMER_CREATED_QUEUE_NAME",
    "CUSTOMER_CREATED_ROUTING_KEY",
    "DEAD_LETTER_QUEUE",
    "DEAD_LETTER_QUEUE_NAME",
    "ENRICHED_EXCHANGE",
    "ENRICHED_EXCHANGE_NAME",
    "ENRICH_CUSTOMER_TASK_NAME",
    "EVENTS_QUEUE",
    "EVENTS_QUEUE_NAME",
    "DeadLetterPublisher",
    "PublishError",
    "QueueType",
    "RecordPublisher",
    "TaskMessage",
    "TaskPublisher",
    "Topology",
    "topology",
]
