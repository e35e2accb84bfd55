"""Celery's gevent pool, with its greenlets kept for the next task.

Celery's gevent pool spawns a greenlet per task through a ``gevent.pool.Pool``, links two
callbacks to it and lets it die when the task returns: about 30 µs of CPU per task on the
benchmark host, and each new greenlet maps (and its death unmaps) a fresh chunk of memory for its
Python frames. Here a greenlet that finished a task parks, and the next task is handed to a
parked one; a new greenlet is spawned only when none is parked. At most ``limit`` tasks run at
once, as before: ``apply_async`` waits for a free slot, which holds the consumer back while
every slot is busy.

Tasks with a time limit go through Celery's own path (its timeouts kill the task's greenlet).
``terminate_job`` (a revoke with ``terminate=True``) still ends the task it names: ``GreenletExit``
is raised in it, as in Celery's pool; a runner that it ends before or after the task's own code
dies and is never parked again.
"""

from __future__ import annotations

import itertools
from typing import Any

from celery.concurrency import base
from celery.concurrency.gevent import TaskPool as GeventTaskPool


class _Job:
    """One task handed to a runner; what ``apply_async`` returns (Celery keeps a weak reference
    to it and calls ``terminate`` on it after ``terminate_job``, as on its pool's greenlets)."""

    __slots__ = (
        "__weakref__",
        "accept_callback",
        "apply_target",
        "args",
        "callback",
        "id",
        "kwargs",
        "target",
    )

    def __init__(self, *fields: Any) -> None:
        (
            self.target,
            self.args,
            self.kwargs,
            self.callback,
            self.accept_callback,
            self.apply_target,
            self.id,
        ) = fields

    def terminate(self, signal: Any = None) -> None:
        """Done by ``TaskPool.terminate_job``, as for Celery's pool."""


class TaskPool(GeventTaskPool):
    """``worker_pool = "worker._pool:TaskPool"``: the gevent pool with its greenlets reused."""

    def on_start(self) -> None:
        from gevent.hub import get_hub  # noqa: PLC0415 - under gevent's patching only
        from gevent.lock import Semaphore  # noqa: PLC0415

        super().on_start()
        self._hub = get_hub()
        self._slots = Semaphore(self.limit)
        self._parked: list[Any] = []  # gevent Waiters of the runners with nothing to do
        self._running: dict[int, Any] = {}  # job id -> the runner greenlet running it
        self._job_ids = itertools.count(1)

    def on_stop(self) -> None:
        # Every slot free again means every task has finished; parked runners then end.
        for _ in range(self.limit):
            self._slots.acquire()
        parked, self._parked = self._parked, []
        for waiter in parked:
            self._hub.loop.run_callback(waiter.switch, None)
        super().on_stop()

    def on_apply(  # noqa: PLR0917 - Celery's signature
        self,
        target: Any,
        args: Any = None,
        kwargs: Any = None,
        callback: Any = None,
        accept_callback: Any = None,
        timeout: Any = None,
        timeout_callback: Any = None,
        apply_target: Any = base.apply_target,
        **options: Any,
    ) -> Any:
        # Attributes of Celery's pool that its type stubs do not declare.
        timeout = self.timeout if timeout is None else timeout  # type: ignore[attr-defined]
        if timeout:
            return super().on_apply(
                target,
                args,
                kwargs,
                callback,
                accept_callback,
                timeout=timeout,
                timeout_callback=timeout_callback,
                apply_target=apply_target,
                **options,
            )
        self._slots.acquire()  # blocks the consumer while every slot is busy
        job = _Job(
            self._make_killable_target(target),  # type: ignore[attr-defined]
            args,
            kwargs,
            callback,
            accept_callback,
            apply_target,
            next(self._job_ids),
        )
        if self._parked:
            self._hub.loop.run_callback(self._parked.pop().switch, job)
        else:
            import gevent  # noqa: PLC0415

            gevent.spawn_raw(self._run, job)
        return job

    def _run(self, job: _Job | None) -> None:
        from gevent import getcurrent  # noqa: PLC0415
        from gevent.hub import Waiter  # noqa: PLC0415

        me = getcurrent()
        while job is not None:
            job_id = job.id
            self._running[job_id] = me
            try:
                job.apply_target(
                    job.target,
                    job.args,
                    job.kwargs,
                    job.callback,
                    job.accept_callback,
                    lambda job_id=job_id: job_id,  # the "pid" a revoke names the task by
                )
            finally:
                del self._running[job_id]
                self._slots.release()
            waiter = Waiter()
            self._parked.append(waiter)
            job = waiter.get()

    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        runner = self._running.get(pid)
        if runner is not None:
            import gevent  # noqa: PLC0415

            gevent.kill(runner)  # the task's greenlet ends; a new runner takes the next task
        else:
            super().terminate_job(pid, signal)


__all__ = ["TaskPool"]
