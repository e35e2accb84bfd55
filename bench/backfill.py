"""``python -m bench.backfill``: API calls per event of ``rapidly-worker backfill`` with a real
worker (the Procfile's ``worker:`` line), over the simulator's benchmark dataset.

It starts the simulator (``--dataset bench``), empties the run's queues and Redis DB, starts one
worker, runs ``rapidly-worker backfill`` over the dataset's whole time window, waits for every
record, and prints: events, records (each validated against the record's JSON Schema and compared
with the simulator's expected hierarchy), duplicates, dead letters, and the API calls the
simulator counted (backfill and worker together) per event.

Broker and Redis: ``--broker``/``--redis``, else ``TEST_AMQP_URL``/``TEST_REDIS_URL``, else the
benchmark's own vhost and DB. Only that vhost's queues and that Redis DB are touched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench._infra import RECORDS, exclusive, flush_redis, queue_depth, reset_broker
from bench._run import DEFAULT_BROKER, DEFAULT_REDIS
from devkit import (
    DEAD_QUEUE,
    ROOT,
    TOKEN,
    VENV_BIN,
    RecordCollector,
    SimulatorProcess,
    WorkerProcess,
    ensure_vhost,
    free_port,
    record_errors,
)

SINCE = "2025-03-01T00:00:00Z"  # the dataset starts on 2025-03-03
UNTIL = "2025-04-01T00:00:00Z"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__)
    parser.add_argument("--events", type=int, default=2000, help="bench dataset size")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="simulator API latency")
    parser.add_argument("--rate-limit", default="500/min", help="RAPIDLY_RATE_LIMIT of the run")
    parser.add_argument("--broker", default=os.environ.get("TEST_AMQP_URL", DEFAULT_BROKER))
    parser.add_argument("--redis", default=os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS))
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    ensure_vhost(args.broker)
    sim = SimulatorProcess(
        "--dataset",
        "bench",
        "--bench-size",
        str(args.events),
        "--seed",
        str(args.seed),
        "--latency-ms",
        str(args.latency_ms),
    )
    tmp = Path(tempfile.mkdtemp(prefix="rapidly-bench-backfill-"))
    worker: WorkerProcess | None = None
    collector: RecordCollector | None = None
    try:
        with exclusive(args.broker, args.redis, timeout=3600, on_wait=print):
            reset_broker(args.broker)
            flush_redis(args.redis)
            dataset = sim.dataset()
            expected = {e["id"]: e["expected"] for e in dataset["events"]}
            collector = RecordCollector(args.broker, RECORDS, keep_bodies=True)
            collector.start_listening()
            env = {
                "RAPIDLY_API_URL": sim.url,
                "RAPIDLY_API_TOKEN": TOKEN,
                "BROKER_URL": args.broker,
                "REDIS_URL": args.redis,
                "RAPIDLY_RATE_LIMIT": args.rate_limit,
                "LOG_FORMAT": "json",
                "METRICS_PORT": str(free_port()),
                "HEALTH_DIR": str(tmp / "health"),
            }
            worker = WorkerProcess(env, tmp / "worker.log").start()
            worker.wait_ready()
            sim.reset_stats()
            started = time.monotonic()
            done = subprocess.run(
                [f"{VENV_BIN}/rapidly-worker", "backfill", "--since", SINCE, "--until", UNTIL,
                 "--checkpoint", str(tmp / "checkpoint.json"), "--no-progress"],
                env={**os.environ, **env, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"},
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=args.timeout,
                check=False,
            )  # fmt: skip
            backfill_seconds = time.monotonic() - started
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            own = re.search(r"(\d+) API call\(s\)", done.stderr)
            backfill_calls = int(own.group(1)) if own else -1
            deadline = time.monotonic() + args.timeout
            while collector.count() < len(expected) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2.0)  # any late duplicate
            seconds = time.monotonic() - started
            stats = sim.stats()
            dead = queue_depth(args.broker, DEAD_QUEUE)
        figures = _figures(collector, expected, stats, backfill_calls, dead)
        figures.update(
            backfill_seconds=round(backfill_seconds, 2),
            seconds_to_last_record=round(seconds, 2),
            backfill_summary=done.stderr.strip().splitlines()[-1],
        )
        print(json.dumps(figures, indent=2))
        ok = figures["records"] == figures["events"] and not figures["wrong_records"]
        return 0 if ok and figures["duplicates"] == 0 else 1
    finally:
        if collector is not None:
            collector.stop()
        if worker is not None:
            worker.stop(timeout=60)
        sim.stop()


def _figures(
    collector: RecordCollector,
    expected: dict[str, dict[str, Any]],
    stats: dict[str, Any],
    backfill_calls: int,
    dead: int,
) -> dict[str, Any]:
    wrong: Counter[str] = Counter()
    for event_id, raw in collector.bodies.items():
        body = json.loads(raw)
        if record_errors(body):
            wrong["schema"] += 1
        want = expected.get(event_id)
        if want is None:
            wrong["not_in_dataset"] += 1
            continue
        have, need = body["hierarchy"], want["hierarchy"]
        for key in ("root_id", "depth", "complete", "incomplete_reason", "child_count"):
            if have[key] != need[key]:
                wrong[key] += 1
        if have["descendant_count"] != need["descendant_count"]:
            wrong["descendant_count"] += 1
        if [a["id"] for a in have["ancestors"]] != need["ancestors"]:
            wrong["ancestors"] += 1
    calls = int(stats["requests_total"])
    events = len(expected)
    return {
        "events": events,
        "records": collector.count(),
        "duplicates": collector.duplicates,
        "dead_letters": dead,
        "wrong_records": dict(wrong),
        "api_calls": calls,
        "api_calls_by_kind": stats["by_kind"],
        "api_calls_backfill": backfill_calls,
        "api_calls_worker": calls - backfill_calls,
        "api_calls_per_event": round(calls / max(1, events), 4),
        "rate_limited": stats["rate_limited"],
    }


if __name__ == "__main__":
    sys.exit(main())
