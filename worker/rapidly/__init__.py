"""The Rapidly API: client, typed models, rate limiting and the cached event store.

Knows nothing of brokers or Celery.
"""

from worker.rapidly._client import (
    RapidlyClient,
    is_event_id,
    parse_retry_after,
    validate_customer_id,
    validate_event_id,
)
from worker.rapidly._models import ANCESTOR_FIELDS, Event, EventPage
from worker.rapidly._ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from worker.rapidly._store import ChildCounts, EventStore, RetryPolicy
from worker.rapidly._usage import ApiUsage, api_calls_made, count_calls

__all__ = [
    "ANCESTOR_FIELDS",
    "ApiUsage",
    "ChildCounts",
    "Event",
    "EventPage",
    "EventStore",
    "LocalRateLimiter",
    "RapidlyClient",
    "RateLimiter",
    "RedisRateLimiter",
    "RetryPolicy",
    "api_calls_made",
    "count_calls",
    "is_event_id",
    "parse_retry_after",
    "validate_customer_id",
    "validate_event_id",
]
