"""The benchmark's own plumbing (the worker process, the producer, the record collector and the
process-tree sampler are ``devkit``'s): CPU accounting of RabbitMQ, Redis and the benchmark
itself, one run at a time per vhost and Redis DB, queue and Redis resets.

Only the RabbitMQ vhost and the Redis databases given on the command line are touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
from kombu import Connection, Queue

from devkit import (
    CUSTOMER_CREATED,
    DEAD_QUEUE,
    EVENTS_QUEUE,
    machine_lock,
    records_queue,
    reset_queues,
)

# The benchmark's own view of every record. Not durable: the broker need not write the copies
# to disk (the worker's confirms still cover the durable rapidly.customer_created queue).
RECORDS = records_queue("bench.records", durable=False)


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
