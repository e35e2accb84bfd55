"""The webhook ingress (``rapidly-worker web``, CONTRACT.md section 6): Rapidly's Standard
Webhooks in, confirmed ``events.enrich_customer`` task messages on ``rapidly.events`` out.

Knows nothing of the Rapidly API: the worker finds the system event behind each webhook.
"""

from worker.errors import BrokerUnavailable, NotAWebhook, Unauthorized
from worker.ingress._enqueue import Enqueuer, LocalSeen, RedisSeen
from worker.ingress._server import MAX_BODY_BYTES, ROUTE, Ingress, build, run
from worker.ingress._settings import IngressSettings, load_ingress_settings
from worker.ingress._verify import (
    CUSTOMER_TYPES,
    Webhook,
    WebhookVerifier,
    parse,
)

__all__ = [
    "CUSTOMER_TYPES",
    "MAX_BODY_BYTES",
    "ROUTE",
    "BrokerUnavailable",
    "Enqueuer",
    "Ingress",
    "IngressSettings",
    "LocalSeen",
    "NotAWebhook",
    "RedisSeen",
    "Unauthorized",
    "Webhook",
    "WebhookVerifier",
    "build",
    "load_ingress_settings",
    "parse",
    "run",
]
