"""Dead-lettering: the original message (not a copy rebuilt from the request) goes to
``rapidly.events.dead`` with its reason before the input is acknowledged.

Two ways in. A task that decided the message is dead (it raised ``DeadLetter``, see
``worker.tasking``) reaches ``DeadLetteringRequest.on_failure``; a message Celery cannot run at all
(wrong content type, undecodable body, unknown task, not a Celery message) reaches
``DeadLetteringConsumer``. Both call ``dead_letter``, which publishes at most once per task message
and tells the caller whether it may acknowledge.

May call: ``worker.runtime`` (the per-process dead-letter publisher and dedupe store),
``worker.health`` (the loop's heartbeat), ``worker.metrics``. Never imports ``tasks/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Any

import structlog
from celery.worker.consumer import Consumer
from celery.worker.request import Request

from worker import metrics, runtime
from worker.dedupe import Claim, Lease
from worker.errors import DeadLetter
from worker.health import consumer_loop

log = structlog.get_logger()

# Back-off before a message goes back to the queue for a reason that is not its own
# (downstream broker down, dedupe store down): avoids a hot redelivery loop.
REQUEUE_DELAY_SECONDS = 2.0


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
    replays = replays_of(headers)
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


def replays_of(headers: Any) -> int:
    """How many times ``rapidly-worker replay`` sent this message back (its ``x-replays``)."""
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

    # Acks written together (worker._acks). Without Celery's native delayed delivery, which it
    # adds for quorum queues (28 more exchanges and quorum queues per broker URL): this worker
    # never sends a task with an eta or a countdown, its retries wait inside the task.
    Blueprint = type(
        "Blueprint",
        (Consumer.Blueprint,),
        {
            "default_steps": [
                *(
                    step
                    for step in Consumer.Blueprint.default_steps
                    if not step.endswith(":DelayedDelivery")
                ),
                "worker._acks:CoalescedAcks",
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
        if consumer_loop.tick():
            try:
                runtime.current().health.touch()
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop consuming
                log.warning("health.heartbeat_failed", error=type(exc).__name__)
        super().perform_pending_operations()

    def connect(self) -> Any:
        # Retries until the broker answers (broker_connection_max_retries=None): the loop is
        # stopped meanwhile, and the side thread keeps liveness fresh instead.
        consumer_loop.reconnecting = True
        try:
            return super().connect()
        finally:
            consumer_loop.reconnecting = False
