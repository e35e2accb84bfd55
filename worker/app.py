"""The one Celery app: its configuration, in one block, and its signals.

Configured in one block (``app.conf.update`` below, then ``configure``): JSON only, late acks,
reject on worker lost, prefetch 1 per slot of an I/O-bound pool, connection retries forever, our
logging kept in charge. Task modules are named by string (``TASK_MODULES``, Celery's ``include``),
never imported from here: ``worker/`` does not depend on ``tasks/``. Signals build the per-process
runtime at boot and close it at shutdown; the task base class binds each task's log context.

Elsewhere: the task base classes and their error mapping (``worker.tasking``), dead-lettering
(``worker.deadletter``), the heartbeat (``worker.health``).
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from celery import Celery, signals

from worker import _gevent, _heap, _json, metrics, runtime
from worker.health import consumer_loop, heartbeat_forever
from worker.publishing import EVENTS_QUEUE, EVENTS_QUEUE_NAME, topology
from worker.settings import Settings
from worker.tasking import CUSTOMER_TASK_NAME, TASK_NAME, auth_gate

log = structlog.get_logger()

# The thin task adapters, registered by name when a worker starts (no autodiscovery).
TASK_MODULES = ("tasks.enrich", "tasks.enrich_customer")

_json.install()

app = Celery("rapidly-enrichment", set_as_current=True, include=list(TASK_MODULES))
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
    worker_consumer="worker.deadletter:DeadLetteringConsumer",
    broker_connection_retry=True,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    broker_channel_error_retry=True,
    enable_utc=True,
)


# Connections the Redis transport may open beside one per task greenlet: the consumer's BRPOP,
# the visibility-timeout restore, the reconnect's own.
_REDIS_BROKER_SPARE_CONNECTIONS = 8


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's transport options for the input broker; each transport reads its own.

    Redis redelivers an unacked message after ``visibility_timeout``: it must outlast the longest
    event (deadline plus retries) or a slow event would be delivered twice.

    ``max_connections`` is the Redis transport's pool. Under the gevent pool every task greenlet
    acks its own message on a pooled connection, so up to ``concurrency`` acks are in flight at
    once. kombu's default of 10 is a pool that does not wait but raises ``MaxConnectionsError``:
    acks fail, the consumer restarts, and a message just popped by BRPOP but not yet written to
    the unacked hash is gone with it."""
    return {
        "visibility_timeout": settings.broker_visibility_timeout,
        "confirm_publish": True,
        "max_connections": settings.worker_concurrency + _REDIS_BROKER_SPARE_CONNECTIONS,
    }


def configure(settings: Settings) -> Celery:
    app.conf.update(
        broker_url=settings.broker_url,
        # quorum: the consumer declares x-queue-type quorum, and Celery, seeing it, switches to
        # per-consumer prefetch (quorum queues have no global QoS; worker_detect_quorum_queues).
        task_queues=(topology(settings.rabbitmq_queue_type).events_queue,),
        worker_concurrency=settings.worker_concurrency,
        worker_prefetch_multiplier=settings.worker_prefetch_multiplier,
        broker_transport_options=broker_transport_options(settings),
        rapidly_settings=settings,
    )
    # The worker imports ``include`` itself before worker_init; importing here as well registers
    # the tasks for callers that configure the app without starting a worker.
    app.loader.import_default_modules()
    return app


def settings_of(celery_app: Celery) -> Settings:
    settings = celery_app.conf.get("rapidly_settings")
    if not isinstance(settings, Settings):
        raise RuntimeError("worker.app.configure(settings) was not called")
    return settings


_stop_heartbeat = threading.Event()


# --- signals: logging stays ours; per-process runtime


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
        target=heartbeat_forever, args=(rt, _stop_heartbeat), daemon=True, name="heartbeat"
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
    consumer_loop.tick()
    rt = runtime.current()
    rt.health.beat(broker_connected=True)
    _heap.settle()
    _gevent.dump_greenlets_on_sigusr1()  # Celery's own handler replaced it at start
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


__all__ = ["CUSTOMER_TASK_NAME", "TASK_MODULES", "TASK_NAME", "app", "configure", "settings_of"]
