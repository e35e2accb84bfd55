"""Mode 2 (``--rate-limit-test``): a fleet of product workers on one 30/s budget shared through
Redis."""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from pathlib import Path
from typing import Any

from bench._infra import flush_redis, queue_depth, reset_broker
from bench._run import (
    bench_simulator,
    fresh_start,
    log,
    mb,
    product_worker,
    source_fingerprint,
    start_sampled,
    wait_for,
)
from bench.report import table
from devkit import EVENTS_QUEUE, Sender, SimulatorProcess, TreeSampler, stop_together


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
        results = stop_together(workers, timeout=120)
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
