"""``python -m demo``: enrich the simulator's whole dataset with no server installed.

Starts the API simulator on a local port, a Celery worker in this process on kombu's in-memory
transport (the worker's real code: same app, task, service, publisher, dead-lettering; a thread
pool instead of gevent), sends every ID of the dataset with a plain ``send_task``, and prints
some customer-created records and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Queue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--show", type=int, default=2, help="customer-created records to print")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--log", default=None, help="worker log file (JSON lines)")
    args = parser.parse_args(argv)

    from simulator import SimulatorConfig, start_in_thread

    sim = start_in_thread(SimulatorConfig(seed=args.seed))
    tmp = Path(tempfile.mkdtemp(prefix="rapidly-demo-"))
    log_path = Path(args.log) if args.log else tmp / "worker.log"
    os.environ.update(
        {
            "RAPIDLY_API_URL": sim.url,
            "RAPIDLY_API_TOKEN": sim.config.token,
            "BROKER_URL": "memory://",
            "RAPIDLY_RATE_LIMIT": "1000/s",
            "NOT_FOUND_WAIT_SECONDS": "2",
            "METRICS_PORT": "0",
            "HEALTH_DIR": str(tmp / "health"),
            "LOG_FORMAT": "json",
        }
    )
    os.environ.pop("REDIS_URL", None)
    os.environ.pop("DOWNSTREAM_BROKER_URL", None)

    from celery.contrib.testing.worker import start_worker

    from worker import runtime
    from worker.app import configure
    from worker.logging import configure_logging
    from worker.settings import load_settings

    settings = load_settings()
    log_file = log_path.open("w")
    configure_logging(level="INFO", fmt="json", stream=log_file)
    app = configure(settings)
    rt = runtime.Runtime.build(settings)
    runtime.install(rt)
    rt.start()

    enriched = Exchange("rapidly.enriched", type="topic", durable=True)
    everything = Queue("demo.all_records", enriched, routing_key="#")
    customer_created = Queue(
        "rapidly.customer_created", enriched, routing_key="system.customer.created"
    )
    dead = Queue(
        "rapidly.events.dead", Exchange("rapidly.events.dead", "direct"), "rapidly.events.dead"
    )

    dataset = _get_json(sim.url + "/_sim/dataset")
    ids = [e["id"] for e in dataset["events"]]
    bad = [x["id"] for x in dataset["invalid_ids"]] + [x["id"] for x in dataset["unknown_ids"]]
    print(
        f"simulator at {sim.url}: {len(ids)} events, {len(bad)} invalid or unknown ids; "
        f"worker log: {log_path}",
        flush=True,
    )

    started = time.monotonic()
    with Connection("memory://") as conn:
        channel = conn.default_channel
        for q in (everything, customer_created, dead):
            q.bind(channel).declare()
        with start_worker(
            app,
            pool="threads",
            concurrency=16,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=30,
        ):
            for event_id in ids + bad:
                app.send_task("events.enrich", args=[event_id], queue="rapidly.events")
            records = _collect(conn, everything, len(ids), timeout=120)
            dead_letters = _collect(conn, dead, len(bad), timeout=60)
        cc = _collect(conn, customer_created, 10**9, timeout=0.5)
    elapsed = time.monotonic() - started
    rt.close()
    stats = sim.stats()
    sim.stop()
    log_file.close()

    bodies = [json.loads(m.body) for m in records]
    cc_bodies = [json.loads(m.body) for m in cc]
    for body in cc_bodies[: args.show]:
        print(json.dumps(body, indent=2, ensure_ascii=False))
    incomplete = Counter(
        b["hierarchy"]["incomplete_reason"] for b in bodies if not b["hierarchy"]["complete"]
    )
    reasons = Counter((m.headers or {}).get("x-death-reason") for m in dead_letters)
    api_calls = stats.get("requests_total", 0)
    summary: dict[str, Any] = {
        "events_sent": len(ids) + len(bad),
        "records_published": len(bodies),
        "customer_created_records": len(cc_bodies),
        "incomplete_records": dict(incomplete),
        "dead_letters": dict(reasons),
        "api_calls": api_calls,
        "api_calls_per_event": round(api_calls / max(1, len(ids) + len(bad)), 3),
        "seconds": round(elapsed, 2),
    }
    print("summary:", json.dumps(summary, indent=2))
    missing = len(ids) - len(bodies)
    if missing or len(dead_letters) != len(bad):
        print(
            f"demo FAILED: {missing} records missing, "
            f"{len(bad) - len(dead_letters)} dead letters missing",
            file=sys.stderr,
        )
        return 1
    return 0


def _get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _collect(conn: Connection, queue: Queue, expect: int, *, timeout: float) -> list[Any]:
    bound = queue.bind(conn.default_channel)
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        message = bound.get(no_ack=True)
        if message is None:
            time.sleep(0.05)
            continue
        got.append(message)
    return got


if __name__ == "__main__":
    sys.exit(main())
