"""The benchmark's modes and its report (docs/benchmark.md has the method).

Default mode (bench/compare.py): the product worker (the Procfile's ``worker:`` line) and the
naive baseline (``bench/naive.py``) take turns on the same simulator, dataset and broker,
``--rounds`` times each. ``--rate-limit-test`` (bench/fleet.py): three product workers share a
30/s budget through Redis. ``--memory-test`` (bench/memory.py): one product worker, RSS after
20,000 and after 200,000 events. ``--write-docs`` regenerates the latest-figures table of
docs/benchmark.md (bench/report.py).

Before anything else the vhost of ``--broker-url`` is created if it is missing (rabbitmqctl).
Every run: fresh queues and Redis DB, a fresh worker, simulator stats reset once the worker
logged ``worker.consumer_ready`` (once per process with ``--processes N``), then all N ids sent
at once (a backlog: the producer sends ~2,000/s, far faster than either worker drains), records
consumed from ``bench.records`` (bound to ``rapidly.enriched`` with ``#``) until all N arrived.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench._infra import exclusive
from bench._run import (
    DEFAULT_BROKER,
    DEFAULT_REDIS,
    EXTRA_ENV,
    log,
    machine_facts,
    source_fingerprint,
)
from bench.compare import mode_throughput
from bench.fleet import mode_rate_limit
from bench.floor import mode_floor
from bench.memory import mode_memory
from devkit import VhostProblem, ensure_vhost


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=None, help="events per run (default 2000)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="simulator API latency")
    parser.add_argument("--rounds", type=int, default=None, help="product/naive pairs (default 2)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="WORKER_CONCURRENCY of each product worker process (default 100)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="WORKER_PROCESSES of each product worker: worker processes under one supervisor, "
        "each with --concurrency greenlets (default: 2 in the comparison, one pod using both "
        "cores of the reference machine; 1 per worker in the fleet and memory tests)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 200 events, 1 round; fleet 1000 events / 20 s; memory 2000 then 20000",
    )
    parser.add_argument(
        "--rate-limit-test",
        action="store_true",
        help="only the fleet test: 3 product workers on one 30/s budget",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="after the comparison, the floor: the product's Celery configuration with a task "
        "that does nothing, then one confirmed publish, then the dedupe round trips around it "
        "(CPU per message of each; docs/benchmark.md)",
    )
    parser.add_argument(
        "--floor-events", type=int, default=None, help="floor: messages per step (default 20000)"
    )
    parser.add_argument(
        "--memory-test",
        action="store_true",
        help="only the memory test: RSS after 20k and after 200k events",
    )
    parser.add_argument(
        "--send-rate",
        type=float,
        default=0.0,
        metavar="IDS_PER_S",
        help="compare mode: pace the sends (default 0: all ids at once, a backlog); below both "
        "workers' capacity the latencies are service latencies, not queueing",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="regenerate the latest-figures table in docs/benchmark.md (the rows of the modes "
        "this run measured)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--dataset",
        choices=("bench", "default"),
        default="bench",
        help="compare mode: the simulator's dataset (default: bench; default: the simulator's "
        "own, small and hostile: cycles, a 120-deep chain, parents out of sight)",
    )
    parser.add_argument(
        "--broker-url",
        default=DEFAULT_BROKER,
        help=f"RabbitMQ vhost for every run (default {DEFAULT_BROKER})",
    )
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS,
        help=f"the workers' REDIS_URL, flushed before each run ({DEFAULT_REDIS})",
    )
    parser.add_argument("--rl-events", type=int, default=None, help="fleet backlog (default 20000)")
    parser.add_argument(
        "--rl-window",
        type=float,
        default=None,
        help="fleet measuring window in seconds (default 60)",
    )
    parser.add_argument("--rl-workers", type=int, default=3)
    parser.add_argument("--mem-events", type=int, default=None, help="default 200000")
    parser.add_argument("--mem-first", type=int, default=None, help="default 20000")
    parser.add_argument(
        "--workers",
        default="product,naive",
        help="which workers take turns in the comparison (default product,naive)",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the product worker, for diagnostics (repeatable)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker logs")
    args = parser.parse_args(argv)
    if args.processes is None:
        args.processes = 1 if (args.rate_limit_test or args.memory_test) else 2
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    quick = args.quick
    args.workers = [w.strip() for w in args.workers.split(",") if w.strip()]
    if not set(args.workers) <= {"product", "naive"} or not args.workers:
        parser.error("--workers takes product, naive or both")
    for item in args.worker_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--worker-env wants KEY=VALUE, got {item!r}")
        EXTRA_ENV[key] = value
    args.events = args.events or (200 if quick else 2000)
    args.rounds = args.rounds or (1 if quick else 2)
    args.rl_events = args.rl_events or (1000 if quick else 20_000)
    args.floor_events = args.floor_events or (2000 if quick else 20_000)
    args.rl_window = args.rl_window or (20.0 if quick else 60.0)
    args.mem_events = args.mem_events or (20000 if quick else 200_000)
    args.mem_first = args.mem_first or (2000 if quick else 20_000)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)

    def terminate(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # runs the finally blocks: workers and simulator stop

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in background
    try:
        vhost = ensure_vhost(args.broker_url)
    except VhostProblem as exc:
        print(f"bench: {exc}", file=sys.stderr, flush=True)
        return 2
    if vhost is not None:
        log(f"broker: {vhost}")
    try:
        with exclusive(args.broker_url, args.redis_url, timeout=3600, on_wait=log):
            return run_modes(args)
    except TimeoutError as exc:
        print(f"bench: {exc}", file=sys.stderr, flush=True)
        return 2


def run_modes(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="rapidly-bench-"))
    out: dict[str, Any] = {"source": source_fingerprint(), "worker_env_extra": dict(EXTRA_ENV)}
    log(f"worker source: {out['source']}" + (f", extra env {EXTRA_ENV}" if EXTRA_ENV else ""))
    log(f"machine: {machine_facts()}")
    began = time.monotonic()
    try:
        modes = []
        if args.rate_limit_test:
            modes.append(("rate_limit_test", mode_rate_limit))
        if args.memory_test:
            modes.append(("memory_test", mode_memory))
        if not modes:
            modes.append(("compare", mode_throughput))
        if args.floor:
            modes.append(("floor", mode_floor))
        for name, mode in modes:
            t = time.monotonic()
            out[name] = mode(args, tmp)
            out[name]["mode_seconds"] = round(time.monotonic() - t, 1)
            log(f"{name} took {out[name]['mode_seconds']:.0f} s")
    finally:
        if args.keep_logs:
            log(f"worker logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out["total_seconds"] = round(time.monotonic() - began, 1)
    out["machine"] = machine_facts()
    out["finished_at"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    out["quick"] = args.quick
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        log(f"wrote {args.json}")
    if args.write_docs:
        report.write_latest(out)
        log(f"regenerated the latest figures in {report.DOCS.relative_to(report.ROOT)}")
    return 0
