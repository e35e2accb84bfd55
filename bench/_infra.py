"""Processes and broker plumbing for the benchmark: the simulator, workers started from a command
line (the Procfile's ``worker:`` line for the product), a record collector, a process-tree
sampler (RSS and CPU), CPU accounting of RabbitMQ, Redis and the benchmark itself, a producer
that sends like any producer, queue/Redis resets, and the RabbitMQ vhost (created if missing).

Only the RabbitMQ vhost and the Redis databases given on the command line are touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
from celery import Celery
from kombu import Connection, Consumer, Queue

from devkit import (
    CUSTOMER_CREATED,
    DEAD_QUEUE,
    ENRICHED,
    EVENTS,
    EVENTS_QUEUE,
    ROOT,
    VENV_BIN,
    machine_lock,
    reset_queues,
)

# The benchmark's own view of every record. Not durable: the broker need not write the copies
# to disk (the worker's confirms still cover the durable rapidly.customer_created queue).
RECORDS = Queue("bench.records", ENRICHED, routing_key="#", durable=False)
# Logged once by each worker process when it consumes (the naive worker prints it too).
READY_MARKER = "worker.consumer_ready"


# --------------------------------------------------------------------------------------------
# Workers


@dataclass
class WorkerProcess:
    """One worker started as ``bash -c COMMAND`` in its own session (so SIGTERM reaches the
    whole tree through its process group, and only ours)."""

    name: str
    command: str
    env: dict[str, str]
    log_path: Path
    # How many READY_MARKER lines mean "ready": one per worker process (WORKER_PROCESSES=N
    # starts N children under a supervisor, and each logs the marker once).
    ready_lines: int = 1
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

    def ready_count(self) -> int:
        return sum(1 for line in self.log_text().splitlines() if READY_MARKER in line)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until ``ready_lines`` lines with READY_MARKER are in the log (90 s, +15 s per extra
        process: N processes start at once on few cores)."""
        if timeout is None:
            timeout = 90 + 15 * (self.ready_lines - 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log_text()[-3000:]}")
            if self.ready_count() >= self.ready_lines:
                return
            time.sleep(0.2)
        raise RuntimeError(
            f"{self.name} not ready in {timeout:.0f}s ({self.ready_count()}/{self.ready_lines} "
            f"{READY_MARKER} lines):\n{self.log_text()[-3000:]}"
        )

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
# CPU of the machine's other parts: RabbitMQ, Redis, the benchmark itself


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds (user + system, all threads) per process, keyed by (pid, create time), and
    when they were read."""

    at: float
    seconds: dict[tuple[int, float], float]

    @classmethod
    def of(cls, procs: Iterable[psutil.Process]) -> CpuSnapshot:
        at = time.time()
        seconds: dict[tuple[int, float], float] = {}
        for proc in procs:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    seconds[(proc.pid, proc.create_time())] = times.user + times.system
            except psutil.Error:  # NoSuchProcess (gone since it was found), AccessDenied
                continue
        return cls(at, seconds)

    def since(self, earlier: CpuSnapshot) -> float:
        """CPU seconds used between ``earlier`` and this snapshot. A process that started in
        between counts from its start; one that exited in between is lost (its share then shows
        up in ``rest``); one seen only now but older than ``earlier`` is left out."""
        total = 0.0
        for key, seconds in self.seconds.items():
            if key in earlier.seconds:
                total += max(0.0, seconds - earlier.seconds[key])
            elif key[1] >= earlier.at:
                total += seconds
        return total


def processes_named(name: str) -> list[psutil.Process]:
    """Processes whose name or first command-line word (redis-server rewrites its argv to a title
    such as ``redis-server 127.0.0.1:6379``) is ``name``."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmdline = proc.info.get("cmdline") or []
            first = os.path.basename(cmdline[0].split(" ", 1)[0]) if cmdline else ""
            if name in (proc.info.get("name"), first):
                found.append(proc)
        except (psutil.Error, IndexError):
            continue
    return found


def _serves_port(proc: psutil.Process, port: int) -> bool:
    try:
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            for c in proc.net_connections(kind="tcp")
        )
    except psutil.AccessDenied:
        try:
            return f":{port}" in " ".join(proc.cmdline())
        except psutil.Error:
            return False
    except psutil.Error:
        return False


def rabbitmq_processes() -> list[psutil.Process]:
    return processes_named("beam.smp")


def redis_processes(redis_url: str) -> list[psutil.Process]:
    """The redis-server(s) listening on ``redis_url``'s port (other sessions may run their own
    on other ports); every redis-server if none can be told apart."""
    servers = processes_named("redis-server")
    try:
        port = urlsplit(redis_url).port
    except ValueError:
        port = None
    if port is None and redis_url.startswith(("redis://", "rediss://")):
        port = 6379
    if port is None:
        return servers
    return [p for p in servers if _serves_port(p, port)] or servers


class OtherCpu:
    """Snapshots of the CPU time of RabbitMQ (``beam.smp``), the Redis server (``redis-server``)
    and this benchmark process (all its threads: record collector, samplers, producer). The
    processes are looked up again at every snapshot."""

    def __init__(self, redis_url: str) -> None:
        # "bench" first: the process scans for the other two then fall outside its own figure
        # at both ends, as they fall outside the machine's figure read just before.
        self.finders: dict[str, Callable[[], list[psutil.Process]]] = {
            "bench": lambda: [psutil.Process()],
            "rabbitmq": rabbitmq_processes,
            "redis": lambda: redis_processes(redis_url),
        }

    def snapshot(self) -> dict[str, CpuSnapshot]:
        return {label: CpuSnapshot.of(find()) for label, find in self.finders.items()}

    @staticmethod
    def between(before: dict[str, CpuSnapshot], after: dict[str, CpuSnapshot]) -> dict[str, float]:
        return {label: after[label].since(before[label]) for label in after}

    @staticmethod
    def pids(snapshot: dict[str, CpuSnapshot]) -> dict[str, list[int]]:
        return {label: sorted(pid for pid, _ in snap.seconds) for label, snap in snapshot.items()}


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
                records_channel: Any = conn.channel()
                records_channel.basic_qos(0, 2000, False)
                other_channel: Any = conn.channel()
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


@contextlib.contextmanager
def exclusive(
    broker_url: str, redis_url: str, *, timeout: float, on_wait: Callable[[str], None]
) -> Iterator[None]:
    """One benchmark at a time per vhost and Redis DB: each run purges the queues and flushes the
    DB, so two invocations would wreck each other's figures. Waits (``on_wait`` every 30 s) for
    an earlier one, up to ``timeout``; raises TimeoutError after that."""
    key = hashlib.sha256(f"{broker_url}\0{redis_url}".encode()).hexdigest()[:12]
    with machine_lock(
        Path("/tmp") / f"rapidly-bench-{key}.lock",
        timeout=timeout,
        what="this benchmark vhost and Redis DB",
        on_wait=on_wait,
    ):
        yield


def reset_broker(broker_url: str) -> None:
    """Declare (as the worker and a plain producer do) and purge every queue the run uses."""
    reset_queues(broker_url, (EVENTS_QUEUE, DEAD_QUEUE, CUSTOMER_CREATED, RECORDS))


def queue_depth(broker_url: str, queue: Queue) -> int:
    with Connection(broker_url) as conn:
        declared: Any = queue.bind(conn.default_channel).queue_declare(passive=True)
        _name, count, _consumers = declared
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
