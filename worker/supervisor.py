"""``WORKER_PROCESSES`` > 1: one supervisor process, N worker processes.

A gevent worker is one process, so it uses at most one core (the GIL), and profiles show it is
CPU-bound long before it runs out of greenlets. On a pod with more than one core, N processes
share its work: each child is the ordinary worker (``python -m worker run`` with
``WORKER_PROCESSES=1``), with its own broker consumer, connections, caches and prefetch; Redis
(``REDIS_URL``) is what they share, exactly as separate pods would.

The supervisor (this module; no gevent, no Celery):

- starts the children with ``WORKER_PROCESS_INDEX`` = 0..N-1 (in every log line as ``process``),
  ``HEALTH_DIR`` = ``<HEALTH_DIR>/<index>``, and ``METRICS_PORT=0``; the children die with it
  (``PR_SET_PDEATHSIG``), so a killed supervisor never leaves orphans consuming;
- forwards SIGTERM / SIGINT / SIGQUIT to every child and waits for all of them (a warm shutdown
  finishes in-flight events), then exits 0, or the first non-zero exit code;
- restarts a child that exits on its own, after a back-off (1 s doubling to 30 s, reset after a
  child ran for 60 s), logging ``supervisor.child_exited``;
- serves the children's metrics summed on ``METRICS_PORT`` (prometheus_client multiprocess mode,
  files in ``<HEALTH_DIR>/metrics``);
- writes ``<HEALTH_DIR>/processes.json``, so that ``rapidly-worker health live|ready`` checks every
  child: the pod is live and ready only if all its processes are.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from worker.health import PROCESSES_FILE
from worker.settings import Settings

log = structlog.get_logger()

RESTART_BACKOFF_FIRST = 1.0
RESTART_BACKOFF_MAX = 30.0
STABLE_AFTER_SECONDS = 60.0
POLL_SECONDS = 0.2
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = RESTART_BACKOFF_FIRST
    restart_at: float | None = None


def _pdeathsig() -> Any:
    """A function for the child, between fork and exec: SIGTERM it when the supervisor dies.
    libc is loaded here, in the parent, so that the child runs no import and takes no lock (the
    metrics server thread may hold one at fork time)."""
    try:
        import ctypes  # noqa: PLC0415

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the children outlive a killed supervisor
        return None

    def set_pdeathsig() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return set_pdeathsig


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._n = settings.processes.count
        self._command = [sys.executable, "-m", "worker", "run"]
        self._health = Path(settings.health_dir)
        self._metrics_dir = self._health / "metrics"
        self._children = [Child(i) for i in range(self._n)]
        self._stopping: int | None = None  # the signal that asked us to stop
        self._preexec = _pdeathsig()

    # --- start-up

    def _prepare(self) -> None:
        self._health.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._metrics_dir, ignore_errors=True)
        self._metrics_dir.mkdir(parents=True)
        for child in self._children:
            child_dir = self._health / str(child.index)
            for name in ("heartbeat", "state.json"):
                (child_dir / name).unlink(missing_ok=True)
        payload = {"processes": self._n, "pid": os.getpid(), "started": time.time()}
        tmp = self._health / f".{PROCESSES_FILE}.tmp"
        tmp.write_text(json.dumps(payload))
        tmp.replace(self._health / PROCESSES_FILE)

    def _serve_metrics(self) -> None:
        port = self._settings.metrics_port
        if not port:
            return
        from prometheus_client import CollectorRegistry  # noqa: PLC0415
        from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

        from worker.metrics import serve  # noqa: PLC0415

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self._metrics_dir))  # type: ignore[no-untyped-call]
        serve(port, registry=registry)

    def _env(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            WORKER_PROCESSES="1",
            WORKER_PROCESS_INDEX=str(index),
            HEALTH_DIR=str(self._health / str(index)),
            METRICS_PORT="0",
            PROMETHEUS_MULTIPROC_DIR=str(self._metrics_dir),
        )
        share = self.budget_share()
        if share is not None:
            env["RAPIDLY_RATE_LIMIT"] = share
        return env

    def budget_share(self) -> str | None:
        """Without ``REDIS_URL`` each process enforces its budget alone: N processes would spend
        N times ``RAPIDLY_RATE_LIMIT``, so each child gets 1/N of it. With Redis the children
        share one budget, as separate pods do."""
        if self._settings.redis_url or self._n < 2:
            return None
        budget = self._settings.rate_limit
        return f"{budget.count * 3600 / budget.per_seconds / self._n:.6g}/h"

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            self._command,
            env=self._env(child.index),
            preexec_fn=self._preexec,  # noqa: PLW1509 - one foreign call, no locks (_pdeathsig)
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("supervisor.child_started", process=child.index, pid=child.proc.pid)

    # --- running

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stopping is None:
            log.info("supervisor.stopping", signal=signal.Signals(signum).name)
        self._stopping = signum
        for child in self._children:
            if child.proc is not None and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signum)

    def run(self) -> int:
        self._prepare()
        for sig in FORWARDED:
            signal.signal(sig, self._on_signal)
        self._serve_metrics()
        log.info(
            "supervisor.started",
            processes=self._n,
            pid=os.getpid(),
            budget_per_process=self.budget_share(),
        )
        for child in self._children:
            self._start(child)
        try:
            while True:
                if self._stopping is not None:
                    return self._wait_all()
                self._watch()
                time.sleep(POLL_SECONDS)
        finally:
            (self._health / PROCESSES_FILE).unlink(missing_ok=True)

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self._children:
            proc = child.proc
            if proc is not None:
                code = proc.poll()
                if code is None:
                    if now - child.started_at > STABLE_AFTER_SECONDS:
                        child.backoff = RESTART_BACKOFF_FIRST
                    continue
                if self._stopping is not None:
                    return
                self._mark_dead(proc.pid)
                child.proc = None
                child.restart_at = now + child.backoff
                log.error(
                    "supervisor.child_exited",
                    process=child.index,
                    pid=proc.pid,
                    exit_code=code,
                    restart_in_s=child.backoff,
                )
                child.backoff = min(RESTART_BACKOFF_MAX, child.backoff * 2)
            elif child.restart_at is not None and now >= child.restart_at:
                self._start(child)

    def _mark_dead(self, pid: int) -> None:
        with contextlib.suppress(Exception):
            from prometheus_client import multiprocess  # noqa: PLC0415

            multiprocess.mark_process_dead(pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]

    def _wait_all(self) -> int:
        """Every child got the signal; wait for each (Kubernetes' grace period bounds this)."""
        result = 0
        for child in self._children:
            if child.proc is None:
                continue
            code = child.proc.wait()
            self._mark_dead(child.proc.pid)
            # A child stopped by the forwarded signal itself is a clean stop.
            if code not in (0, -signal.SIGTERM, -signal.SIGINT) and result == 0:
                result = code if code > 0 else 128 - code
        log.info("supervisor.stopped", exit_code=result)
        return result


def run(settings: Settings) -> int:
    return Supervisor(settings).run()
