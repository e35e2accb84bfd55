"""The floor (``--floor``): what the product's fixed parts cost per event on this machine.

``bench.floor_worker`` runs the product's Celery configuration and pool with a task that does only
the first steps of an event's work: nothing (Celery's own cost per message), then one confirmed
publish, then the dedupe around it (claim and sent mark: two round trips; a fresh lease's
confirm makes none). Each step runs on a backlog of
``--floor-events`` ids after a warm-up; its figure is the floor worker's CPU seconds per message.
The product's own figure (``--workers product``, run first in the same invocation) sits beside
them: the difference is the enrichment itself (API calls, cache, windows), the summary log line
and the metrics.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from kombu import Connection

from bench._infra import flush_redis, reset_broker
from bench._run import log
from devkit import EVENTS_QUEUE, Sender

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("celery", "publish", "dedupe")  # what bench.floor_worker's task does (FLOOR_STEP)
WARM_UP = 1000
IDLE_CPU_SHARE = 0.05  # of one core: the floor worker has finished its backlog

WHAT = {
    "celery": "Celery: receive, trace, late ack",
    "publish": "+ one record published and confirmed",
    "dedupe": "+ claim, lease confirm and sent mark (two Redis round trips)",
}


def _consumers(broker_url: str) -> int:
    with Connection(broker_url) as conn:
        declared: Any = EVENTS_QUEUE.bind(conn.default_channel).queue_declare(passive=True)
        return int(declared[2])


def _ready_messages(broker_url: str) -> int:
    with Connection(broker_url) as conn:
        declared: Any = EVENTS_QUEUE.bind(conn.default_channel).queue_declare(passive=True)
        return int(declared[1])


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _drain(broker_url: str, proc: psutil.Popen, timeout: float = 600) -> float:
    """Waits until the queue is empty and the worker idle; when its last busy moment was."""
    deadline = time.monotonic() + timeout
    while _ready_messages(broker_url) > 0:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the floor worker did not drain its queue")
        time.sleep(0.1)
    last_busy = time.monotonic()
    while time.monotonic() < deadline:
        before, at = _cpu(proc), time.monotonic()
        time.sleep(0.3)
        if _cpu(proc) - before < IDLE_CPU_SHARE * (time.monotonic() - at):
            return last_busy
        last_busy = time.monotonic()
    raise RuntimeError("the floor worker did not go idle")


def floor_step(step: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    reset_broker(args.broker_url)
    flush_redis(args.redis_url)
    env = dict(
        os.environ,
        FLOOR_STEP=step,
        FLOOR_BROKER_URL=args.broker_url,
        FLOOR_REDIS_URL=args.redis_url,
        FLOOR_CONCURRENCY=str(args.concurrency),
    )
    log_path = tmp / f"floor-{step}.log"
    with log_path.open("wb") as out:
        proc = psutil.Popen(
            [sys.executable, "-m", "bench.floor_worker"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while _consumers(args.broker_url) < 1:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the floor worker ({step}) did not start: see {log_path}")
            time.sleep(0.2)
        sender = Sender(args.broker_url)
        sender.send(str(uuid.uuid4()) for _ in range(WARM_UP))
        _drain(args.broker_url, proc)
        ids = [str(uuid.uuid4()) for _ in range(args.floor_events)]
        cpu0, t0 = _cpu(proc), time.monotonic()
        sender.send(ids)
        ended = _drain(args.broker_url, proc)
        cpu = _cpu(proc) - cpu0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    n = args.floor_events
    row = {
        "step": step,
        "messages": n,
        "cpu_ms_per_message": round(cpu / n * 1000, 3),
        "messages_per_s": round(n / max(1e-9, ended - t0), 1),
    }
    log(f"floor {step}: {row['cpu_ms_per_message']:.3f} ms of CPU per message")
    return row


def mode_floor(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    log(f"floor: {args.floor_events} messages per step, {args.rounds} round(s)")
    runs = [floor_step(step, args, tmp) for _ in range(args.rounds) for step in STEPS]
    reset_broker(args.broker_url)
    flush_redis(args.redis_url)
    medians = {
        step: statistics.median(r["cpu_ms_per_message"] for r in runs if r["step"] == step)
        for step in STEPS
    }
    print("\nFloor: the product's fixed parts, CPU ms per message (median of the rounds):")
    for step in STEPS:
        per_round = ", ".join(f"{r['cpu_ms_per_message']:.2f}" for r in runs if r["step"] == step)
        print(f"  {medians[step]:5.2f}  {WHAT[step]:<48} ({per_round})")
    return {"runs": runs, "medians_ms": medians}
