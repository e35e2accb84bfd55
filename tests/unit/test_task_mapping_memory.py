"""The task layer's error mapping and dead-lettering, on Celery's in-memory transport.

A real Celery worker (solo pool, in a thread) consumes ``rapidly.events`` on ``memory://`` with
the app's own configuration: ``EnrichTask`` maps what the service raises, ``DeadLetteringRequest``
and ``DeadLetteringConsumer`` publish the original message to ``rapidly.events.dead`` through the
real ``DeadLetterPublisher``. Only the service and the runtime around it are fakes; no eager mode.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from celery import signals
from celery.contrib.testing.worker import start_worker
from kombu import Connection, Producer
from kombu.transport.memory import Channel as MemoryChannel

import worker.app as app_module
import worker.tasking as tasking
from worker import runtime
from worker.app import app
from worker.errors import (
    ApiUnavailable,
    ConfigurationError,
    EventNotFound,
    InvalidEventId,
    PublishError,
    RetriesExhausted,
    TransientError,
    Unpublishable,
)
from worker.publishing import DEAD_LETTER_QUEUE_NAME, EVENTS_QUEUE_NAME, DeadLetterPublisher
from worker.service import Outcome

MEMORY = "memory://"


@dataclass
class FakeService:
    """Raises the queued errors for an event ID, one per call, then publishes."""

    errors: dict[str, list[BaseException]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    contexts: list[dict[str, Any]] = field(default_factory=list)

    def process(self, event_id: str) -> Outcome:
        self.calls.append(event_id)
        self.contexts.append(structlog.contextvars.get_contextvars())
        structlog.contextvars.bind_contextvars(bound_by=event_id)  # as the real service binds
        queued = self.errors.get(event_id)
        if queued:
            raise queued.pop(0)
        return Outcome(Outcome.PUBLISHED)


class FakeHealth:
    def beat(self, **_: Any) -> None: ...
    def touch(self) -> None: ...
    def update(self, **_: Any) -> None: ...
    def clear(self) -> None: ...


@dataclass
class FakeRuntime:
    service: FakeService
    dead_letters: DeadLetterPublisher
    probe_ok: bool = True
    settings: Any = field(
        default_factory=lambda: SimpleNamespace(auth_retry_seconds=0.05, event_max_redeliveries=5)
    )
    health: FakeHealth = field(default_factory=FakeHealth)
    redeliveries: Any = None
    dead_dedupe: Any = None
    rejected: list[str] = field(default_factory=list)
    worker: Any = None

    def unacked(self) -> int:
        """Messages the worker holds without having acknowledged or rejected them."""
        qos = self.worker.consumer.task_consumer.channel.qos
        return len(qos._delivered) - len(qos._dirty)  # _dirty: acknowledged, not yet pruned

    def probe_api(self) -> bool:
        return self.probe_ok

    def api_accepted(self) -> None: ...

    def api_rejected(self, exc: ConfigurationError) -> None:
        self.rejected.append(str(exc))

    def close(self) -> None:
        self.dead_letters.close()


@pytest.fixture(scope="module")
def worker_runtime() -> Iterator[FakeRuntime]:
    """One worker for the module (starting and stopping one takes seconds)."""
    MemoryChannel.queues.clear()
    saved = {key: app.conf.get(key) for key in ("broker_url", "broker_transport_options")}
    # The memory transport polls; Celery's default of 1 s would make every test wait for it.
    app.conf.update(broker_url=MEMORY, broker_transport_options={"polling_interval": 0.01})
    app._pool = None  # producers built for another broker URL, if any
    app.loader.import_default_modules()
    # The boot signal builds the real runtime from Settings; this test installs its own.
    signals.worker_init.disconnect(app_module._boot)
    patch = pytest.MonkeyPatch()
    patch.setattr(tasking, "REQUEUE_DELAY_SECONDS", 0.0)
    fake = FakeRuntime(FakeService(), DeadLetterPublisher(MEMORY, timeout=2.0, pool_size=1))
    runtime.install(fake)  # type: ignore[arg-type]
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10) as w:
            fake.worker = w
            yield fake
    finally:
        patch.undo()
        runtime.install(None)
        signals.worker_init.connect(app_module._boot)
        app.conf.update(saved)
        app._pool = None


@pytest.fixture
def rt(worker_runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    worker_runtime.service = FakeService()
    worker_runtime.probe_ok = True
    worker_runtime.rejected = []
    monkeypatch.setattr(tasking, "auth_gate", tasking.AuthGate())
    dead_letters(1_000, timeout=0)  # what an earlier test left
    return worker_runtime


def new_id() -> str:
    return str(uuid.uuid4())


def send(name: str, *args: Any) -> str:
    task_id = new_id()
    app.send_task(name, args=list(args), task_id=task_id)
    return task_id


def dead_letters(count: int, timeout: float = 10.0) -> list[Any]:
    """The first ``count`` messages of rapidly.events.dead, waiting up to ``timeout``."""
    found: list[Any] = []
    deadline = time.monotonic() + timeout
    with Connection(MEMORY) as conn:
        channel = conn.channel()
        while len(found) < count:
            message = channel.basic_get(DEAD_LETTER_QUEUE_NAME, no_ack=True)
            if message is None:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            else:
                found.append(message)
    return found


def queued(queue: str) -> int:
    return MemoryChannel.queues[queue].qsize() if queue in MemoryChannel.queues else 0


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (InvalidEventId("nope"), "invalid_event_id"),
        (EventNotFound("x", waited=1.0, attempts=3), "event_not_found"),
        (RetriesExhausted(ApiUnavailable("GET"), attempts=8, elapsed=40.0), "exhausted_retries"),
        (
            Unpublishable("x", PublishError("too long", sent=False, unpublishable=True)),
            "unpublishable",
        ),
        (KeyError("a bug"), "internal_error"),
    ],
    ids=["invalid_id", "not_found", "exhausted", "unpublishable", "bug"],
)
def test_a_permanent_error_dead_letters_the_original_message(
    rt: FakeRuntime, error: BaseException, reason: str
) -> None:
    event_id = new_id()
    rt.service.errors[event_id] = [error]
    task_id = send(tasking.TASK_NAME, event_id)
    [dead] = dead_letters(1)
    assert dead.headers["x-death-reason"] == reason
    assert dead.headers["id"] == task_id  # the original task message, replayable as it is
    assert dead.headers["task"] == tasking.TASK_NAME
    assert dead.headers["x-attempts"] >= 1
    wait_for(lambda: rt.unacked() == 0)  # acknowledged after the dead letter was confirmed
    time.sleep(0.2)
    assert rt.service.calls == [event_id]  # never run again


def test_event_not_found_with_the_api_rejecting_us_is_requeued_not_dead_lettered(
    rt: FakeRuntime,
) -> None:
    event_id = new_id()
    rt.probe_ok = False  # the URL or token went wrong, not the event
    rt.service.errors[event_id] = [EventNotFound(event_id, waited=1.0, attempts=3)]
    send(tasking.TASK_NAME, event_id)
    wait_for(lambda: len(rt.service.calls) >= 1)
    rt.probe_ok = True
    wait_for(lambda: len(rt.service.calls) == 2)  # redelivered, then published
    assert dead_letters(1, timeout=0.5) == []


@pytest.mark.parametrize(
    "error",
    [ApiUnavailable("GET /api/events/x", status=503), ConfigurationError("token", status=401)],
    ids=["transient", "configuration"],
)
def test_a_transient_or_configuration_error_requeues_the_message(
    rt: FakeRuntime, error: BaseException
) -> None:
    event_id = new_id()
    rt.service.errors[event_id] = [error]
    send(tasking.TASK_NAME, event_id)
    wait_for(lambda: rt.service.calls == [event_id, event_id])  # back on the queue, run again
    assert isinstance(error, TransientError) or rt.rejected == [str(error)]
    assert dead_letters(1, timeout=0.5) == []


def test_a_published_event_is_acknowledged(rt: FakeRuntime) -> None:
    event_id = new_id()
    send(tasking.TASK_NAME, event_id)
    wait_for(lambda: rt.service.calls == [event_id])
    wait_for(lambda: rt.unacked() == 0)
    time.sleep(0.2)
    assert queued(EVENTS_QUEUE_NAME) == 0
    assert rt.service.calls == [event_id]
    assert dead_letters(1, timeout=0.2) == []


def test_each_task_logs_under_its_own_task_and_event_ids(rt: FakeRuntime) -> None:
    first, second = new_id(), new_id()
    first_task, second_task = send(tasking.TASK_NAME, first), send(tasking.TASK_NAME, second)
    wait_for(lambda: len(rt.service.calls) == 2)
    assert {(context["task_id"], context["event_id"]) for context in rt.service.contexts} == {
        (first_task, first),
        (second_task, second),
    }
    # One thread ran both (solo pool): what the first bound was cleared before the second.
    assert all("bound_by" not in context for context in rt.service.contexts)


def test_wrong_arguments_are_dead_lettered_without_running(rt: FakeRuntime) -> None:
    send(tasking.TASK_NAME, new_id(), "extra")
    [dead] = dead_letters(1)
    assert dead.headers["x-death-reason"] == "invalid_arguments"
    assert rt.service.calls == []


def test_an_unknown_task_is_dead_lettered(rt: FakeRuntime) -> None:
    task_id = send("events.no_such_task", new_id())
    [dead] = dead_letters(1)
    assert dead.headers["x-death-reason"] == "unknown_task"
    assert dead.headers["id"] == task_id
    assert rt.service.calls == []


def test_a_message_that_is_not_json_is_dead_lettered(rt: FakeRuntime) -> None:
    task_id = new_id()
    headers = {"task": tasking.TASK_NAME, "id": task_id, "lang": "py"}
    with Connection(MEMORY) as conn:
        Producer(conn.channel()).publish(
            b"\x80\x04K\x01.",  # a pickle: never accepted
            routing_key=EVENTS_QUEUE_NAME,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers=headers,
            serializer=None,
        )
    [dead] = dead_letters(1)
    assert dead.headers["x-death-reason"] == "content_type_not_allowed"
    assert dead.body == b"\x80\x04K\x01."  # the original bytes, not a re-encoded copy
    assert rt.service.calls == []
