"""Reading what the worker published, as a downstream consumer does: a queue of our own bound to
``rapidly.enriched`` with ``#`` (the contract only promises the exchange), every record checked
against the record's JSON Schema (CONTRACT.md section 9)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kombu import Connection, Consumer, Queue

from devkit._broker import CUSTOMER_CREATED, ENRICHED
from devkit._schema import record_errors, validate_record


def records_queue(name: str, *, durable: bool = True) -> Queue:
    """A queue that sees every record. Not ``durable``: the broker need not write the copies to
    disk (the benchmark's, read while it measures)."""
    return Queue(name, ENRICHED, routing_key="#", durable=durable)


def _is_records(queue: Queue) -> bool:
    return queue.exchange is not None and queue.exchange.name == ENRICHED.name


def _read(
    broker_url: str, queue: Queue, *, ack: bool, done: Callable[[list[Any], bool], bool]
) -> list[Any]:
    """Messages of ``queue`` until ``done(got, was_empty)``; records are validated."""
    records = _is_records(queue)
    got: list[Any] = []
    empty = False
    with Connection(broker_url) as conn:
        bound = queue.bind(conn.default_channel)
        while not done(got, empty):
            message = bound.get(no_ack=not ack)
            empty = message is None
            if message is None:
                time.sleep(0.05)
                continue
            if ack:
                message.ack()
            if records:
                validate_record(message.body)
            got.append(message)
    return got


def drain(
    broker_url: str, queue: Queue, *, expect: int, timeout: float, settle: float = 0.0
) -> list[Any]:
    """Read (and ack) messages until ``expect`` arrived, then wait ``settle`` more for extras;
    at most ``timeout`` seconds until ``expect``."""
    deadline = time.monotonic() + timeout
    settle_until: list[float] = []

    def done(got: list[Any], _empty: bool) -> bool:
        now = time.monotonic()
        if len(got) >= expect:
            if not settle_until:
                settle_until.append(now + settle)
            return now >= settle_until[0]
        return now >= deadline

    return _read(broker_url, queue, ack=True, done=done)


def drain_all(queue: Queue, broker_url: str, idle: float = 1.0) -> list[Any]:
    """Every message now in ``queue`` (taken without ack), once it stayed empty for ``idle`` s."""
    empty_since: list[float] = []

    def done(_got: list[Any], empty: bool) -> bool:
        if not empty:
            empty_since.clear()
            return False
        if not empty_since:
            empty_since.append(time.monotonic())
        return time.monotonic() - empty_since[0] >= idle

    return _read(broker_url, queue, ack=False, done=done)


class RecordCollector(threading.Thread):
    """Consumes ``queue`` (no-ack, bodies not decoded while measuring), keeps the first arrival
    time of each ``message_id`` (the event id) and counts the duplicates; also drains
    ``rapidly.customer_created`` so that its durable copies do not pile up in long runs.
    ``invalid()`` checks the kept bodies against the schema afterwards."""

    def __init__(self, broker_url: str, queue: Queue, *, keep_bodies: bool) -> None:
        super().__init__(daemon=True, name="record-collector")
        self.broker_url = broker_url
        self.queue = queue
        self.keep_bodies = keep_bodies
        self.first_arrival: dict[str, float] = {}
        self.bodies: dict[str, bytes] = {}
        self.arrivals = 0
        self.duplicates = 0
        self.without_id = 0
        self.customer_created_drained = 0
        self.ready = threading.Event()
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def _on_record(self, message: Any) -> None:
        now = time.time()
        self.arrivals += 1
        event_id = message.properties.get("message_id")
        if not event_id:
            self.without_id += 1
            return
        if event_id in self.first_arrival:
            self.duplicates += 1
            return
        self.first_arrival[event_id] = now
        if self.keep_bodies:
            self.bodies[event_id] = message.body

    def _on_customer_created(self, _message: Any) -> None:
        self.customer_created_drained += 1

    def run(self) -> None:
        try:
            with Connection(self.broker_url, heartbeat=0) as conn:
                conn.connect()
                records_channel: Any = conn.channel()
                records_channel.basic_qos(0, 2000, False)
                other_channel: Any = conn.channel()
                other_channel.basic_qos(0, 2000, False)
                with (
                    Consumer(
                        records_channel, [self.queue], no_ack=True, on_message=self._on_record
                    ),
                    Consumer(
                        other_channel,
                        [CUSTOMER_CREATED],
                        no_ack=True,
                        on_message=self._on_customer_created,
                    ),
                ):
                    self.ready.set()
                    while not self._halt.is_set():
                        try:
                            conn.drain_events(timeout=0.25)
                        except TimeoutError:
                            pass
        except Exception as exc:  # noqa: BLE001 - the caller checks ``error``
            self.error = exc
            self.ready.set()

    def start_listening(self, timeout: float = 30) -> RecordCollector:
        """Start and wait until it consumes (so nothing published from now on is missed)."""
        self.start()
        self.ready.wait(timeout)
        if self.error is not None:
            raise RuntimeError(f"record collector failed: {self.error!r}")
        return self

    def count(self) -> int:
        return len(self.first_arrival)

    def invalid(self) -> Iterator[tuple[str, list[str]]]:
        """(event id, schema problems) of each kept body that does not validate."""
        for event_id, body in self.bodies.items():
            errors = record_errors(body)
            if errors:
                yield event_id, errors

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
