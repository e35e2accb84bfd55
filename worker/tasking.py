"""The task base classes: what happens to a message, whatever its task raised.

``EnrichTask`` (``events.enrich``) and ``CustomerEventTask`` (``events.enrich_customer``) check the
message's arguments, hold messages back while the API rejects the token (the auth gate), count
redeliveries so that a poison message ends in the dead-letter queue, run the task, and map its
outcome or typed error (``worker.errors``) onto the message:

    returned Outcome                     ack; one ``enrich.finished`` line
    PermanentError (and EventNotFound)   DeadLetter -> ``worker.deadletter`` publishes it, then ack
    TransientError                       requeue after REQUEUE_DELAY_SECONDS
    ConfigurationError, token rejected   requeue, auth gate closed until a probe passes
    any other exception (a bug)          dead-lettered ``internal_error``: kept replayable

Task modules (``tasks/``) name these classes as ``base=``; nothing here imports them. No Celery app
here: ``worker.app`` owns it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog
from celery import Task
from celery.exceptions import Reject

from worker import metrics, runtime
from worker.deadletter import REQUEUE_DELAY_SECONDS, replays_of
from worker.errors import (
    ConfigurationError,
    DeadLetter,
    EventNotFound,
    InvalidMessage,
    PermanentError,
    RedeliveriesExhausted,
    TransientError,
)
from worker.publishing import ENRICH_CUSTOMER_TASK_NAME

log = structlog.get_logger()

TASK_NAME = "events.enrich"
CUSTOMER_TASK_NAME = ENRICH_CUSTOMER_TASK_NAME


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


def _attempts(exc: BaseException) -> int:
    return int(getattr(exc, "attempts", 1) or 1)


class EnrichTask(Task[Any, Any]):
    """Maps the service's typed errors to what happens to the message."""

    Request = "worker.deadletter:DeadLetteringRequest"
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
        summary: dict[str, Any] = {}
        counted: str | None = None
        # The task's log context, bound here rather than from Celery's task_prerun/postrun
        # signals: with a receiver connected, Celery sends each signal for every task.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(task_id=self.request.id)
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
            summary = {"outcome": outcome.outcome.value}
            if record is not None:
                summary.update(
                    routing_key=record.routing_key,
                    depth=record.depth,
                    complete=record.complete,
                    incomplete_reason=record.incomplete_reason,
                )
            return outcome.outcome.value
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
                # Counted by the service's unit of work; 0 when it never ran.
                api_calls=structlog.contextvars.get_contextvars().get("api_calls", 0),
                duration_ms=round(duration * 1000, 1),
                **summary,
            )
            structlog.contextvars.clear_contextvars()

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
        replays = replays_of({"x-replays": getattr(self.request, "x-replays", 0)})
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


__all__ = [
    "CUSTOMER_TASK_NAME",
    "TASK_NAME",
    "AuthGate",
    "CustomerEventTask",
    "EnrichTask",
    "auth_gate",
]
