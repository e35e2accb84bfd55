"""Real processes for integration tests: the worker from the Procfile line, and broker-side
helpers that send like a plain producer and read like a plain consumer. The simulator process,
the contract's queue names and the Procfile reader are ``devkit``'s."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Connection, Queue

from devkit import (
    CUSTOMER_CREATED,
    DEAD_QUEUE,
    ENRICHED,
    EVENTS,
    EVENTS_QUEUE,
    ROOT,
    TOKEN,
    VENV_BIN,
    free_port,
    procfile_command,
    reset_queues,
    validate_record,
)

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_BROKER_URL = os.environ.get("TEST_REDIS_BROKER_URL", "redis://127.0.0.1:6379/14")
REDIS_STORE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

# A test-only queue that sees every record (the contract only promises the exchange).
ALL_RECORDS = Queue("test.all_records", ENRICHED, routing_key="#", durable=True)


@dataclass
class WorkerProcess:
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    # Run the Procfile line under this command, e.g. ("taskset", "-c", "0"): one CPU.
    wrapper: tuple[str, ...] = ()
    starts: int = 0
    logs: list[str] = field(default_factory=list)

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.env, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
        env.pop("CI", None)
        self.starts += 1
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.wrapper, "bash", "-c", procfile_command()],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            if self.log_text().count("worker.consumer_ready") >= self.starts:
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout}s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def producer(broker_url: str) -> Celery:
    """Exactly what CONTRACT.md shows a producer doing: none of the project's code."""
    return Celery(broker=broker_url)


def send(app: Celery, event_id: Any) -> None:
    app.send_task("events.enrich", args=[event_id], queue=EVENTS)


def purge(broker_url: str) -> None:
    reset_queues(broker_url, (EVENTS_QUEUE, DEAD_QUEUE, CUSTOMER_CREATED, ALL_RECORDS))


def drain(
    broker_url: str, queue: Queue, *, expect: int, timeout: float, settle: float = 0.0
) -> list[Any]:
    """Read (and ack) messages until ``expect`` arrived, then wait ``settle`` more for extras.

    Every message read from a queue bound to the records exchange is validated against the
    record's JSON Schema (CONTRACT.md section 9)."""
    records = queue.exchange is not None and queue.exchange.name == ENRICHED.name
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    with Connection(broker_url) as conn:
        bound = queue.bind(conn.default_channel)
        while True:
            now = time.monotonic()
            if len(got) >= expect:
                settle_until = settle_until or now + settle
                if now >= settle_until:
                    break
            elif now >= deadline:
                break
            message = bound.get(no_ack=False)
            if message is None:
                time.sleep(0.05)
                continue
            message.ack()
            if records:
                validate_record(message.body)
            got.append(message)
    return got


def worker_env(
    *, api_url: str, broker_url: str, tmp: Path, redis_url: str | None, **extra: str
) -> dict[str, str]:
    env = {
        "RAPIDLY_API_URL": api_url,
        "RAPIDLY_API_TOKEN": TOKEN,
        "BROKER_URL": broker_url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "WORKER_CONCURRENCY": "50",
        # One process unless a test asks for more: the default (one per CPU) depends on the host.
        "WORKER_PROCESSES": "1",
        "NOT_FOUND_WAIT_SECONDS": "2",
        "RETRY_BUDGET_SECONDS": "10",
        "AUTH_RETRY_SECONDS": "1",
        "METRICS_PORT": str(free_port()),
        "HEALTH_DIR": str(tmp / "health"),
        "RAPIDLY_RATE_LIMIT": "2000/s",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def quote(s: str) -> str:
    return shlex.quote(s)
