"""The one Celery app: its configuration, its signals, and the task base class.

Configured in one block (``configure``): JSON only, late acks, reject on worker lost, prefetch 1
per slot of an I/O-bound pool, connection retries forever, our logging kept in charge. Task
modules are imported explicitly (no autodiscovery). Cross-cutting behaviour lives here, not in
tasks: error mapping (``EnrichTask``), dead-lettering of the original message
(``DeadLetteringRequest``, ``DeadLetteringConsumer``), log context, the summary line, health.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from typing import Any

import structlog
from celery import Celery, Task, signals
from celery.exceptions import Reject
from celery.worker.consumer import Consumer
from celery.worker.request import Request

from worker import metrics, runtime
from worker.dedupe import Claim, Lease
from worker.errors import (
    ConfigurationError,
    EventNotFound,
    InvalidMessage,
    PermanentError,
    RedeliveriesExhausted,
    TransientError,
)
from worker.health import HEARTBEAT_INTERVAL_SECONDS
from worker.publishing import ENRICH_CUSTOMER_TASK_NAME, EVENTS_QUEUE, EVENTS_QUEUE_NAME, topology
from worker.rapidly._store import api_calls
from worker.settings import Settings

log = structlog.get_logger()

TASK_NAME = "events.enrich"
CUSTOMER_TASK_NAME = ENRICH_CUSTOMER_TASK_NAME
# Back-off before a message goes back to the queue for a reason that is not its own
# (downstream broker down, dedupe store down): avoids a hot redelivery loop.
REQUEUE_DELAY_SECONDS = 2.0
# The consumer loop drains every 2 s at most; older than this means it is not consuming.
LOOP_STALE_SECONDS = 10.0

app = Celery("rapidly-enrichment", set_as_current=True)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    result_accept_content=["json"],
    task_ignore_result=True,
    task_store_errors_even_if_ignored=False,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_acks_on_failure_or_timeout=True,
    task_default_queue=EVENTS_QUEUE_NAME,
    task_queues=(EVENTS_QUEUE,),
    task_create_missing_queues=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
    worker_send_task_events=False,
    worker_enable_remote_control=False,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    # After a reconnect Celery would restore the prefetch count from finishing task greenlets
    # (basic_qos on the consumer socket while the consumer loop reads it): under gevent that is
    # ConcurrentObjectUseError, seen as a frozen or exited worker in the fault suite.
    worker_enable_prefetch_count_reduction=False,
    worker_consumer="worker.app:DeadLetteringConsumer",
    broker_connection_retry=True,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    broker_channel_error_retry=True,
    enable_utc=True,
)


def configure(settings: Settings) -> Celery:
    app.conf.update(
        broker_url=settings.broker_url,
        # quorum: the consumer declares x-queue-type quorum, and Celery, seeing it, switches to
        # per-consumer prefetch (quorum queues have no global QoS; worker_detect_quorum_queues).
        task_queues=(topology(settings.rabbitmq_queue_type).events_queue,),
        worker_concurrency=settings.worker_concurrency,
        worker_prefetch_multiplier=settings.worker_prefetch_multiplier,
        # Redis redelivers an unacked message after this; it must outlast the longest event
        # (deadline plus retries) or a slow event would be delivered twice.
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            "confirm_publish": True,
        },
        rapidly_settings=settings,
    )
    import tasks.enrich  # noqa: PLC0415 - registers events.enrich, explicitly
    import tasks.enrich_customer  # noqa: F401, PLC0415 - and events.enrich_customer

    return app


def settings_of(celery_app: Celery) -> Settings:
    settings = celery_app.conf.get("rapidly_settings")
    if not isinstance(settings, Settings):
        raise RuntimeError("worker.app.configure(settings) was not called")
    return settings


# --- the gate for a rejected token: one probe per interval, the rest go back to the queue


class AuthGate:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._reopen_at = 0.0

    def admit(self, retry_seconds: float) -> bool:
        with self._lock:
            if not self._closed:
                return True
            now = time.monotonic()
            if now < self._reopen_at:
                return False
            self._reopen_at = now + retry_seconds  # this caller is the probe
            return True

    def reject(self, retry_seconds: float) -> None:
        with self._lock:
            self._closed = True
            self._reopen_at = time.monotonic() + retry_seconds

    @property
    def closed(self) -> bool:
        return self._closed

    def accept(self) -> bool:
        with self._lock:
            was_closed, self._closed = self._closed, False
            return was_closed


auth_gate = AuthGate()


class DeadLetter(Exception):
    def __init__(self, reason: str, detail: str, attempts: int):
        self.reason = reason
        self.detail = detail
        self.attempts = attempts
        super().__init__(reason, detail, attempts)


def _attempts(exc: BaseException) -> int:
    return int(getattr(exc, "attempts", 1) or 1)


class EnrichTask(Task[Any, Any]):
    """Maps the service's typed errors to what happens to the message."""

    Request = "worker.app:DeadLetteringRequest"
    acks_late = True
    reject_on_worker_lost = True
    typing = False  # arguments are checked here, so a bad message is dead-lettered, not crashed
    throws = (DeadLetter,)  # expected outcomes: logged without a traceback

    def arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, str], tuple[Any, ...]]:
        """(log context, arguments for ``run``); InvalidMessage when the message has others."""
        event_id = _event_id_from(args, kwargs)
        return {"event_id": str(event_id)[:64]}, (event_id,)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rt = runtime.current()
        settings = rt.settings
        started = time.monotonic()
        api_calls.set(0)
        summary: dict[str, Any] = {}
        counted: str | None = None
        try:
            context, run_args = self.arguments(args, kwargs)
            structlog.contextvars.bind_contextvars(**context)
            if not auth_gate.admit(settings.auth_retry_seconds) or (
                # This message is the gate's probe: the list endpoint answers first, so that a
                # wrong RAPIDLY_API_URL (GETs answer 404) does not dead-letter it event_not_found.
                auth_gate.closed and not rt.probe_api()
            ):
                time.sleep(min(settings.auth_retry_seconds, 5.0))
                summary = {"outcome": "requeued", "reason": "api_rejects_token"}
                raise Reject("API rejects the token", requeue=True)
            counted = self._count_redelivery(rt)
            outcome = self.run(*run_args)
            if auth_gate.accept():
                log.info("worker.api_accepts_token")
            rt.api_accepted()
            record = outcome.record
            summary = {"outcome": outcome.outcome}
            if record is not None:
                hierarchy = record.body["hierarchy"]
                summary.update(
                    routing_key=record.routing_key,
                    depth=hierarchy["depth"],
                    complete=hierarchy["complete"],
                    incomplete_reason=hierarchy["incomplete_reason"],
                )
            return outcome.outcome
        except Reject:
            raise
        except EventNotFound as exc:
            if not rt.probe_api():  # the URL or token went wrong, not the event
                auth_gate.reject(settings.auth_retry_seconds)
                summary = {"outcome": "requeued", "reason": "configuration", "detail": str(exc)}
                time.sleep(min(settings.auth_retry_seconds, 5.0))
                raise Reject(str(exc), requeue=True) from None
            summary = {"outcome": "dead_lettered", "reason": exc.reason, "detail": str(exc)}
            raise DeadLetter(exc.reason, str(exc), _attempts(exc)) from None
        except PermanentError as exc:
            detail = str(exc)
            summary = {"outcome": "dead_lettered", "reason": exc.reason, "detail": detail}
            raise DeadLetter(exc.reason, detail, _attempts(exc)) from None
        except ConfigurationError as exc:
            auth_gate.reject(settings.auth_retry_seconds)
            rt.api_rejected(exc)
            summary = {"outcome": "requeued", "reason": "configuration", "detail": str(exc)}
            time.sleep(min(settings.auth_retry_seconds, 5.0))
            raise Reject(str(exc), requeue=True) from None
        except TransientError as exc:
            summary = {"outcome": "requeued", "reason": type(exc).__name__, "detail": str(exc)}
            time.sleep(REQUEUE_DELAY_SECONDS)
            raise Reject(str(exc), requeue=True) from None
        except Exception as exc:
            # A bug, not the event's fault, but nothing may be lost: keep it replayable.
            log.exception("enrich.internal_error")
            detail = f"internal error: {type(exc).__name__}"
            summary = {"outcome": "dead_lettered", "reason": "internal_error", "detail": detail}
            raise DeadLetter("internal_error", detail, 1) from None
        finally:
            duration = time.monotonic() - started
            outcome_name = summary.get("outcome", "unknown")
            if counted is not None:
                _settle_redelivery(rt, counted, requeued=outcome_name == "requeued")
            metrics.EVENTS.labels(outcome_name).inc()
            metrics.ENRICH_SECONDS.observe(duration)
            level = "warning" if outcome_name in ("dead_lettered", "requeued") else "info"
            getattr(log, level)(
                "enrich.finished",
                api_calls=api_calls.get(),
                duration_ms=round(duration * 1000, 1),
                **summary,
            )

    def _count_redelivery(self, rt: runtime.Runtime) -> str | None:
        """Bounds the loop a poison message would make (it crashes or kills the worker each
        time): the key it was counted under, or None when it was not counted.

        Counted per task message (its task id, which a redelivery keeps), not per event: a
        producer may send one ID many times, and every copy comes back after a kill."""
        counter = rt.redeliveries
        delivery_info = getattr(self.request, "delivery_info", None) or {}
        if counter is None or not delivery_info.get("redelivered"):
            return None
        task_id = self.request.id
        if not isinstance(task_id, str) or len(task_id) > 64:
            return None
        replays = _replays({"x-replays": getattr(self.request, "x-replays", 0)})
        key = f"{task_id}:replay:{replays}" if replays else task_id
        try:
            deliveries = counter.count(key)
        except Exception as exc:  # noqa: BLE001 - uncounted this time, never lost
            log.warning("redelivery.count_failed", error=type(exc).__name__)
            return None
        if deliveries > rt.settings.event_max_redeliveries:
            raise RedeliveriesExhausted(key, deliveries=deliveries)
        return key


def _settle_redelivery(rt: runtime.Runtime, key: str, *, requeued: bool) -> None:
    """A requeue for the deployment's reasons gives its count back; an outcome clears it."""
    counter = rt.redeliveries
    if counter is None:
        return
    try:
        if requeued:
            counter.uncount(key)
        else:
            counter.forget(key)
    except Exception as exc:  # noqa: BLE001 - the key expires with the dedupe TTL
        log.warning("redelivery.settle_failed", error=type(exc).__name__)


class CustomerEventTask(EnrichTask):
    """``events.enrich_customer``: the same mapping; two arguments, the webhook's type and
    the customer id."""

    def arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, str], tuple[Any, ...]]:
        if len(args) == 2 and not kwargs:
            name, customer_id = args
        elif not args and set(kwargs) == {"event_name", "customer_id"}:
            name, customer_id = kwargs["event_name"], kwargs["customer_id"]
        else:
            raise InvalidMessage(
                "invalid_arguments",
                f"expected two arguments, the event name and the customer id; got {len(args)} "
                f"positional and keywords {sorted(kwargs)[:5]}",
            )
        context = {"event_name": str(name)[:64], "customer_id": str(customer_id)[:64]}
        return context, (name, customer_id)


def _event_id_from(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if len(args) == 1 and not kwargs:
        return args[0]
    if not args and set(kwargs) == {"event_id"}:
        return kwargs["event_id"]
    raise InvalidMessage(
        "invalid_arguments",
        f"expected one argument, the event id; got {len(args)} positional and "
        f"keywords {sorted(kwargs)[:5]}",
    )


class DeadLetteringRequest(Request):
    """Dead-letters the original message (not a copy rebuilt from the request) before acking."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        exc = exc_info.exception
        exc = getattr(exc, "exc", exc)  # ExceptionWithTraceback wraps it
        if not isinstance(exc, DeadLetter):
            return super().on_failure(exc_info, send_failed_event, return_ok)
        from celery.worker.state import task_ready  # noqa: PLC0415

        task_ready(self)
        args: list[Any] = list(getattr(self, "args", None) or ())
        event_id = args[0] if len(args) == 1 else None
        if dead_letter(self.message, exc.reason, exc.detail, exc.attempts, event_id=event_id):
            self.acknowledge()
        else:
            self.reject(requeue=True)
        return None


def dead_letter(
    message: Any, reason: str, detail: str, attempts: int, *, event_id: object = None
) -> bool:
    """Publish ``message`` unchanged to rapidly.events.dead, at most once per task message.

    True when the message may be acknowledged: the broker confirmed the dead letter, or an earlier
    delivery of the same message was dead-lettered already. False: put it back on the queue.
    """
    rt = runtime.current()
    headers = getattr(message, "headers", None) or {}
    task_id = headers.get("id") if isinstance(headers, dict) else None
    key = str(task_id) if task_id else hashlib.sha256(_body_bytes(message)).hexdigest()
    # A replayed dead letter (``rapidly-worker replay``) keeps its task id: without the replay
    # count in the key, its second failure would look like a duplicate and vanish.
    replays = _replays(headers)
    if replays:
        key = f"{key}:replay:{replays}"
    fields = {"reason": reason, "task_id": task_id, "event_id": _short(event_id)}
    dedupe = rt.dead_dedupe
    lease: Lease | None = None
    if dedupe is not None:
        try:
            claim = dedupe.claim(key)
        except Exception as exc:  # noqa: BLE001 - without the store a duplicate is possible
            log.error("deadletter.dedupe_unavailable", error=type(exc).__name__, **fields)
            time.sleep(REQUEUE_DELAY_SECONDS)
            return False
        if claim is Claim.DONE:
            log.info("deadletter.duplicate", **fields)
            return True
        if claim is Claim.BUSY:  # the first delivery is being dead-lettered right now
            time.sleep(REQUEUE_DELAY_SECONDS)
            return False
        lease = claim
    try:
        rt.dead_letters.publish(
            message,
            reason=reason,
            detail=detail,
            attempts=attempts,
            on_sent=_marker(dedupe, lease),
        )
    except Exception as exc:  # noqa: BLE001 - not confirmed: the message goes back, not lost
        if dedupe is not None and lease is not None:
            with contextlib.suppress(Exception):
                dedupe.release(lease)
        log.error("deadletter.failed", error=f"{type(exc).__name__}: {exc}", **fields)
        time.sleep(REQUEUE_DELAY_SECONDS)
        return False
    metrics.DEAD_LETTERS.labels(reason).inc()
    log.warning("deadletter.sent", detail=detail, attempts=attempts, **fields)
    return True


def _replays(headers: Any) -> int:
    try:
        return max(0, int(headers.get("x-replays") or 0)) if isinstance(headers, dict) else 0
    except (TypeError, ValueError):
        return 0


def _marker(dedupe: Any, lease: Lease | None) -> Any:
    def mark() -> None:
        if dedupe is not None and lease is not None:
            with contextlib.suppress(Exception):  # the lease then expires; a redelivery repeats
                dedupe.mark_sent(lease)

    return mark


def _short(value: object) -> str | None:
    return None if value is None else str(value)[:64]


def _body_bytes(message: Any) -> bytes:
    body = getattr(message, "body", b"")
    return body.encode("utf-8", "replace") if isinstance(body, str) else bytes(body or b"")


class DeadLetteringConsumer(Consumer):
    """Messages Celery cannot run (wrong content type, undecodable body, unknown task, not a
    Celery message) are dead-lettered with a reason instead of being dropped; none is executed."""

    # Without Celery's native delayed delivery, which it adds for quorum queues (28 more
    # exchanges and quorum queues per broker URL): this worker never sends a task with an eta or
    # a countdown, its retries wait inside the task.
    Blueprint = type(
        "Blueprint",
        (Consumer.Blueprint,),
        {
            "default_steps": [
                step
                for step in Consumer.Blueprint.default_steps
                if not step.endswith(":DelayedDelivery")
            ]
        },
    )

    def _dead_letter_raw(self, message: Any, reason: str, detail: str) -> None:
        if dead_letter(message, reason, detail, 0):
            message.ack()
        else:
            message.reject(requeue=True)

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        self._dead_letter_raw(
            message,
            "malformed_message",
            f"body could not be decoded as {message.content_type}: {type(exc).__name__}",
        )

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter_raw(message, "malformed_message", "not a Celery task message")

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        name = str((message.headers or {}).get("task", "?"))[:100]
        self._dead_letter_raw(message, "unknown_task", f"no task named {name!r} on this queue")

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        from kombu.exceptions import ContentDisallowed  # noqa: PLC0415

        if isinstance(exc, ContentDisallowed):
            self._dead_letter_raw(
                message,
                "content_type_not_allowed",
                f"content type {message.content_type!r} is not accepted (JSON only)",
            )
        else:
            self._dead_letter_raw(
                message, "malformed_message", f"invalid task message: {type(exc).__name__}"
            )

    def perform_pending_operations(self) -> None:
        if _loop_alive.tick():
            try:
                runtime.current().health.touch()
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop consuming
                log.warning("health.heartbeat_failed", error=type(exc).__name__)
        super().perform_pending_operations()

    def connect(self) -> Any:
        # Retries until the broker answers (broker_connection_max_retries=None): the loop is
        # stopped meanwhile, and the side thread keeps liveness fresh instead.
        _loop_alive.reconnecting = True
        try:
            return super().connect()
        finally:
            _loop_alive.reconnecting = False


class _LoopTick:
    def __init__(self) -> None:
        self.last = 0.0
        self.last_beat = 0.0
        self.reconnecting = False

    def tick(self) -> bool:
        """True when the loop's heartbeat is due (every HEARTBEAT_INTERVAL_SECONDS)."""
        now = self.last = time.monotonic()
        if now - self.last_beat < HEARTBEAT_INTERVAL_SECONDS:
            return False
        self.last_beat = now
        return True

    def alive(self) -> bool:
        return time.monotonic() - self.last < LOOP_STALE_SECONDS


_loop_alive = _LoopTick()


def _heartbeat_forever(stop: threading.Event) -> None:
    """Readiness (is the loop consuming?) and, only while Celery reconnects, liveness."""
    rt = runtime.current()
    while not stop.wait(HEARTBEAT_INTERVAL_SECONDS):
        _side_beat(rt, _loop_alive)


def _side_beat(rt: runtime.Runtime, loop: _LoopTick) -> None:
    rt.health.update(broker=loop.alive())
    if loop.reconnecting:
        rt.health.touch()
    metrics.READY.set(1 if rt.health.ready else 0)


_stop_heartbeat = threading.Event()


# --- signals: logging stays ours; per-process runtime; per-task log context


@signals.setup_logging.connect
def _keep_our_logging(**_: Any) -> None:
    """Connected so that Celery does not configure logging: the CLI already did."""


@signals.worker_init.connect
def _boot(sender: Any = None, **_: Any) -> None:
    settings = settings_of(app)
    rt = runtime.Runtime.build(settings)
    runtime.install(rt)
    # Celery keeps the app's result backend per thread, and under gevent a thread is a greenlet:
    # every task would build a fresh DisabledBackend (a few % of the CPU in profiles). Results are
    # ignored, so one backend object is shared.
    app.tasks[TASK_NAME].backend = app.backend
    if CUSTOMER_TASK_NAME in app.tasks:
        app.tasks[CUSTOMER_TASK_NAME].backend = app.backend
    metrics.serve(settings.metrics_port)
    rt.start()
    if rt.health.api_ok is False:
        # Rejected at start (token, or RAPIDLY_API_URL answering 404): messages stay queued
        # until a probe passes, instead of each waiting out a 404 and being dead-lettered.
        auth_gate.reject(settings.auth_retry_seconds)
    _stop_heartbeat.clear()
    threading.Thread(
        target=_heartbeat_forever, args=(_stop_heartbeat,), daemon=True, name="heartbeat"
    ).start()
    log.info(
        "worker.started",
        concurrency=settings.worker_concurrency,
        api_url=settings.rapidly_api_url,
        redis=bool(settings.redis_url),
        rate_limit=settings.rapidly_rate_limit,
    )


@signals.worker_ready.connect
def _ready(**_: Any) -> None:
    _loop_alive.tick()
    rt = runtime.current()
    rt.health.beat(broker_connected=True)
    log.info("worker.consumer_ready")


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    _stop_heartbeat.set()
    try:
        rt = runtime.current()
    except RuntimeError:
        return
    rt.health.clear()
    rt.close()
    runtime.install(None)
    log.info("worker.stopped")


@signals.task_prerun.connect
def _bind_context(task_id: str | None = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id)


@signals.task_postrun.connect
def _clear_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


__all__ = ["CUSTOMER_TASK_NAME", "TASK_NAME", "CustomerEventTask", "EnrichTask", "app", "configure"]
