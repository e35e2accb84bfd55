"""``python -m bench.webhooks``: the webhook ingress under a burst, end to end.

Starts the simulator, a worker (the Procfile's ``worker:`` line) and the ingress (its ``web:``
line) on the given RabbitMQ vhost and Redis DB, creates N new customers with their system
``customer.created`` events in the simulator, then posts one signed Standard Webhook per
customer at a steady rate and prints: how many were answered 202, how many customer-created
records arrived (one each, no duplicate), the webhook-to-record latency (p50/p99, from the
request's start to the record's arrival) and the ingress's response time (p50/p99, measured
by the client and by the ingress's own log line) and the web process's CPU time per webhook.
``--ingress-only`` runs no worker: the ingress's figures without a worker competing for CPU.
Not timed in any test: figures on a shared machine are noisy.

Only the vhost and the Redis DB given are touched (queues purged, DB flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
from standardwebhooks import Webhook

from bench._infra import RECORDS, exclusive, flush_redis, reset_broker
from devkit import TOKEN, RecordCollector, SimulatorProcess, WorkerProcess, ensure_vhost, free_port

SECRET = "rapidly_whs_bench_0123456789abcdef"


def percentile(values: list[float], q: float, digits: int = 2) -> float | None:
    """Nearest-rank percentile, rounded; None without values (e.g. no record with
    ``--ingress-only``)."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return round(ordered[index], digits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200.0, help="webhooks per second")
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/bench_webhooks"),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
    )
    parser.add_argument(
        "--ingress-only",
        action="store_true",
        help="no worker: the ingress's own response times, without a worker competing for CPU",
    )
    args = parser.parse_args(argv)

    # Purges and flushes below: never two runs on one vhost and Redis DB at once.
    with exclusive(
        args.amqp_url, args.redis_url, timeout=600, on_wait=lambda m: print(m, file=sys.stderr)
    ):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    ensure_vhost(args.amqp_url)
    reset_broker(args.amqp_url)
    flush_redis(args.redis_url)
    tmp = Path(tempfile.mkdtemp(prefix="rapidly-bench-webhooks-"))
    sim = SimulatorProcess("--seed", "42")
    port = free_port()
    common = {"BROKER_URL": args.amqp_url, "REDIS_URL": args.redis_url, "LOG_FORMAT": "json"}
    worker = WorkerProcess(
        {
            **common,
            "RAPIDLY_API_URL": sim.url,
            "RAPIDLY_API_TOKEN": TOKEN,
            "RAPIDLY_RATE_LIMIT": "5000/s",
            "WORKER_CONCURRENCY": "100",
            "NOT_FOUND_WAIT_SECONDS": "10",
            "METRICS_PORT": "0",
            "HEALTH_DIR": str(tmp / "health"),
        },
        tmp / "worker.log",
    )
    web = WorkerProcess(
        {**common, "RAPIDLY_WEBHOOK_SECRET": SECRET, "PORT": str(port)},
        tmp / "web.log",
        kind="web",
    )
    collector = RecordCollector(args.amqp_url, RECORDS, keep_bodies=False)
    try:
        collector.start_listening()
        if not args.ingress_only:
            worker.start()
        web.start()
        if not args.ingress_only:
            worker.wait_ready()
        url = f"http://127.0.0.1:{port}"
        _wait_up(url, web)
        print(f"logs in {tmp}; creating {args.count} customers in the simulator", file=sys.stderr)
        event_of = {
            customer: sim.admin(
                "/_sim/system_events", {"name": "customer.created", "customer_id": customer}
            )["event"]["id"]
            for customer in (str(uuid.uuid4()) for _ in range(args.count))
        }
        cpu_before = _cpu_seconds(web)
        results = _fire(url, list(event_of), args.rate)
        web_cpu = _cpu_seconds(web) - cpu_before
        deadline = time.monotonic() + (0 if args.ingress_only else 120)
        wanted = set(event_of.values())
        while time.monotonic() < deadline and not wanted <= set(collector.first_arrival):
            time.sleep(0.2)
        if not args.ingress_only:
            time.sleep(2.0)  # late duplicates, should there be any
        report(args, results, event_of, collector, _server_ms(web), web_cpu)
    finally:
        collector.stop()
        web.stop(30)
        worker.stop(60)
        sim.stop()
    return 0


def _cpu_seconds(web: WorkerProcess) -> float:
    """CPU time of the web process tree (user + system): a figure the shared machine's noise
    does not inflate the way it inflates latencies."""
    assert web.proc is not None
    root = psutil.Process(web.proc.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def _wait_up(url: str, web: WorkerProcess) -> None:
    for _ in range(300):
        if not web.alive():
            raise RuntimeError(f"web exited:\n{web.log_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("web not ready in 30 s")


def _fire(url: str, customers: list[str], rate: float) -> dict[str, dict[str, Any]]:
    """One signed webhook per customer, paced to ``rate`` per second (asyncio client: cheaper
    per request than threads, so less of the shared CPU goes to the load generator); the
    signatures are made before the clock starts."""
    signer = Webhook(SECRET.encode())
    prepared = []
    now = datetime.now(tz=UTC)
    for customer in customers:
        body = json.dumps(
            {
                "type": "customer.created",
                "timestamp": now.isoformat(),
                "data": {"id": customer, "email": "bench@example.com", "metadata": {}},
            }
        )
        webhook_id = f"msg_{uuid.uuid4().hex}"
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signer.sign(webhook_id, now, body),
        }
        prepared.append((customer, body.encode(), headers))
    results: dict[str, dict[str, Any]] = {}

    async def run() -> None:
        async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=64)) as session:

            async def post(customer: str, body: bytes, headers: dict[str, str]) -> None:
                sent = time.time()
                started = time.perf_counter()
                async with session.post("/webhooks/rapidly", data=body, headers=headers) as r:
                    await r.read()
                    status = r.status
                results[customer] = {
                    "status": status,
                    "sent": sent,
                    "seconds": time.perf_counter() - started,
                }

            tasks = []
            started = time.monotonic()
            for i, item in enumerate(prepared):
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(post(*item)))
            await asyncio.gather(*tasks)

    asyncio.run(run())
    return results


def _server_ms(web: WorkerProcess) -> list[float]:
    """The ingress's own view: ``duration_ms`` of each accepted webhook's log line."""
    out = []
    for line in web.log_text().splitlines():
        if line.startswith("{") and '"webhook.finished"' in line:
            record = json.loads(line)
            if record.get("outcome") == "accepted":
                out.append(float(record["duration_ms"]))
    return out


def report(
    args: argparse.Namespace,
    results: dict[str, dict[str, Any]],
    event_of: dict[str, str],
    collector: RecordCollector,
    server_ms: list[float],
    web_cpu: float,
) -> None:
    statuses: dict[int, int] = {}
    for r in results.values():
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    response_ms = [r["seconds"] * 1000 for r in results.values()]
    latency_ms = [
        (collector.first_arrival[event_of[c]] - r["sent"]) * 1000
        for c, r in results.items()
        if event_of[c] in collector.first_arrival
    ]
    records = sum(1 for e in event_of.values() if e in collector.first_arrival)
    summary = {
        "webhooks": args.count,
        "rate_per_s": args.rate,
        "answers": statuses,
        "all_valid_202": statuses.get(202, 0) == args.count,
        "customer_created_records": records,
        "one_record_each": None
        if args.ingress_only
        else records == args.count and collector.duplicates == 0,
        "duplicate_records": collector.duplicates,
        "customer_created_queue": collector.customer_created_drained,
        "ingress_response_ms": {
            "p50": percentile(response_ms, 50),
            "p99": percentile(response_ms, 99),
            "max": percentile(response_ms, 100),
            "mean": round(statistics.fmean(response_ms), 2) if response_ms else None,
        },
        "ingress_server_side_ms": {
            "p50": percentile(server_ms, 50),
            "p99": percentile(server_ms, 99),
        },
        "web_cpu_ms_per_webhook": round(web_cpu * 1000 / max(1, len(results)), 3),
        "webhook_to_record_ms": {
            "p50": percentile(latency_ms, 50, 1),
            "p99": percentile(latency_ms, 99, 1),
            "max": percentile(latency_ms, 100, 1),
        },
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(main())
