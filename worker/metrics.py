"""Prometheus metrics, served on ``METRICS_PORT`` by the worker process; with ``WORKER_PROCESSES``
> 1 the supervisor serves them summed over its children (prometheus_client's multiprocess mode,
switched on by ``PROMETHEUS_MULTIPROC_DIR``, which the supervisor sets for its children)."""

from __future__ import annotations

import errno
import os

import structlog
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

log = structlog.get_logger()

EVENTS = Counter("rapidly_events", "Events processed, by outcome", ["outcome"])
API_REQUESTS = Counter(
    "rapidly_api_requests", "Rapidly API requests, by kind and status", ["kind", "status"]
)
API_SECONDS = Histogram(
    "rapidly_api_request_seconds",
    "Rapidly API request latency",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ENRICH_SECONDS = Histogram(
    "rapidly_enrich_seconds",
    "Time from task start to outcome",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RATELIMIT_WAIT = Histogram(
    "rapidly_ratelimit_wait_seconds",
    "Time waited for API budget",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEAD_LETTERS = Counter("rapidly_dead_letters", "Dead-lettered messages, by reason", ["reason"])
# Labelled by kind, not routing key: user event names are unbounded.
PUBLISHED = Counter("rapidly_records_published", "Records confirmed by the broker", ["kind"])
READY = Gauge(
    "rapidly_worker_ready",
    "1 while the broker is reachable and the API accepts the token",
    multiprocess_mode="livemin",  # several processes: ready only if every live one is
)


# (process id, value) last written to READY: a forked child has a gauge of its own to write.
_ready_shown: list[tuple[int, int]] = []


def show_ready(ready: bool) -> None:
    """``READY`` set to ``ready``, written only when it changes: it is reported after every
    event, and each write of a multiprocess gauge takes a lock and checks the process id."""
    shown = (os.getpid(), 1 if ready else 0)
    if _ready_shown != [shown]:
        READY.set(shown[1])
        _ready_shown[:] = [shown]


def observe_api(kind: str, status: str, seconds: float) -> None:
    API_REQUESTS.labels(kind, status).inc()
    API_SECONDS.labels(kind).observe(seconds)


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> bool:
    """Serve ``/metrics`` on ``port`` (0: off). A port in use is one warning, not a failed start:
    several worker lines on one host (same ``METRICS_PORT``) must all run; the first serves."""
    if not port:
        return False
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        log.warning("metrics.port_in_use", port=port, detail="running without a metrics endpoint")
        return False
    return True
