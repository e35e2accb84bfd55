"""The aiohttp application of ``rapidly-worker web`` (CONTRACT.md section 6).

    POST /webhooks/rapidly   size (413) -> signature (401) -> body (400) -> type (202 ignored)
                             -> webhook id seen (202) -> enqueue, confirmed (202) or 503
    GET  /healthz            the process is up
    GET  /readyz             the broker answers (cached for a second)
    GET  /metrics            Prometheus

A webhook id is marked as enqueued only after the broker confirmed its message, so a failed
enqueue (503) is retried by the sender. A retry that arrives while the first delivery is still
being enqueued waits for that one's answer instead of enqueuing a second message.
Neither a body nor a secret is ever logged: only the webhook id, its type and the outcome.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.errors import BrokerUnavailable, NotAWebhook, Unauthorized
from worker.ingress import _metrics as metrics
from worker.ingress._enqueue import (
    Enqueuer,
    LocalSeen,
    RedisSeen,
    SeenWebhooks,
)
from worker.ingress._settings import IngressSettings
from worker.ingress._verify import Webhook, WebhookVerifier, parse
from worker.publishing import topology

log = structlog.get_logger()

ROUTE = "/webhooks/rapidly"
MAX_BODY_BYTES = 1024 * 1024
# Seconds aiohttp waits for requests in flight after SIGTERM: the enqueue deadline, and margin.
SHUTDOWN_TIMEOUT_SECONDS = 10.0


class Ingress:
    """The handlers and what they share; one per process."""

    def __init__(
        self,
        verifier: WebhookVerifier,
        enqueuer: Enqueuer,
        seen: SeenWebhooks,
        *,
        max_in_flight: int = 256,
    ) -> None:
        self._verifier = verifier
        self._enqueuer = enqueuer
        self._seen = seen
        self._pending: dict[str, asyncio.Future[int]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self.stopping = False
        self.warm = False
        self._warming: asyncio.Task[None] | None = None

    def application(self) -> web.Application:
        # The limit is enforced while reading (a chunked body has no Content-Length to check).
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(ROUTE, self.webhook)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    # --- POST /webhooks/rapidly

    async def webhook(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        # A keep-alive connection serves its requests in one task: no context from the last one.
        structlog.contextvars.clear_contextvars()
        metrics.IN_FLIGHT.inc()
        outcome = "unavailable"
        try:
            status, outcome, fields = await self._handle(request)
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.WEBHOOKS.labels(outcome).inc()
            metrics.RESPONSE_SECONDS.observe(time.monotonic() - started)
        level = "info" if status < 400 else "warning"
        getattr(log, level)(
            "webhook.finished",
            status=status,
            outcome=outcome,
            duration_ms=round((time.monotonic() - started) * 1000, 2),
            **fields,
        )
        return web.json_response({"status": outcome}, status=status)

    async def _handle(self, request: web.Request) -> tuple[int, str, dict[str, Any]]:
        raw_id = request.headers.get("webhook-id", "")[:64]
        structlog.contextvars.bind_contextvars(webhook_id=raw_id or None)
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            return 413, "too_large", {"content_length": length}
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return 413, "too_large", {}
        try:
            webhook_id = self._verifier.verify(body, request.headers)
        except Unauthorized as exc:
            return 401, "unauthorized", {"reason": str(exc)}
        try:
            webhook = parse(webhook_id, body)
        except NotAWebhook as exc:
            return 400, "bad_request", {"reason": str(exc)}
        fields: dict[str, Any] = {"type": webhook.type[:64]}
        if not webhook.is_customer_event:
            metrics.IGNORED_TYPES.inc()
            return 202, "ignored", fields
        fields["customer_id"] = webhook.customer_id
        if self.stopping:
            return 503, "unavailable", {**fields, "reason": "shutting down"}
        status, outcome = await self._once(webhook, fields)
        return status, outcome, fields

    async def _once(self, webhook: Webhook, fields: dict[str, Any]) -> tuple[int, str]:
        """One enqueue per webhook id: concurrent deliveries share the first one's answer."""
        webhook_id = webhook.webhook_id
        pending = self._pending.get(webhook_id)
        if pending is not None:
            status = await asyncio.shield(pending)
            return status, "duplicate" if status == 202 else "unavailable"
        seen_started = time.monotonic()
        seen = await self._seen.seen(webhook_id)
        fields["dedupe_ms"] = round((time.monotonic() - seen_started) * 1000, 2)
        if seen:
            return 202, "duplicate"
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[webhook_id] = future
        status = 503
        try:
            async with self._slots:
                enqueue_started = time.monotonic()
                assert webhook.customer_id is not None  # a customer event: parse() set it
                try:
                    task_id = await self._enqueuer.enqueue(webhook.type, webhook.customer_id)
                except BrokerUnavailable as exc:
                    fields["reason"] = str(exc)[:200]
                    return 503, "unavailable"
                enqueue_seconds = time.monotonic() - enqueue_started
                metrics.ENQUEUE_SECONDS.observe(enqueue_seconds)
                fields.update(task_id=task_id, enqueue_ms=round(enqueue_seconds * 1000, 2))
                await self._seen.mark(webhook_id)
                status = 202
                return 202, "accepted"
        finally:
            del self._pending[webhook_id]
            future.set_result(status)

    # --- probes and metrics

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ok = self.warm and not self.stopping and await self._enqueuer.ready()
        metrics.BROKER_READY.set(1 if ok else 0)
        return web.json_response(
            {"status": "ok" if ok else "broker unreachable"}, status=200 if ok else 503
        )

    async def metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    # --- lifecycle

    async def _on_startup(self, app: web.Application) -> None:
        # In the background: the port opens at once (liveness), readiness waits for this.
        self._warming = asyncio.create_task(self._warm_up())

    async def _warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        while not self.stopping:
            try:
                await loop.run_in_executor(None, self._enqueuer.warm_up)
                await self._seen.seen("warm-up")
            except Exception as exc:  # noqa: BLE001 - retried; webhooks are served meanwhile
                log.warning("web.warm_up_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(2.0)
                continue
            self.warm = True
            log.info("web.warm", duration_ms=round((time.monotonic() - started) * 1000, 1))
            return

    async def _on_shutdown(self, app: web.Application) -> None:
        self.stopping = True
        log.info("web.stopping")

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self._enqueuer.close)
        await self._seen.close()
        log.info("web.stopped")


def build(settings: IngressSettings) -> Ingress:
    seen: SeenWebhooks = (
        RedisSeen(settings.redis_url, settings.webhook_dedupe_ttl_seconds)
        if settings.redis_url
        else LocalSeen(settings.webhook_dedupe_ttl_seconds)
    )
    return Ingress(
        WebhookVerifier(settings.secrets),
        Enqueuer(
            settings.broker_url,
            publishers=settings.webhook_publishers,
            queues=topology(settings.rabbitmq_queue_type),
        ),
        seen,
        max_in_flight=settings.webhook_max_in_flight,
    )


def run(settings: IngressSettings) -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting and finish the requests in flight."""
    ingress = build(settings)
    app = ingress.application()

    async def started(_: web.Application) -> None:
        log.info(
            "web.started",
            port=settings.port,
            secrets=len(settings.secrets),
            redis=bool(settings.redis_url),
        )

    app.on_startup.append(started)
    web.run_app(
        app,
        host="0.0.0.0",  # noqa: S104 - the contract: listen on every interface
        port=settings.port,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        handle_signals=True,
        print=None,
    )
