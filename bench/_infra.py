"""Processes and broker plumbing for the benchmark: the simulator, workers started from a command
line (the Procfile's ``worker:`` line for the product), a record collector, a process-tree
sampler (RSS and CPU), a producer that sends like any producer, and queue/Redis resets.

Only the RabbitMQ vhost and the Redis databases given on the command line are touched.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from celery import Celery
from kombu import Connection, Consumer, Exchange, Queue

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
TOKEN = "sim_oat_valid_token_0123456789"

EVENTS = "rapidly.events"
DEAD = "rapidly.events.dead"
ENRICHED = Exchange("rapidly.enriched", type="topic", durable=True)
EVENTS_QUEUE = Queue(EVENTS, Exchange(EVENTS, "direct", durable=True), EVENTS, durable=True)
DEAD_QUEUE = Queue(DEAD, Exchange(DEAD, "direct", durable=True), DEAD, durable=True)
CUSTOMER_CREATED = Queue(
    "rapidly.customer_created", ENRICHED, routing_key="system.customer.created", durable=True
)
# The benchmark's own view of every record. Not durable: the broker need not write the copies
# to disk (the worker's confirms still cover the durable rapidly.customer_created queue).
RECORDS = Queue("bench.records", ENRICHED, routing_key="#", durable=False)


def procfile_command(kind: str = "worker") -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"Procfile has no {kind}: line")


# --------------------------------------------------------------------------------------------
# Simulator


class Simulator:
    def __init__(self, *args: str, module: str = "simulator") -> None:
        self.args = args
        self.module = module
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"simulator did not start (exit {self.proc.poll()})")
        self.url: str = json.loads(line)["url"]
        self.ps = psutil.Process(self.proc.pid)

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method="POST" if body is not None else "GET",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def stats(self) -> dict[str, Any]:
        return self.admin("/_sim/stats")

    def reset_stats(self) -> None:
        self.admin("/_sim/stats/reset", {})

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# --------------------------------------------------------------------------------------------
# Workers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerProcess:
    """One worker started as ``bash -c COMMAND`` in its own session (so SIGTERM reaches the
    whole tree through its process group, and only ours)."""

    name: str
    command: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.env}
        env["PATH"] = f"{VENV_BIN}:{os.environ.get('PATH', '')}"
        env["PYTHONPATH"] = str(ROOT)
        env.pop("CI", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", self.command],
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

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log_text()[-3000:]}")
            if "worker.consumer_ready" in self.log_text():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_text()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 90) -> tuple[int | None, float]:
        """SIGTERM (Celery's warm shutdown), SIGKILL after ``timeout``; returns (rc, seconds)."""
        started = time.monotonic()
        if self.proc is None:
            return None, 0.0
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        return self.proc.returncode, time.monotonic() - started


# --------------------------------------------------------------------------------------------
# Sampling the worker tree


class TreeSampler(threading.Thread):
    """Every ``interval`` seconds: RSS of each root process plus all its descendants (summed),
    and their CPU time (kept per pid, so a child that exits still counts up to its last
    sample)."""

    def __init__(self, pids: Iterable[int], interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="tree-sampler")
        self.roots = [psutil.Process(pid) for pid in pids]
        self.interval = interval
        self.peak_rss = 0
        self.last_rss = 0
        self.series: list[tuple[float, int]] = []
        self._cpu: dict[int, float] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def _tree(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for root in self.roots:
            try:
                procs.append(root)
                procs.extend(root.children(recursive=True))
            except psutil.Error:
                continue
        return procs

    def sample(self) -> int:
        rss = 0
        cpu: dict[int, float] = {}
        for proc in self._tree():
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    cpu[proc.pid] = times.user + times.system
            except psutil.Error:
                continue
        with self._lock:
            self._cpu.update(cpu)
            self.last_rss = rss
            self.peak_rss = max(self.peak_rss, rss)
            self.series.append((time.time(), rss))
        return rss

    def cpu_seconds(self) -> float:
        self.sample()
        with self._lock:
            return sum(self._cpu.values())

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# --------------------------------------------------------------------------------------------
# Records


class RecordCollector(threading.Thread):
    """Consumes ``bench.records`` (no-ack, bodies not decoded while measuring) and stamps each
    arrival with ``time.time()``; also drains ``rapidly.customer_created`` so that the durable
    copies do not pile up in the broker during long runs."""

    def __init__(self, broker_url: str, *, keep_bodies: bool) -> None:
        super().__init__(daemon=True, name="record-collector")
        self.broker_url = broker_url
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
                records_channel = conn.channel()
                records_channel.basic_qos(0, 2000, False)
                other_channel = conn.channel()
                other_channel.basic_qos(0, 2000, False)
                with (
                    Consumer(records_channel, [RECORDS], no_ack=True, on_message=self._on_record),
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
        except Exception as exc:  # noqa: BLE001 - re-raised by wait_for
            self.error = exc
            self.ready.set()

    def count(self) -> int:
        return len(self.first_arrival)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


# --------------------------------------------------------------------------------------------
# Broker and Redis


def reset_broker(broker_url: str) -> None:
    """Declare (as the worker and a plain producer do) and purge every queue the run uses."""
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        for queue in (EVENTS_QUEUE, DEAD_QUEUE, CUSTOMER_CREATED, RECORDS):
            bound = queue.bind(channel)
            bound.declare()
            bound.purge()


def queue_depth(broker_url: str, queue: Queue) -> int:
    with Connection(broker_url) as conn:
        _name, count, _consumers = queue.bind(conn.default_channel).queue_declare(passive=True)
        return int(count)


def flush_redis(redis_url: str) -> None:
    import redis  # noqa: PLC0415 - only where needed

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


@dataclass
class Sender:
    """A plain producer: ``Celery(broker=URL).send_task("events.enrich", args=[id],
    queue="rapidly.events")``, one producer connection reused; remembers each send time."""

    broker_url: str
    sent_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.app = Celery(broker=self.broker_url)

    def send(self, ids: Iterable[str], *, rate: float = 0.0) -> int:
        """Send every id; ``rate`` > 0 paces the sends to that many ids per second."""
        count = 0
        started = time.monotonic()
        with self.app.producer_or_acquire() as producer:
            for event_id in ids:
                if rate > 0:
                    delay = started + count / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                self.app.send_task(
                    "events.enrich", args=[event_id], queue=EVENTS, producer=producer
                )
                self.sent_at.setdefault(event_id, time.time())
                count += 1
        return count

    def close(self) -> None:
        self.app.close()
