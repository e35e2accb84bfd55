"""Prometheus metrics of the web process, served on its own port at ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# outcome: accepted | duplicate | ignored | unauthorized | bad_request | too_large | unavailable
WEBHOOKS = Counter("rapidly_webhooks", "Webhook requests answered, by outcome", ["outcome"])
# Labelled by nothing: a sender decides the type, and an unbounded label would be a leak.
IGNORED_TYPES = Counter(
    "rapidly_webhooks_ignored_types", "Authentic webhooks of a type the ingress does not handle"
)
RESPONSE_SECONDS = Histogram(
    "rapidly_webhook_response_seconds",
    "Time from the request to its answer",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
ENQUEUE_SECONDS = Histogram(
    "rapidly_webhook_enqueue_seconds",
    "Time for the broker to confirm a task message",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2),
)
IN_FLIGHT = Gauge("rapidly_webhooks_in_flight", "Webhook requests being handled")
BROKER_READY = Gauge("rapidly_webhook_broker_ready", "1 while the broker answered the last probe")
