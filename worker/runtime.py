"""The per-process objects, built once from Settings at worker start and closed at shutdown.

One HTTP client, one event store, one pair of publishers, one dedupe store per process. The task
layer reaches them through ``current()``; nothing else holds globals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from worker import metrics
from worker.dedupe import DedupeStore, LocalDedupeStore, RedeliveryCounter, RedisDedupeStore
from worker.enrichment import EnrichedRecord
from worker.errors import ConfigurationError, WorkerError
from worker.health import HealthState
from worker.logging import register_secret
from worker.publishing import DeadLetterPublisher, PublishError, RecordPublisher, topology
from worker.rapidly import (
    EventStore,
    LocalRateLimiter,
    RapidlyClient,
    RateLimiter,
    RedisRateLimiter,
    RetryPolicy,
)
from worker.rapidly._ratelimit import DispatchingLimiter
from worker.service import EnrichmentService
from worker.settings import Settings

log = structlog.get_logger()

DEAD_LETTER_LEASE_SECONDS = 30


class _FallbackLimiter:
    """The fleet's budget in Redis; the per-process one while Redis is unreachable."""

    def __init__(self, inner: RateLimiter, fallback: RateLimiter):
        self._inner = inner
        self._fallback = fallback

    def acquire(self) -> float:
        try:
            return self._inner.acquire()
        except Exception as exc:  # noqa: BLE001 - a slot of the local budget instead
            log.warning("ratelimit.redis_unavailable", error=type(exc).__name__)
            return self._fallback.acquire()

    def penalize(self, seconds: float) -> None:
        try:
            self._inner.penalize(seconds)
        except Exception as exc:  # noqa: BLE001 - the local fallback still slows this process
            log.warning("ratelimit.penalize_failed", error=type(exc).__name__)
        self._fallback.penalize(seconds)


def fleet_limiter(settings: Settings, redis: Any) -> RateLimiter:
    """The budget of ``RAPIDLY_RATE_LIMIT`` shared by every process using the token: in Redis
    when there is one (the per-process budget while it is unreachable), else per process."""
    local = LocalRateLimiter(settings.rate_limit)
    if redis is None:
        return local
    namespace = settings.redis_namespace
    return _FallbackLimiter(
        RedisRateLimiter(redis, f"rapidly:{namespace}:ratelimit", settings.rate_limit), local
    )


@dataclass
class Runtime:
    settings: Settings
    client: RapidlyClient
    store: EventStore
    publisher: RecordPublisher
    dead_letters: DeadLetterPublisher
    dedupe: DedupeStore
    service: EnrichmentService
    health: HealthState
    redis: Any = None
    dead_dedupe: DedupeStore | None = None
    redeliveries: RedeliveryCounter | None = None
    _probing: bool = False
    closed: bool = False

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        token = settings.rapidly_api_token.get_secret_value()
        register_secret(token)
        namespace = settings.redis_namespace
        redis = None
        local_limiter = LocalRateLimiter(settings.rate_limit)
        limiter: RateLimiter = local_limiter
        dedupe: DedupeStore = LocalDedupeStore(
            ttl=settings.dedupe_ttl_seconds, lease=settings.dedupe_lease_seconds
        )
        # Dead letters are deduplicated by task id: a redelivered message (after a connection
        # loss, while its first run still executes) must not be dead-lettered twice.
        dead_dedupe: DedupeStore = LocalDedupeStore(
            ttl=settings.dedupe_ttl_seconds, lease=DEAD_LETTER_LEASE_SECONDS
        )
        if settings.redis_url:
            redis = redis_client(settings.redis_url, settings.worker_concurrency)
            limiter = _FallbackLimiter(
                RedisRateLimiter(redis, f"rapidly:{namespace}:ratelimit", settings.rate_limit),
                local_limiter,
            )
            dedupe = RedisDedupeStore(
                redis,
                namespace,
                ttl=settings.dedupe_ttl_seconds,
                lease=settings.dedupe_lease_seconds,
            )
            dead_dedupe = RedisDedupeStore(
                redis,
                f"{namespace}:dead",
                ttl=settings.dedupe_ttl_seconds,
                lease=DEAD_LETTER_LEASE_SECONDS,
            )
        admission = DispatchingLimiter(limiter, observe=metrics.RATELIMIT_WAIT.observe)
        client = RapidlyClient(
            settings.rapidly_api_url,
            settings.rapidly_api_token,
            limiter=admission,
            timeout=settings.api_timeout_seconds,
            max_connections=settings.http_connections,
            observer=metrics.observe_api,
            max_body_bytes=settings.api_max_body_bytes,
        )
        policy = RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            budget_seconds=settings.retry_budget_seconds,
            not_found_wait_seconds=settings.not_found_wait_seconds,
            parent_not_found_wait_seconds=min(5.0, settings.not_found_wait_seconds),
            rate_limit_wait_seconds=settings.event_deadline_seconds,
        )
        store = EventStore(
            client,
            policy=policy,
            limiter=admission,
            max_events=settings.cache_max_events,
            event_max_age=settings.event_max_age_seconds,
            counts_max_age=settings.counts_max_age_seconds,
            redis=redis,
            redis_namespace=namespace,
            redis_ttl=settings.cache_ttl_seconds,
        )
        health = HealthState(settings.health_dir)
        queues = topology(settings.rabbitmq_queue_type)
        publisher = RecordPublisher(
            settings.downstream_url,
            timeout=settings.publish_timeout_seconds,
            pool_size=max(4, min(64, settings.worker_concurrency // 4)),
            observer=_downstream_observer(health),
            queues=queues,
            sent_marks=dedupe.sent_marks,
        )
        dead_letters = DeadLetterPublisher(
            settings.broker_url, timeout=settings.publish_timeout_seconds, queues=queues
        )
        service = EnrichmentService(
            store,
            publisher,
            dedupe,
            max_depth=settings.enrich_max_depth,
            lease_wait_seconds=settings.dedupe_lease_seconds + 5,
            on_published=_count_published,
            deadline_seconds=settings.event_deadline_seconds,
        )
        return cls(
            settings,
            client,
            store,
            publisher,
            dead_letters,
            dedupe,
            service,
            health,
            redis,
            dead_dedupe,
            RedeliveryCounter(redis, namespace, ttl=settings.dedupe_ttl_seconds),
        )

    def start(self, *, attempts: int = 30) -> None:
        """Declare the topology (retrying while the brokers come up) and probe the token."""
        for name, declare in (
            ("downstream", self.publisher.declare_topology),
            ("input", self.dead_letters.declare_topology),
        ):
            for attempt in range(1, attempts + 1):
                try:
                    declare()
                    break
                except Exception as exc:
                    if attempt == attempts:
                        raise
                    log.warning(
                        "worker.declare_retry",
                        broker=name,
                        attempt=attempt,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    time.sleep(min(5.0, 0.5 * attempt))
        self.probe_api()

    def probe_api(self) -> bool:
        try:
            self.client.check_token()
        except ConfigurationError as exc:
            self.api_rejected(exc)
            return False
        except WorkerError as exc:  # the API is down, not the token: stay ready, events retry
            log.warning("worker.api_probe_failed", error=str(exc))
            return True
        self.api_accepted()
        return True

    def api_rejected(self, exc: ConfigurationError) -> None:
        log.error(
            "worker.api_rejects_token", error=str(exc), status=exc.status, request_id=exc.request_id
        )
        self.health.api_rejected(str(exc))
        metrics.show_ready(False)
        with _lock:
            if self._probing:
                return
            self._probing = True
        # Readiness comes back on its own once the API accepts again, with or without messages.
        threading.Thread(target=self._probe_until_accepted, daemon=True, name="api-probe").start()

    def _probe_until_accepted(self) -> None:
        try:
            while True:
                time.sleep(self.settings.auth_retry_seconds)
                if self.closed:
                    return
                try:
                    self.client.check_token()
                except ConfigurationError as exc:
                    self.health.api_rejected(str(exc))
                    continue
                except WorkerError:
                    continue  # the API is down: keep probing
                self.api_accepted()
                log.info("worker.api_accepts_token")
                return
        finally:
            with _lock:
                self._probing = False

    def api_accepted(self) -> None:
        self.health.api_accepted()
        metrics.show_ready(self.health.ready)

    def close(self) -> None:
        self.closed = True
        for closer in (self.client.close, self.publisher.close, self.dead_letters.close):
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                log.warning("worker.close_failed", error=type(exc).__name__)
        if self.redis is not None:
            self.redis.close()


def _downstream_observer(health: HealthState) -> Callable[[PublishError | None], None]:
    def observe(error: PublishError | None) -> None:
        if error is None:
            health.downstream_confirmed()
        else:
            if health.ready:
                log.error("worker.downstream_not_confirming", error=str(error)[:300])
            health.downstream_failed(str(error))
        metrics.show_ready(health.ready)

    return observe


def _count_published(record: EnrichedRecord) -> None:
    metrics.PUBLISHED.labels("customer_created" if record.is_customer_created else "other").inc()


_current: Runtime | None = None
_lock = threading.Lock()


def install(runtime: Runtime | None) -> None:
    global _current  # noqa: PLW0603 - the one per-process slot, set at boot
    with _lock:
        _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("worker runtime not started (worker_init did not run)")
    return _current


def redis_client(url: str, concurrency: int) -> Any:
    """The process's one Redis client (cache, limiter, dedupe), with a pool sized for the pool of
    greenlets; single commands take ``worker._redis``'s shorter path."""
    from worker._redis import lean_client  # noqa: PLC0415 - only with REDIS_URL

    return lean_client(
        url,
        # redis-py's default is 100 connections, and a greenlet can hold two (the
        # pre-acquired "sent" mark's and one for a command), plus background threads:
        # at the default concurrency the pool ran dry ("Too many connections", seen as
        # requeued events). Sized for the worst case, and waiting instead of failing.
        max_connections=2 * concurrency + 32,
        timeout=2.0,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        # No PING before a command: it would yield between a record reaching the
        # broker and its "sent" mark reaching Redis (the fault suite saw duplicates).
        health_check_interval=0,
        retry_on_timeout=True,
    )
