"""The integration suite's settings: which broker and Redis it uses (TEST_* variables), its
record queue, and the worker's environment for a test. The processes, the producer and the
record reader are ``devkit``'s."""

from __future__ import annotations

import os
from pathlib import Path

from devkit import (
    CUSTOMER_CREATED,
    DEAD_QUEUE,
    EVENTS_QUEUE,
    TOKEN,
    free_port,
    records_queue,
    reset_queues,
)

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_BROKER_URL = os.environ.get("TEST_REDIS_BROKER_URL", "redis://127.0.0.1:6379/14")
REDIS_STORE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

# A test-only queue that sees every record (the contract only promises the exchange).
ALL_RECORDS = records_queue("test.all_records")


def purge(broker_url: str) -> None:
    reset_queues(broker_url, (EVENTS_QUEUE, DEAD_QUEUE, CUSTOMER_CREATED, ALL_RECORDS))


def worker_env(
    *, api_url: str, broker_url: str, tmp: Path, redis_url: str | None, **extra: str
) -> dict[str, str]:
    env = {
        "RAPIDLY_API_URL": api_url,
        "RAPIDLY_API_TOKEN": TOKEN,
        "BROKER_URL": broker_url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "WORKER_CONCURRENCY": "50",
        # One process unless a test asks for more: the default (one per CPU) depends on the host.
        "WORKER_PROCESSES": "1",
        "NOT_FOUND_WAIT_SECONDS": "2",
        "RETRY_BUDGET_SECONDS": "10",
        "AUTH_RETRY_SECONDS": "1",
        "METRICS_PORT": str(free_port()),
        "HEALTH_DIR": str(tmp / "health"),
        "RAPIDLY_RATE_LIMIT": "2000/s",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env
