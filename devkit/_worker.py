"""A worker (or web) process started the way an operator starts it: a Procfile line, unchanged,
under ``bash -c``, in its own session, its output in a log file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit._processes import ROOT, VENV_BIN, procfile_command

# Logged once by each worker process when it consumes (the benchmark's naive worker prints it too).
READY_MARKER = "worker.consumer_ready"


class WorkerNotReady(AssertionError):
    """The process exited, or did not log READY_MARKER in time; the message ends with its log."""


@dataclass
class WorkerProcess:
    """The Procfile's ``kind:`` line (or ``command``) run as ``bash -c COMMAND`` in its own
    session, so that SIGTERM reaches the whole tree through its process group, and only ours.
    Restarting appends to the same log."""

    env: dict[str, str]
    log_path: Path
    kind: str = "worker"
    # A command line other than the Procfile's (the benchmark's naive baseline).
    command: str | None = None
    name: str = ""
    # Run the command under this one, e.g. ("taskset", "-c", "0"): one CPU.
    wrapper: tuple[str, ...] = ()
    # How many READY_MARKER lines mean "ready": one per worker process (WORKER_PROCESSES=N
    # starts N children under a supervisor, and each logs the marker once).
    ready_lines: int = 1
    # Variables of the caller's environment the process must do without.
    drop_env: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    stop_seconds: float = 0.0
    _ready_before: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.kind

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.env, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
        env.setdefault("PYTHONPATH", str(ROOT))  # the naive baseline is a module of the repo
        for name in ("CI", *self.drop_env):
            env.pop(name, None)
        command = self.command or procfile_command(self.kind)
        self._ready_before = self.ready_count()
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.wrapper, "bash", "-c", command],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        """The log's JSON lines (LOG_FORMAT=json), in order."""
        out = []
        for line in self.log_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def ready_count(self) -> int:
        return self.log_text().count(READY_MARKER)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until this start logged ``ready_lines`` READY_MARKER lines (default 90 s, +15 s per
        extra process: N processes start at once on few cores)."""
        if timeout is None:
            timeout = 90 + 15 * (self.ready_lines - 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise WorkerNotReady(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            if self.ready_count() - self._ready_before >= self.ready_lines:
                return
            time.sleep(0.2)
        raise WorkerNotReady(
            f"{self.name} not ready in {timeout:.0f}s "
            f"({self.ready_count() - self._ready_before}/{self.ready_lines} {READY_MARKER} "
            f"lines):\n{self.log_text()[-3000:]}"
        )

    @property
    def pid(self) -> int:
        """The pid of ``bash -c`` (the process group's leader)."""
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        if self.alive():
            try:
                self.signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
            assert self.proc is not None
            self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (Celery's warm shutdown), SIGKILL after ``timeout``; the exit code (how long
        it took is in ``stop_seconds``)."""
        started = time.monotonic()
        if self.proc is None:
            return None
        if self.alive():
            try:
                self.signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.stop_seconds = time.monotonic() - started
        return self.proc.returncode


class WorkerGroup:
    """The processes one test (or benchmark run) started, each with its own log under
    ``directory``; ``stop_all`` stops every one of them at once, whatever the test did (a stray
    worker would consume the next test's messages)."""

    def __init__(self, directory: Path, cls: type[WorkerProcess] = WorkerProcess) -> None:
        self.directory = directory
        self.cls = cls
        self.processes: list[WorkerProcess] = []

    def start(
        self, env: dict[str, str], *, log_name: str | None = None, wait: bool = True, **options: Any
    ) -> WorkerProcess:
        """Start one (``options`` are WorkerProcess fields); ``wait``: until it is ready. Its log
        is ``log_name`` (default ``<kind><n>.log``)."""
        kind = options.get("kind", self.cls.kind)
        name = log_name or f"{kind}{len(self.processes)}.log"
        process = self.cls(env, self.directory / name, **options)
        self.processes.append(process)
        process.start()
        if wait:
            process.wait_ready()
        return process

    def stop_all(self, timeout: float = 60) -> list[tuple[int | None, float]]:
        return stop_together(self.processes, timeout)


def stop_together(
    processes: list[WorkerProcess], timeout: float = 60
) -> list[tuple[int | None, float]]:
    """SIGTERM to all at once (SIGKILL after ``timeout``); (exit code, seconds) of each."""
    results: list[tuple[int | None, float]] = [(None, 0.0)] * len(processes)

    def stop(i: int) -> None:
        results[i] = (processes[i].stop(timeout), processes[i].stop_seconds)

    threads = [threading.Thread(target=stop, args=(i,)) for i in range(len(processes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
