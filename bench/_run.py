"""What every benchmark mode shares: the defaults, the workers it starts (the product from the
Procfile, the naive baseline), a fresh broker and Redis before each run, the simulator serving the
bench dataset, waiting for records, checking them, and which worker code was measured."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._infra import RECORDS, flush_redis, reset_broker
from devkit import (
    ROOT,
    TOKEN,
    RecordCollector,
    SimulatorProcess,
    TreeSampler,
    WorkerProcess,
    record_errors,
)

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672/bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/9"
NAIVE_COMMAND = "celery -A bench.naive worker --pool=prefork --concurrency=2 --loglevel=INFO"
NAIVE_CONCURRENCY = 2
# --worker-env KEY=VALUE: extra settings for the product worker (diagnostics only).
EXTRA_ENV: dict[str, str] = {}
# Budget for throughput runs: far above anything reachable, so it never limits (the product
# still goes through its Redis limiter for every call, as in production).
UNLIMITED = "100000/s"
# Variables the worker reads that must not leak in from the caller's environment.
SCRUBBED = (
    "RAPIDLY_API_URL",
    "RAPIDLY_API_TOKEN",
    "BROKER_URL",
    "DOWNSTREAM_BROKER_URL",
    "REDIS_URL",
    "RAPIDLY_RATE_LIMIT",
    "WORKER_CONCURRENCY",
    "WORKER_PROCESSES",
    "METRICS_PORT",
    "HEALTH_DIR",
)
for _name in SCRUBBED:
    os.environ.pop(_name, None)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def mb(n: float) -> float:
    return n / (1024 * 1024)


def idle_seconds(times: Any) -> float:
    """Idle + iowait seconds of ``psutil.cpu_times()``, over all cores."""
    return float(times.idle + getattr(times, "iowait", 0.0))


def steal_seconds(times: Any) -> float:
    return float(getattr(times, "steal", 0.0))


def machine_facts() -> dict[str, Any]:
    """What the figures were measured on: the same code runs at different speeds on different
    hosts (twice as slow per event on one earlier session's machine)."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform()}


def total_seconds(times: Any) -> float:
    """All seconds of ``psutil.cpu_times()``; on Linux guest time is already in user/nice."""
    total = float(sum(times))
    return total - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


# --------------------------------------------------------------------------------------------
# Workers


def product_worker(
    name: str,
    tmp: Path,
    args: argparse.Namespace,
    *,
    api_url: str,
    rate_limit: str = UNLIMITED,
) -> WorkerProcess:
    """The Procfile's ``worker:`` line; ``processes`` > 1 makes it a supervisor of that many
    worker processes (``WORKER_PROCESSES``), each with ``concurrency`` greenlets."""
    env = {
        "RAPIDLY_API_URL": api_url,
        "RAPIDLY_API_TOKEN": TOKEN,
        "BROKER_URL": args.broker_url,
        "REDIS_URL": args.redis_url,
        "RAPIDLY_RATE_LIMIT": rate_limit,
        "WORKER_CONCURRENCY": str(args.concurrency),
        "WORKER_PROCESSES": str(args.processes),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "METRICS_PORT": "0",
        "HEALTH_DIR": str(tmp / f"health-{name}"),
        **EXTRA_ENV,
    }
    return WorkerProcess(env, tmp / f"{name}.log", name=name, ready_lines=args.processes)


def start_sampled(workers: list[WorkerProcess]) -> TreeSampler:
    """Start ``workers`` and a sampler of their process trees (RSS, CPU)."""
    for worker in workers:
        worker.start()
    sampler = TreeSampler([w.proc.pid for w in workers if w.proc is not None])
    sampler.start()
    return sampler


def naive_worker(name: str, tmp: Path, *, api_url: str, broker: str) -> WorkerProcess:
    env = {"RAPIDLY_API_URL": api_url, "RAPIDLY_API_TOKEN": TOKEN, "BROKER_URL": broker}
    return WorkerProcess(env, tmp / f"{name}.log", name=name, command=NAIVE_COMMAND)


def stop_timed(worker: WorkerProcess, timeout: float = 90) -> tuple[int | None, float]:
    """SIGTERM (a warm shutdown: a product worker finishes what it holds), SIGKILL after
    ``timeout``; (exit code, seconds)."""
    rc = worker.stop(timeout)
    return rc, worker.stop_seconds


def wait_for(
    collector: RecordCollector,
    target: int,
    timeout: float,
    workers: list[WorkerProcess],
    on_progress: Callable[[int], None] | None = None,
) -> bool:
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while time.monotonic() < deadline:
        if collector.error is not None:
            raise RuntimeError(f"record collector failed: {collector.error!r}")
        count = collector.count()
        if on_progress is not None:
            on_progress(count)
        if count >= target:
            return True
        if not all(w.alive() for w in workers):
            dead = [w for w in workers if not w.alive()]
            raise RuntimeError(f"{dead[0].name} died:\n{dead[0].log_text()[-3000:]}")
        if time.monotonic() - last_report > 30:
            log(f"  ... {count}/{target} records")
            last_report = time.monotonic()
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------------------------
# Correctness of the records (after the measured window, never during it)


def check_records(bodies: dict[str, bytes], dataset: Any) -> tuple[int, list[str]]:
    """(records that validate against the schema and match the dataset's expectation, up to
    three ids of the others)."""
    bad: list[str] = []
    for event_id, body in bodies.items():
        if record_errors(body):
            bad.append(event_id)
            continue
        record = json.loads(body)
        h = record["hierarchy"]
        got = {k: h[k] for k in ("root_id", "depth", "complete", "incomplete_reason")}
        got["child_count"] = h["child_count"]
        got["descendant_count"] = h["descendant_count"]
        got["ancestors"] = [a["id"] for a in h["ancestors"]]
        want = dataset.expected(event_id)["hierarchy"]
        if got != want or record["event"]["id"] != event_id:
            bad.append(event_id)
    return len(bodies) - len(bad), bad[:3]


def fresh_start(args: argparse.Namespace, *, keep_bodies: bool) -> RecordCollector:
    """Empty queues and Redis DB, and a record collector listening before anything is sent."""
    reset_broker(args.broker_url)
    flush_redis(args.redis_url)
    return RecordCollector(args.broker_url, RECORDS, keep_bodies=keep_bodies).start_listening()


def bench_simulator(
    n: int, seed: int, latency_ms: float, *extra: str, dataset: str = "bench"
) -> SimulatorProcess:
    """The simulator serving ``dataset`` (the bench dataset of ``n`` events by default)."""
    return SimulatorProcess(
        "--dataset",
        dataset,
        "--bench-size",
        str(n),
        "--seed",
        str(seed),
        "--latency-ms",
        str(latency_ms),
        *extra,
    )


def source_fingerprint() -> dict[str, Any]:
    """Which worker code was measured: others edit worker/ while benchmarks run."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for d in ("worker", "tasks")
        for p in (ROOT / d).rglob("*.py")
        if "__pycache__" not in p.parts
    )
    for path in [*files, ROOT / "Procfile"]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    info: dict[str, Any] = {"worker_sha256": digest.hexdigest()[:12]}
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "worker", "tasks", "Procfile"],
            cwd=ROOT,
            check=False,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
        info["git_head"] = head
        info["uncommitted"] = [line[3:] for line in dirty if line.strip()]
    except OSError:
        pass
    return info
