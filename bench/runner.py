"""The benchmark's modes and its report.

Default mode: the product worker (the Procfile's ``worker:`` line) and the naive baseline
(``bench/naive.py``) take turns on the same simulator, dataset and broker, ``--rounds`` times
each. ``--rate-limit-test``: three product workers share a 30/s budget through Redis.
``--memory-test``: one product worker, RSS after 20,000 and after 200,000 events.

Before anything else the vhost of ``--broker-url`` is created if it is missing (rabbitmqctl).
Every run: fresh queues and Redis DB, a fresh worker, simulator stats reset once the worker
logged ``worker.consumer_ready`` (once per process with ``--processes N``), then all N ids sent
at once (a backlog: the producer sends ~2,000/s, far faster than either worker drains), records
consumed from ``bench.records`` (bound to ``rapidly.enriched`` with ``#``) until all N arrived.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench._infra import (
    OtherCpu,
    RecordCollector,
    Sender,
    TreeSampler,
    WorkerProcess,
    exclusive,
    flush_redis,
    queue_depth,
    reset_broker,
)
from devkit import (
    EVENTS_QUEUE,
    ROOT,
    TOKEN,
    SimulatorProcess,
    VhostProblem,
    ensure_vhost,
    procfile_command,
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
    return WorkerProcess(
        name, procfile_command(), env, tmp / f"{name}.log", ready_lines=args.processes
    )


def start_sampled(workers: list[WorkerProcess]) -> TreeSampler:
    """Start ``workers`` and a sampler of their process trees (RSS, CPU)."""
    for worker in workers:
        worker.start()
    sampler = TreeSampler([w.proc.pid for w in workers if w.proc is not None])
    sampler.start()
    return sampler


def naive_worker(name: str, tmp: Path, *, api_url: str, broker: str) -> WorkerProcess:
    env = {"RAPIDLY_API_URL": api_url, "RAPIDLY_API_TOKEN": TOKEN, "BROKER_URL": broker}
    return WorkerProcess(name, NAIVE_COMMAND, env, tmp / f"{name}.log")


def stop_all(workers: list[WorkerProcess], timeout: float = 120) -> list[tuple[int | None, float]]:
    results: list[tuple[int | None, float]] = [(None, 0.0)] * len(workers)

    def stop(i: int) -> None:
        results[i] = workers[i].stop(timeout)

    threads = [threading.Thread(target=stop, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


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
    bad: list[str] = []
    for event_id, body in bodies.items():
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


# --------------------------------------------------------------------------------------------
# Mode 1: product vs naive


def throughput_run(
    kind: str,
    round_no: int,
    *,
    args: argparse.Namespace,
    sim: SimulatorProcess,
    ids: list[str],
    dataset: Any,
    tmp: Path,
) -> dict[str, Any]:
    n = len(ids)
    name = f"{kind}-{round_no}"
    collector = fresh_start(args, keep_bodies=True)
    if kind == "product":
        worker = product_worker(name, tmp, args, api_url=sim.url)
        processes = args.processes
        concurrency = args.processes * args.concurrency
    else:
        worker = naive_worker(name, tmp, api_url=sim.url, broker=args.broker_url)
        processes = NAIVE_CONCURRENCY  # prefork pool processes, one task each
        concurrency = NAIVE_CONCURRENCY
    others = OtherCpu(args.redis_url)
    started = time.monotonic()
    source = source_fingerprint()
    sampler = start_sampled([worker])
    try:
        worker.wait_ready()
        startup_s = time.monotonic() - started
        sim.reset_stats()
        sender = Sender(args.broker_url)
        cpu0, sim_cpu0, t0 = sampler.cpu_seconds(), sim.cpu_seconds(), time.time()
        machine0 = psutil.cpu_times()
        others0 = others.snapshot()
        sender.send(ids, rate=args.send_rate)
        send_s = time.time() - t0
        timeout = 120 + n * 0.3  # from the last send on
        finished = wait_for(collector, n, timeout, [worker])
        cpu1, sim_cpu1, t1 = sampler.cpu_seconds(), sim.cpu_seconds(), time.time()
        machine1 = psutil.cpu_times()
        others1 = others.snapshot()
        stats = sim.stats()
        sender.close()
    finally:
        rc, stop_s = worker.stop()
        sampler.stop()
        collector.stop()
    arrivals = [collector.first_arrival[i] for i in ids if i in collector.first_arrival]
    got = len(arrivals)
    t_first, t_last = (min(arrivals), max(arrivals)) if arrivals else (t0, t0)
    window = max(1e-9, t_last - t_first)
    latencies = [
        (collector.first_arrival[i] - sender.sent_at[i]) * 1000
        for i in ids
        if i in collector.first_arrival
    ]
    correct, bad = check_records(collector.bodies, dataset)
    busy = max(1e-9, t1 - t0)
    idle_cores = (idle_seconds(machine1) - idle_seconds(machine0)) / busy
    # Time the hypervisor ran someone else while our vCPUs wanted to run: on a shared host the
    # same code measures slower, and this says by how much the machine was taken away.
    steal_cores = (steal_seconds(machine1) - steal_seconds(machine0)) / busy
    used_cores = (
        (total_seconds(machine1) - total_seconds(machine0))
        - (idle_seconds(machine1) - idle_seconds(machine0))
    ) / busy
    other_cores = {k: v / busy for k, v in OtherCpu.between(others0, others1).items()}
    rest_cores = (
        used_cores
        - ((cpu1 - cpu0) + (sim_cpu1 - sim_cpu0)) / busy
        - sum(other_cores.values())
        - steal_cores
    )
    result = {
        "worker": kind,
        "round": round_no,
        "events": n,
        "records": got,
        "finished": finished,
        "duplicates": collector.duplicates,
        "correct_records": correct,
        "wrong_examples": bad,
        "startup_s": round(startup_s, 2),
        "send_s": round(send_s, 2),
        "window_s": round(window, 3),
        "first_record_after_send_s": round(t_first - t0, 2) if arrivals else None,
        "events_per_s": round((got - 1) / window, 1) if got > 1 else 0.0,
        # Over the same interval as the CPU figures (first send to last record): what the
        # machine-CPU term of the capacity model predicts.
        "end_to_end_events_per_s": round(got / busy, 1),
        "api_calls": stats["requests_total"],
        "api_calls_per_event": round(stats["requests_total"] / n, 3),
        "api_by_kind": stats["by_kind"],
        "api_by_status": stats["by_status"],
        "rate_limited_429": stats["rate_limited"],
        "latency_p50_ms": round(percentile(latencies, 50), 1),
        "latency_p99_ms": round(percentile(latencies, 99), 1),
        "peak_rss_mb": round(mb(sampler.peak_rss), 1),
        "worker_cpu_ms_per_event": round((cpu1 - cpu0) / n * 1000, 2),
        "worker_cpu_util": round((cpu1 - cpu0) / busy, 2),
        "simulator_cpu_util": round((sim_cpu1 - sim_cpu0) / busy, 2),
        # In cores (1.0 = one core busy) over send-start..last-record, like the two above:
        # RabbitMQ (beam.smp), the Redis server, this benchmark process (all threads), everything
        # else on the machine (other sessions ...), and the cores left idle.
        "rabbitmq_cpu_util": round(other_cores["rabbitmq"], 2),
        "redis_cpu_util": round(other_cores["redis"], 2),
        "bench_cpu_util": round(other_cores["bench"], 2),
        "rest_cpu_util": round(rest_cores, 2),
        "idle_cores": round(idle_cores, 2),
        "steal_cores": round(steal_cores, 2),
        # CPU the whole pipeline (worker, simulator, RabbitMQ, Redis, this benchmark) spent per
        # event: on a shared machine, cores / this is a ceiling whatever the worker does.
        "pipeline_cpu_ms_per_event": round(
            (cpu1 - cpu0 + sim_cpu1 - sim_cpu0 + sum(other_cores.values()) * busy) / n * 1000, 2
        ),
        "cpu_accounted_pids": OtherCpu.pids(others1),
        "processes": processes,
        # In-flight events at most: processes x WORKER_CONCURRENCY for the product.
        "concurrency": concurrency,
        "stop_s": round(stop_s, 1),
        "exit_code": rc,
        "worker_source": source if kind == "product" else None,
    }
    log(
        f"{name}: {got}/{n} records, {result['events_per_s']} ev/s, "
        f"{result['api_calls_per_event']} calls/ev, p50 {result['latency_p50_ms']} ms, "
        f"p99 {result['latency_p99_ms']} ms, peak RSS {result['peak_rss_mb']} MB, "
        f"429s {result['rate_limited_429']}, correct {correct}/{got}"
    )
    return result


RUN_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("run", lambda r: f"{r['worker']}-{r['round']}"),
    ("records", lambda r: f"{r['records']}/{r['events']}"),
    ("window s", lambda r: f"{r['window_s']:.1f}"),
    ("ev/s", lambda r: f"{r['events_per_s']:.1f}"),
    ("calls/ev", lambda r: f"{r['api_calls_per_event']:.3f}"),
    ("p50 ms", lambda r: f"{r['latency_p50_ms']:.0f}"),
    ("p99 ms", lambda r: f"{r['latency_p99_ms']:.0f}"),
    ("peak RSS MB", lambda r: f"{r['peak_rss_mb']:.1f}"),
    ("429s", lambda r: str(r["rate_limited_429"])),
    ("CPU ms/ev", lambda r: f"{r['worker_cpu_ms_per_event']:.2f}"),
    ("wkr CPU", lambda r: f"{r['worker_cpu_util']:.0%}"),
    ("sim CPU", lambda r: f"{r['simulator_cpu_util']:.0%}"),
    ("rabbit CPU", lambda r: f"{r['rabbitmq_cpu_util']:.0%}"),
    ("redis CPU", lambda r: f"{r['redis_cpu_util']:.0%}"),
    ("bench CPU", lambda r: f"{r['bench_cpu_util']:.0%}"),
    ("rest CPU", lambda r: f"{r['rest_cpu_util']:.0%}"),
    ("idle", lambda r: f"{r['idle_cores']:.0%}"),
    ("steal", lambda r: f"{r.get('steal_cores', 0.0):.0%}"),
    ("correct", lambda r: f"{r['correct_records']}/{r['records']}"),
    ("dups", lambda r: str(r["duplicates"])),
)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        ),
        "  ".join("-" * w for w in widths),
    ]
    for row in rows:
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def summarize_throughput(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "events_per_s",
        "api_calls_per_event",
        "latency_p50_ms",
        "latency_p99_ms",
        "peak_rss_mb",
        "rate_limited_429",
        "worker_cpu_ms_per_event",
        "worker_cpu_util",
        "pipeline_cpu_ms_per_event",
        "end_to_end_events_per_s",
    )
    medians: dict[str, dict[str, float]] = {}
    for kind in ("product", "naive"):
        mine = [r for r in runs if r["worker"] == kind]
        if mine:
            medians[kind] = {k: round(statistics.median(r[k] for r in mine), 3) for k in keys}
    summary: dict[str, Any] = {"medians": medians}
    if "product" in medians and "naive" in medians:
        p, q = medians["product"], medians["naive"]
        summary["ratios"] = {
            "events_per_s_product_over_naive": round(p["events_per_s"] / q["events_per_s"], 2),
            "calls_per_event_naive_over_product": round(
                q["api_calls_per_event"] / p["api_calls_per_event"], 2
            ),
        }
    # Capacity model: events/s ~ min(CPU-bound rate, budget / calls, concurrency / latency).
    latency_s = args.latency_ms / 1000
    cores = os.cpu_count() or 1
    model: dict[str, Any] = {}
    for kind, m in medians.items():
        # The product: --processes gevent processes (each at most one core) with
        # WORKER_CONCURRENCY greenlets each; the naive worker: 2 prefork processes, 1 task each.
        processes = args.processes if kind == "product" else NAIVE_CONCURRENCY
        concurrency = args.processes * args.concurrency if kind == "product" else NAIVE_CONCURRENCY
        cpu_bound = min(processes, cores) / (m["worker_cpu_ms_per_event"] / 1000)
        # Everything runs on these cores: the worker can have only what the rest leaves.
        machine_bound = cores / (m["pipeline_cpu_ms_per_event"] / 1000)
        per_event = m["api_calls_per_event"] * latency_s
        concurrency_bound = concurrency / per_event if per_event > 0 else math.inf
        predicted = min(cpu_bound, machine_bound, concurrency_bound)
        limits = {
            "worker cpu": cpu_bound,
            "machine cpu": machine_bound,
            "concurrency x latency": concurrency_bound,
        }
        # What one event's in-flight time must have been if the concurrency slots were the limit.
        implied = concurrency / m["events_per_s"] if m["events_per_s"] else math.inf
        model[kind] = {
            "processes": processes,
            "concurrency": concurrency,
            "implied_in_flight_ms_per_event": round(implied * 1000, 1),
            "cpu_bound_events_per_s": round(cpu_bound, 1),
            "machine_bound_events_per_s": round(machine_bound, 1),
            "pipeline_cpu_ms_per_event": m["pipeline_cpu_ms_per_event"],
            "api_wait_per_event_ms": round(per_event * 1000, 1),
            "concurrency_bound_events_per_s": round(concurrency_bound, 1),
            "predicted_events_per_s": round(predicted, 1),
            "measured_events_per_s": m["events_per_s"],
            "measured_end_to_end_events_per_s": m["end_to_end_events_per_s"],
            "limited_by": min(limits, key=lambda k: limits[k]),
        }
    summary["capacity_model"] = model
    return summary


def print_throughput(
    runs: list[dict[str, Any]], summary: dict[str, Any], *, paced: bool = False
) -> None:
    headers = [c[0] for c in RUN_COLUMNS]
    print()
    print("Per run (window = first record to last record):")
    print(table(headers, [[fmt(r) for _, fmt in RUN_COLUMNS] for r in runs]))
    print()
    print("Medians per worker:")
    rows = []
    for kind, m in summary["medians"].items():
        rows.append(
            [
                kind,
                f"{m['events_per_s']:.1f}",
                f"{m['api_calls_per_event']:.3f}",
                f"{m['latency_p50_ms']:.0f}",
                f"{m['latency_p99_ms']:.0f}",
                f"{m['peak_rss_mb']:.1f}",
                f"{m['rate_limited_429']:.0f}",
                f"{m['worker_cpu_ms_per_event']:.2f}",
                f"{m['worker_cpu_util']:.0%}",
            ]
        )
    print(
        table(
            [
                "worker",
                "ev/s",
                "calls/ev",
                "p50 ms",
                "p99 ms",
                "peak RSS MB",
                "429s",
                "CPU ms/ev",
                "wkr CPU",
            ],
            rows,
        )
    )
    if "ratios" in summary:
        r = summary["ratios"]
        print()
        print(f"Ratio events/s product/naive:      {r['events_per_s_product_over_naive']:.2f}x")
        print(f"Ratio calls/event naive/product:   {r['calls_per_event_naive_over_product']:.2f}x")
    print()
    if paced:
        print(
            "(Sends were paced: events/s is the send rate, so the capacity model does not apply.)"
        )
        return
    print(
        "Capacity model (one pod, no budget): min(worker CPU-bound, machine CPU-bound, "
        "concurrency / (calls x latency)); worker CPU-bound = min(procs, cores) / worker CPU per "
        "event, machine CPU-bound = cores / pipeline CPU per event (worker + simulator + RabbitMQ "
        "+ Redis + benchmark: they share the cores), conc = procs x concurrency each; "
        "measured = first to last record, end-to-end = N / (first send to last record), the "
        "interval of the CPU figures:"
    )
    rows = []
    for kind, m in summary["capacity_model"].items():
        rows.append(
            [
                kind,
                str(m["processes"]),
                str(m["concurrency"]),
                f"{m['cpu_bound_events_per_s']:.1f}",
                f"{m['pipeline_cpu_ms_per_event']:.2f}",
                f"{m['machine_bound_events_per_s']:.1f}",
                f"{m['api_wait_per_event_ms']:.1f}",
                f"{m['concurrency_bound_events_per_s']:.1f}",
                f"{m['predicted_events_per_s']:.1f}",
                f"{m['measured_events_per_s']:.1f}",
                f"{m['measured_end_to_end_events_per_s']:.1f}",
                f"{m['implied_in_flight_ms_per_event']:.0f}",
                m["limited_by"],
            ]
        )
    print(
        table(
            [
                "worker",
                "procs",
                "conc",
                "CPU-bound ev/s",
                "pipeline CPU ms/ev",
                "machine-bound ev/s",
                "API wait ms/ev",
                "conc-bound ev/s",
                "predicted",
                "measured",
                "end-to-end",
                "conc/measured ms",
                "limit",
            ],
            rows,
        )
    )


def fresh_start(args: argparse.Namespace, *, keep_bodies: bool) -> RecordCollector:
    """Empty queues and Redis DB, and a record collector listening before anything is sent."""
    reset_broker(args.broker_url)
    flush_redis(args.redis_url)
    collector = RecordCollector(args.broker_url, keep_bodies=keep_bodies)
    collector.start()
    collector.ready.wait(10)
    return collector


def bench_simulator(
    n: int, seed: int, latency_ms: float, *extra: str, module: str = "simulator"
) -> SimulatorProcess:
    """The simulator serving the bench dataset of ``n`` events."""
    return SimulatorProcess(
        "--dataset",
        "bench",
        "--bench-size",
        str(n),
        "--seed",
        str(seed),
        "--latency-ms",
        str(latency_ms),
        *extra,
        module=module,
    )


def mode_throughput(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from simulator import build_dataset  # noqa: PLC0415

    n = args.events
    log(
        f"compare: {n} events, latency {args.latency_ms} ms, {args.rounds} round(s) each, "
        + (f"sent at {args.send_rate:g}/s" if args.send_rate else "sent as one backlog")
        + f"; product: {args.processes} process(es) x WORKER_CONCURRENCY {args.concurrency}"
    )
    dataset = build_dataset("bench", args.seed, n)
    ids = dataset.bench_order()
    sim = bench_simulator(n, args.seed, args.latency_ms)
    runs: list[dict[str, Any]] = []
    try:
        for round_no in range(1, args.rounds + 1):
            for kind in args.workers:
                runs.append(
                    throughput_run(
                        kind, round_no, args=args, sim=sim, ids=ids, dataset=dataset, tmp=tmp
                    )
                )
    finally:
        sim.stop()
        reset_broker(args.broker_url)
        flush_redis(args.redis_url)
    summary = summarize_throughput(runs, args)
    print_throughput(runs, summary, paced=bool(args.send_rate))
    versions = {r["worker_source"]["worker_sha256"] for r in runs if r["worker_source"]}
    if len(versions) > 1:
        print(f"WARNING: the worker code changed between runs ({sorted(versions)})")
    return {
        "config": {
            "events": n,
            "latency_ms": args.latency_ms,
            "rounds": args.rounds,
            "product_processes": args.processes,
            "product_concurrency": args.concurrency,
            "product_concurrency_total": args.processes * args.concurrency,
            "naive": NAIVE_COMMAND,
            "send": (
                f"paced: {args.send_rate:g} ids/s from worker.consumer_ready on"
                if args.send_rate
                else "backlog: all ids sent right after worker.consumer_ready"
            ),
        },
        "runs": runs,
        "summary": summary,
    }


# --------------------------------------------------------------------------------------------
# Mode 2: a fleet of three product workers on one 30/s budget


class StatsPoller(threading.Thread):
    def __init__(self, sim: SimulatorProcess, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="stats-poller")
        self.sim = sim
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            t_before = time.time()
            stats = self.sim.stats()
            t = (t_before + time.time()) / 2
            self.samples.append((t, stats["requests_total"], stats["rate_limited"]))
            self._halt.wait(self.interval)

    def at(self, t: float, index: int) -> float:
        """Counter ``index`` (1 requests, 2 rate_limited) linearly interpolated at time t."""
        samples = self.samples
        if not samples:
            return 0.0
        if t <= samples[0][0]:
            return float(samples[0][index])
        for (ta, *a), (tb, *b) in itertools.pairwise(samples):
            if ta <= t <= tb:
                va, vb = a[index - 1], b[index - 1]
                return va + (vb - va) * ((t - ta) / (tb - ta) if tb > ta else 0.0)
        return float(samples[-1][index])

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def mode_rate_limit(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from simulator import build_dataset  # noqa: PLC0415

    n, window_goal, budget = args.rl_events, args.rl_window, 30.0
    fleet = args.rl_workers
    log(
        f"rate-limit test: {fleet} product workers ({args.processes} process(es) x "
        f"WORKER_CONCURRENCY {args.concurrency} each), RAPIDLY_RATE_LIMIT=30/s shared through "
        f"{args.redis_url}, simulator --rate-limit 30/s --latency-ms 20, backlog {n} events, "
        f"window {window_goal:.0f} s from the first record"
    )
    ids = build_dataset("bench", args.seed, n).bench_order()
    sim = bench_simulator(n, args.seed, 20, "--rate-limit", "30/s")
    collector = fresh_start(args, keep_bodies=False)
    workers = [
        product_worker(f"fleet-{i}", tmp, args, api_url=sim.url, rate_limit="30/s")
        for i in range(1, fleet + 1)
    ]
    poller = StatsPoller(sim)
    sampler: TreeSampler | None = None
    started = time.monotonic()
    try:
        source = source_fingerprint()
        sampler = start_sampled(workers)
        for w in workers:
            w.wait_ready()
        log(f"  {fleet} workers ready after {time.monotonic() - started:.1f} s")
        sim.reset_stats()
        poller.start()
        sender = Sender(args.broker_url)
        t_send = time.time()
        sender.send(ids)
        log(f"  sent {n} ids in {time.time() - t_send:.1f} s")
        # Wait for the first record, then for the window (or every record, if sooner).
        wait_for(collector, 1, 120, workers)
        t_first = min(collector.first_arrival.values())
        deadline = t_first + window_goal
        while time.time() < deadline and collector.count() < n:
            if not all(w.alive() for w in workers):
                raise RuntimeError("a fleet worker died")
            time.sleep(0.1)
        t_end = min(time.time(), deadline)
        time.sleep(1.0)  # one more poller sample past the window's end
        stats_window_end = sim.stats()
        backlog_left = queue_depth(args.broker_url, EVENTS_QUEUE)
        sender.close()
    finally:
        results = stop_all(workers)
        if sampler is not None:
            sampler.stop()
        poller.stop()
        collector.stop()
    stats_final = sim.stats()
    sim.stop()
    reset_broker(args.broker_url)
    flush_redis(args.redis_url)

    arrivals = sorted(collector.first_arrival.values())
    in_window = [t for t in arrivals if t_first <= t <= t_end]
    window = t_end - t_first
    requests = poller.at(t_end, 1) - poller.at(t_first, 1)
    limited_in_window = poller.at(t_end, 2) - poller.at(t_first, 2)
    requests_per_s = requests / window
    events_per_s = (len(in_window) - 1) / window if len(in_window) > 1 else 0.0
    calls_per_event = requests / max(1, len(in_window))
    result = {
        "config": {
            "workers": fleet,
            "processes_each": args.processes,
            "concurrency_each": args.concurrency,
            "budget": "30/s",
            "simulator": "--rate-limit 30/s --latency-ms 20",
            "backlog_events": n,
            "window_goal_s": window_goal,
        },
        "worker_source": source,
        "window_s": round(window, 2),
        "records_in_window": len(in_window),
        "events_per_s": round(events_per_s, 2),
        "api_requests_in_window": round(requests),
        "api_requests_per_s": round(requests_per_s, 2),
        "budget_utilisation": round(requests_per_s / budget, 4),
        "api_calls_per_event": round(calls_per_event, 3),
        "rate_limited_429_in_window": round(limited_in_window),
        "rate_limited_429_until_window_end": stats_window_end["rate_limited"],
        "rate_limited_429_whole_run": stats_final["rate_limited"],
        "api_requests_whole_run": stats_final["requests_total"],
        "api_by_status_whole_run": stats_final["by_status"],
        "api_by_kind_until_window_end": stats_window_end["by_kind"],
        "api_by_kind_whole_run": stats_final["by_kind"],
        "records_whole_run": collector.count(),
        "api_calls_per_event_whole_run": round(
            stats_final["requests_total"] / max(1, collector.count()), 3
        ),
        "duplicates": collector.duplicates,
        "backlog_left_at_window_end": backlog_left,
        "fleet_peak_rss_mb": round(mb(sampler.peak_rss), 1) if sampler else None,
        "stop": [{"exit_code": rc, "seconds": round(s, 1)} for rc, s in results],
        "model_events_per_s": round(budget / calls_per_event, 2) if calls_per_event else None,
    }
    print()
    print("Rate-limit fleet test (3 workers, one 30/s budget):")
    print(
        table(
            [
                "window s",
                "records",
                "ev/s",
                "API req",
                "req/s",
                "utilisation",
                "calls/ev",
                "429s window",
                "429s whole run",
                "backlog left",
                "fleet peak RSS MB",
            ],
            [
                [
                    f"{result['window_s']:.1f}",
                    str(result["records_in_window"]),
                    f"{result['events_per_s']:.2f}",
                    str(result["api_requests_in_window"]),
                    f"{result['api_requests_per_s']:.2f}",
                    f"{result['budget_utilisation']:.1%}",
                    f"{result['api_calls_per_event']:.3f}",
                    str(result["rate_limited_429_in_window"]),
                    str(result["rate_limited_429_whole_run"]),
                    str(backlog_left),
                    f"{result['fleet_peak_rss_mb']}",
                ]
            ],
        )
    )
    print(
        f"model: budget / calls per event = 30 / {result['api_calls_per_event']:.3f} = "
        f"{result['model_events_per_s']} ev/s; measured {result['events_per_s']:.2f} ev/s"
    )
    print(
        f"whole run incl. warm shutdown: {result['records_whole_run']} records, "
        f"{result['api_requests_whole_run']} API requests = "
        f"{result['api_calls_per_event_whole_run']} calls/event, "
        f"{result['rate_limited_429_whole_run']} x 429; by kind until the window's end "
        f"{result['api_by_kind_until_window_end']}"
    )
    if backlog_left == 0:
        print("WARNING: the backlog ran dry inside the window: utilisation is understated")
    print(f"worker stops (SIGTERM): {result['stop']}")
    return result


# --------------------------------------------------------------------------------------------
# Mode 3: memory after 20k and after 200k events


def mode_memory(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from simulator import build_dataset  # noqa: PLC0415

    total, first = args.mem_events, args.mem_first
    log(
        f"memory test: one product worker ({args.processes} process(es) x WORKER_CONCURRENCY "
        f"{args.concurrency}), {first} then up to {total} distinct events, latency 0"
    )
    began = time.monotonic()
    ids = build_dataset("bench", args.seed, total).bench_order()
    log(f"  dataset built in {time.monotonic() - began:.1f} s")
    # The simulator scans every root per root-window list call: O(dataset) per call.
    sim = bench_simulator(total, args.seed, 0, module="bench.fastsim")
    log(f"  simulator ready at {time.monotonic() - began:.1f} s")
    collector = fresh_start(args, keep_bodies=False)
    worker = product_worker("memory", tmp, args, api_url=sim.url)
    source = source_fingerprint()
    log(f"  worker source at start: {source}")
    sampler = start_sampled([worker])
    checkpoints: list[dict[str, Any]] = []
    step = max(1, total // 20)
    next_mark = [step]
    sender = Sender(args.broker_url)
    send_error: list[BaseException] = []
    try:
        worker.wait_ready()
        sim.reset_stats()
        t0 = time.monotonic()

        def progress(count: int) -> None:
            while count >= next_mark[0]:
                rss = sampler.sample()
                checkpoints.append(
                    {
                        "events": next_mark[0],
                        "seconds": round(time.monotonic() - t0, 1),
                        "rss_mb": round(mb(rss), 1),
                    }
                )
                next_mark[0] += step

        sender.send(ids[:first])
        if not wait_for(collector, first, 1800, [worker], progress):
            raise RuntimeError(f"only {collector.count()}/{first} records")
        rss_first = sampler.sample()
        t_first = time.monotonic() - t0
        log(f"  {first} events after {t_first:.0f} s: RSS {mb(rss_first):.1f} MB")

        def send_rest() -> None:
            # Keep at most ``first`` messages outstanding so the broker never holds 180k.
            try:
                pos = first
                while pos < total:
                    outstanding = pos - collector.count()
                    if outstanding >= first:
                        time.sleep(0.2)
                        continue
                    chunk = min(total - pos, first - outstanding, 2000)
                    sender.send(ids[pos : pos + chunk])
                    pos += chunk
            except Exception as exc:  # noqa: BLE001 - re-raised by the main thread
                send_error.append(exc)

        feeder = threading.Thread(target=send_rest, daemon=True)
        feeder.start()
        if not wait_for(collector, total, 7200, [worker], progress):
            raise RuntimeError(f"only {collector.count()}/{total} records")
        if send_error:
            raise send_error[0]
        rss_total = sampler.sample()
        t_total = time.monotonic() - t0
        stats = sim.stats()
        log(f"  {total} events after {t_total:.0f} s: RSS {mb(rss_total):.1f} MB")
    finally:
        rc, stop_s = worker.stop()
        sampler.stop()
        collector.stop()
        sender.close()
        sim.stop()
        reset_broker(args.broker_url)
        flush_redis(args.redis_url)
    growth = rss_total / rss_first - 1
    result = {
        "config": {
            "events": total,
            "first_checkpoint": first,
            "latency_ms": 0,
            "processes": args.processes,
            "concurrency": args.concurrency,
            "simulator": "bench.fastsim (the simulator with indexed root windows)",
        },
        "worker_source": source,
        "rss_after_first_mb": round(mb(rss_first), 1),
        "rss_after_total_mb": round(mb(rss_total), 1),
        "growth": round(growth, 4),
        "within_20_percent": abs(growth) <= 0.20,
        "peak_rss_mb": round(mb(sampler.peak_rss), 1),
        "seconds_to_first": round(t_first, 1),
        "seconds_total": round(t_total, 1),
        "events_per_s_overall": round(total / t_total, 1),
        "api_calls_per_event": round(stats["requests_total"] / total, 3),
        "api_by_kind": stats["by_kind"],
        "records": collector.count(),
        "duplicates": collector.duplicates,
        "wall_seconds_including_setup": round(time.monotonic() - began, 1),
        "checkpoints": checkpoints,
        "stop": {"exit_code": rc, "seconds": round(stop_s, 1)},
    }
    print()
    print("Memory test (one product worker, worker tree RSS):")
    print(
        table(
            ["events", "seconds", "RSS MB"],
            [[str(c["events"]), f"{c['seconds']:.0f}", f"{c['rss_mb']:.1f}"] for c in checkpoints],
        )
    )
    print(
        f"RSS after {first}: {result['rss_after_first_mb']} MB; after {total}: "
        f"{result['rss_after_total_mb']} MB; growth {growth:+.1%} "
        f"({'within' if result['within_20_percent'] else 'NOT within'} 20%); "
        f"peak {result['peak_rss_mb']} MB"
    )
    print(
        f"{total} events in {t_total:.0f} s ({result['events_per_s_overall']} ev/s), "
        f"{result['api_calls_per_event']} calls/event, duplicates {collector.duplicates}; "
        f"whole mode {result['wall_seconds_including_setup']:.0f} s"
    )
    return result


# --------------------------------------------------------------------------------------------


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
    parser.add_argument("--seed", type=int, default=42)
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
    parser.add_argument("--rl-events", type=int, default=None, help="fleet backlog (default 10000)")
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
    args.rl_events = args.rl_events or (1000 if quick else 10_000)
    args.rl_window = args.rl_window or (20.0 if quick else 60.0)
    args.mem_events = args.mem_events or (20000 if quick else 200_000)
    args.mem_first = args.mem_first or (2000 if quick else 20_000)
    return args


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
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0
