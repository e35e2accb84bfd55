"""A producer exactly as CONTRACT.md shows one: ``Celery(broker=URL).send_task("events.enrich",
args=[id], queue="rapidly.events")``, none of the project's code."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from devkit._broker import EVENTS

TASK = "events.enrich"


def producer(broker_url: str, *, confirm: bool = False) -> Celery:
    """A plain Celery app as producer; ``confirm``: with publisher confirms, so a send that
    returned is in the queue."""
    app = Celery(broker=broker_url)
    if confirm:
        app.conf.broker_transport_options = {"confirm_publish": True}
    return app


def send(app: Celery, event_id: Any, **options: Any) -> None:
    app.send_task(TASK, args=[event_id], queue=EVENTS, **options)


class Sender:
    """Sends ids with one producer app, optionally paced, and remembers each first send time.

    ``resend``: a send that fails (its connection closed under it) is sent again, up to 60 times,
    half a second apart: the input may then hold the id twice, which producers are allowed to do
    (CONTRACT.md section 1); an id is never skipped. Without it a failed send raises."""

    def __init__(self, broker_url: str, *, confirm: bool = False, resend: bool = False) -> None:
        self.broker_url = broker_url
        self.resend = resend
        self.app = producer(broker_url, confirm=confirm)
        self.sent_at: dict[str, float] = {}
        self.sent = 0
        self.resends = 0
        self.errors: list[str] = []

    def send(self, ids: Iterable[Any], *, rate: float = 0.0) -> int:
        """Send every id; ``rate`` > 0 paces the sends to that many ids per second."""
        count = 0
        started = time.monotonic()
        if self.resend:
            # No producer held across sends: each retry takes a fresh connection from the pool.
            for event_id in ids:
                self._pace(started, count, rate)
                self._send_until_sent(event_id)
                count += 1
            return count
        with self.app.producer_or_acquire() as held:
            for event_id in ids:
                self._pace(started, count, rate)
                send(self.app, event_id, producer=held)
                self._sent(event_id)
                count += 1
        return count

    @staticmethod
    def _pace(started: float, count: int, rate: float) -> None:
        if rate > 0:
            delay = started + count / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _sent(self, event_id: Any) -> None:
        self.sent += 1
        self.sent_at.setdefault(str(event_id), time.time())

    def _send_until_sent(self, event_id: Any) -> None:
        for attempt in range(60):
            try:
                send(self.app, event_id, retry=True)
                self._sent(event_id)
                return
            except Exception as exc:  # noqa: BLE001 - any failure: send again, never skip
                self.resends += 1
                stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
                self.errors.append(f"{stamp} attempt {attempt}: {type(exc).__name__}: {exc}")
                time.sleep(0.5)
        raise RuntimeError(f"could not send {event_id!r} in 60 attempts")

    def close(self) -> None:
        self.app.close()
