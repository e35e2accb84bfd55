"""Mode 3 (``--memory-test``): one product worker, RSS after 20,000 and after 200,000 events."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

from bench._infra import flush_redis, reset_broker
from bench._run import (
    bench_simulator,
    fresh_start,
    log,
    mb,
    product_worker,
    source_fingerprint,
    start_sampled,
    stop_timed,
    wait_for,
)
from bench.report import table
from devkit import Sender


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
    sim = bench_simulator(total, args.seed, 0)
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
        rc, stop_s = stop_timed(worker)
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
            "simulator": "python -m simulator --latency-ms 0",
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
