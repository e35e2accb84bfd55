"""From an accepted webhook to a confirmed task message on ``rapidly.events``, and the store of
webhook ids already enqueued.

The message is built by Celery's own ``as_task_v2`` (protocol 2, JSON), so it is exactly what
``Celery.send_task("events.enrich_customer", args=[name, customer_id], queue="rapidly.events")``
would send; it goes out through a small pool of confirmed kombu producers, each used by one
thread at a time, so the event loop never waits on a socket of the broker.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import structlog
from celery import Celery
from kombu.utils.json import dumps as kombu_dumps

from worker.errors import BrokerUnavailable, PublishError
from worker.publishing import (
    ENRICH_CUSTOMER_TASK_NAME,
    TaskMessage,
    TaskPublisher,
    Topology,
)

log = structlog.get_logger()

# CONTRACT.md section 6: 202 within 2 s, or 503.
ENQUEUE_DEADLINE_SECONDS = 2.0
# Per connect, publish and confirm: under the deadline, so that a thread is free again soon
# after a request was answered 503.
BROKER_TIMEOUT_SECONDS = 1.5
READY_CACHE_SECONDS = 1.0
LOCAL_SEEN_MAX = 100_000


class Enqueuer:
    def __init__(
        self, broker_url: str, *, publishers: int = 8, queues: Topology | None = None
    ) -> None:
        self._publisher = TaskPublisher(
            broker_url, timeout=BROKER_TIMEOUT_SECONDS, pool_size=publishers, queues=queues
        )
        self._publishers = publishers
        self._executor = ThreadPoolExecutor(publishers, thread_name_prefix="publish")
        self._probe_executor = ThreadPoolExecutor(1, thread_name_prefix="probe")
        # Only builds messages; never connects (no broker configured on it).
        self._celery = Celery("rapidly-ingress", set_as_current=False)
        self._ready: tuple[float, bool] = (0.0, False)

    def message(self, args: list[Any]) -> TaskMessage:
        """The task message as send_task builds it: Celery's headers and properties, the body
        serialized by kombu's JSON as send_task's producer does."""
        task_id = str(uuid.uuid4())
        headers, properties, body, _ = self._celery.amqp.as_task_v2(
            task_id,
            ENRICH_CUSTOMER_TASK_NAME,
            # A list and None, as send_task passes them (argsrepr and the header then match);
            # the stubs want a tuple and a bool.
            args=args,  # type: ignore[arg-type]
            kwargs={},
            reply_to=self._celery.thread_oid,
            ignore_result=None,  # type: ignore[arg-type]
        )
        return TaskMessage(
            body=kombu_dumps(body).encode("utf-8"), headers=headers, properties=properties
        )

    async def enqueue(self, event_name: str, customer_id: str) -> str:
        """The task id once the broker confirmed the message; BrokerUnavailable otherwise."""
        message = self.message([event_name, customer_id])
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, self._send, message)
        try:
            await asyncio.wait_for(asyncio.shield(work), ENQUEUE_DEADLINE_SECONDS)
        except TimeoutError:
            # The thread may still get it confirmed: the sender then retries a message that is
            # on the broker, and the worker's dedupe by event id makes that harmless.
            raise BrokerUnavailable(
                f"not confirmed within {ENQUEUE_DEADLINE_SECONDS:.0f}s"
            ) from None
        except PublishError as exc:
            raise BrokerUnavailable(str(exc)) from None
        return str(message.headers["id"])

    def warm_up(self) -> None:
        """Blocking: what the first webhooks would otherwise pay for, done before they come
        (Celery builds its message machinery lazily; every pooled connection is opened)."""
        self.message(["customer.created", "00000000-0000-0000-0000-000000000000"])
        self._publisher.prefill(self._publishers)

    def _send(self, message: TaskMessage) -> None:
        try:
            self._publisher.publish_task(message)
        except PublishError as exc:
            # Pooled connections the broker closed while idle (a restart, a failover) fail on
            # first use: drop them all, and one more try on a fresh connection tells a dead
            # broker from stale sockets. (A copy the broker may hold from the first try is
            # deduplicated by the worker: the record is per event id.)
            log.info("webhook.publish_retry", error=str(exc))
            self._publisher.discard_idle()
            self._publisher.publish_task(message)

    async def ready(self) -> bool:
        checked_at, ok = self._ready
        if time.monotonic() - checked_at < READY_CACHE_SECONDS:
            return ok
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(self._probe_executor, self._publisher.probe),
                ENQUEUE_DEADLINE_SECONDS,
            )
            ok = True
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            log.warning("web.broker_unreachable", error=type(exc).__name__)
            ok = False
        self._ready = (time.monotonic(), ok)
        return ok

    def close(self) -> None:
        """Waits for the messages being published (graceful shutdown), then closes."""
        self._executor.shutdown(wait=True)
        self._probe_executor.shutdown(wait=False, cancel_futures=True)
        self._publisher.close()


class SeenWebhooks(Protocol):
    async def seen(self, webhook_id: str) -> bool: ...

    async def mark(self, webhook_id: str) -> None: ...

    async def close(self) -> None: ...


class LocalSeen:
    """This process's ids, bounded: without Redis, replicas do not share them (a retry that
    lands on another replica enqueues again, and the worker's dedupe keeps it to one record)."""

    def __init__(self, ttl: float, *, max_entries: int = LOCAL_SEEN_MAX) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    async def seen(self, webhook_id: str) -> bool:
        with self._lock:
            at = self._ids.get(webhook_id)
            if at is None:
                return False
            if time.monotonic() - at > self._ttl:
                del self._ids[webhook_id]
                return False
            return True

    async def mark(self, webhook_id: str) -> None:
        with self._lock:
            self._ids[webhook_id] = time.monotonic()
            self._ids.move_to_end(webhook_id)
            while len(self._ids) > self._max:
                self._ids.popitem(last=False)

    async def close(self) -> None:
        return None


class RedisSeen:
    """Shared by every replica. Redis down: treated as not seen (the message is enqueued again,
    and the worker's dedupe by event id keeps it to one record), never as a refusal."""

    PREFIX = "rapidly:webhooks:seen:"

    def __init__(self, url: str, ttl: int) -> None:
        import redis.asyncio as aioredis  # noqa: PLC0415 - only with REDIS_URL

        self._ttl = ttl
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=0.5, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        self._redis: Any = aioredis.Redis(connection_pool=pool)

    async def seen(self, webhook_id: str) -> bool:
        try:
            return bool(await self._redis.exists(self.PREFIX + webhook_id))
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            log.warning("webhook.dedupe_unavailable", error=type(exc).__name__)
            return False

    async def mark(self, webhook_id: str) -> None:
        try:
            await self._redis.set(self.PREFIX + webhook_id, b"1", ex=self._ttl)
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            log.warning("webhook.dedupe_mark_failed", error=type(exc).__name__)

    async def close(self) -> None:
        await self._redis.aclose()
