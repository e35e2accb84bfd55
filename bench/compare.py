"""Mode 1 (the default): the product worker and the naive baseline take turns on the same
simulator, dataset and broker, ``--rounds`` times each."""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import psutil

from bench._infra import OtherCpu, flush_redis, reset_broker
from bench._run import (
    NAIVE_COMMAND,
    NAIVE_CONCURRENCY,
    bench_simulator,
    check_records,
    fresh_start,
    idle_seconds,
    log,
    mb,
    naive_worker,
    percentile,
    product_worker,
    source_fingerprint,
    start_sampled,
    steal_seconds,
    stop_timed,
    total_seconds,
    wait_for,
)
from bench.report import print_throughput
from devkit import Sender, SimulatorProcess


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
        rc, stop_s = stop_timed(worker)
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
        # Both workers' CPU per event moves with the host's speed; their ratio, measured side
        # by side, moves far less.
        if p["worker_cpu_ms_per_event"] > 0:
            summary["ratios"]["cpu_per_event_naive_over_product"] = round(
                q["worker_cpu_ms_per_event"] / p["worker_cpu_ms_per_event"], 2
            )
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


def mode_throughput(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from simulator import build_dataset  # noqa: PLC0415

    n = args.events
    log(
        f"compare: {args.dataset} dataset, {n} events, latency {args.latency_ms} ms, "
        f"{args.rounds} round(s) each, "
        + (f"sent at {args.send_rate:g}/s" if args.send_rate else "sent as one backlog")
        + f"; product: {args.processes} process(es) x WORKER_CONCURRENCY {args.concurrency}"
    )
    dataset = build_dataset(args.dataset, args.seed, n)
    ids = dataset.bench_order()
    if len(ids) != n:
        log(f"dataset {args.dataset}: {len(ids)} events the token can see, all sent")
        n = len(ids)
    sim = bench_simulator(n, args.seed, args.latency_ms, dataset=args.dataset)
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
