"""``python -m bench.fanout``: API calls per child event when one parent's children trickle in.

The scenario: one ``batch.started`` user event (under a customer's ``customer.created``) with
``--children`` children, and a producer that sends the root, the parent, then each child's ID in
time order, paced so that all the children arrive over ``--duration`` seconds (by default 10,000
over 120 s: 83 a second, the rate of 50,000 children over ten minutes). One product worker (the
Procfile's ``worker:`` line, with Redis) enriches them against the simulator's ``fanout``
dataset. Printed: API calls (by kind) over the whole run, calls per child event, and whether
every record's hierarchy and counts are what the dataset expects.

It measures calls, not throughput, so it takes no machine lock; it touches only the RabbitMQ
vhost and the Redis DB it is given (``--broker-url``/``--redis-url``, defaulting to
``TEST_AMQP_URL`` and ``TEST_REDIS_URL``): their queues are purged and the DB flushed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._run import (
    DEFAULT_BROKER,
    DEFAULT_REDIS,
    check_records,
    fresh_start,
    log,
    product_worker,
    wait_for,
)
from devkit import Sender, SimulatorProcess, VhostProblem, ensure_vhost


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--children", type=int, default=10_000, help="children of the parent")
    parser.add_argument(
        "--duration", type=float, default=120.0, help="seconds over which the children arrive"
    )
    parser.add_argument("--latency-ms", type=float, default=20.0, help="simulator API latency")
    parser.add_argument("--concurrency", type=int, default=50, help="WORKER_CONCURRENCY")
    parser.add_argument("--processes", type=int, default=1, help="WORKER_PROCESSES")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--broker-url", default=os.environ.get("TEST_AMQP_URL", DEFAULT_BROKER))
    parser.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS))
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.children < 1 or args.duration <= 0:
        parser.error("--children must be >= 1 and --duration > 0")
    return args


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from simulator import build_dataset  # noqa: PLC0415 - the simulator is a dev tool

    dataset = build_dataset("fanout", args.seed, args.children)
    head = dataset.ids_with_tag("fanout_root") + dataset.ids_with_tag("fanout_parent")
    children = sorted(dataset.ids_with_tag("fanout_child"), key=dataset.timestamp_us.__getitem__)
    sim = SimulatorProcess(
        "--dataset",
        "fanout",
        "--bench-size",
        str(args.children),
        "--seed",
        str(args.seed),
        "--latency-ms",
        str(args.latency_ms),
    )
    try:
        collector = fresh_start(args, keep_bodies=True)
        worker = product_worker("fanout", tmp, args, api_url=sim.url)
        worker.start()
        try:
            worker.wait_ready()
            sim.reset_stats()
            sender = Sender(args.broker_url)
            started = time.monotonic()
            sender.send(head)
            sender.send(children, rate=args.children / args.duration)
            send_s = time.monotonic() - started
            total = len(head) + len(children)
            finished = wait_for(collector, total, 120 + total * 0.05, [worker])
            stats = sim.stats()
            sender.close()
        finally:
            worker.stop(90)
            collector.stop()
    finally:
        sim.stop()
    correct, bad = check_records(collector.bodies, dataset)
    calls = int(stats["requests_total"])
    return {
        "children": len(children),
        "events_sent": total,
        "send_s": round(send_s, 1),
        "records": len(collector.bodies),
        "finished": finished,
        "correct_records": correct,
        "wrong_examples": bad,
        "api_calls": calls,
        "api_by_kind": stats["by_kind"],
        "rate_limited_429": stats["rate_limited"],
        "calls_per_child_event": round(calls / len(children), 4),
        "child_events_per_call": round(len(children) / calls, 1) if calls else math.inf,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        ensure_vhost(args.broker_url)
    except VhostProblem as exc:
        print(f"bench.fanout: {exc}", file=sys.stderr, flush=True)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="rapidly-fanout-"))
    try:
        log(
            f"fanout: {args.children} children over {args.duration:.0f} s "
            f"({args.children / args.duration:.0f}/s), latency {args.latency_ms:.0f} ms"
        )
        result = run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(
        f"fanout: {result['records']}/{result['events_sent']} records, "
        f"correct {result['correct_records']}/{result['records']}, "
        f"{result['api_calls']} API calls {result['api_by_kind']}, "
        f"429s {result['rate_limited_429']}"
    )
    print(
        f"calls per child event: {result['calls_per_child_event']:.4f} "
        f"(one call per {result['child_events_per_call']} child events)",
        flush=True,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ok = result["finished"] and result["correct_records"] == result["records"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
