"""``python -m demo``: enrich the simulator's whole dataset with no server installed.

Starts the API simulator on a local port, a Celery worker in this process on kombu's in-memory
transport (the worker's real code: same app, task, service, publisher, dead-lettering; a thread
pool instead of gevent), sends every ID of the dataset with a plain ``send_task``, and prints
some customer-created records and a summary.

Then the webhook ingress (``rapidly-worker web``'s application, served from a thread of this
process on the same in-memory broker) receives a few signed Standard Webhooks for new customers,
one of whose system event appears only after its webhook, plus a retry and a forged one; the
customer-created records they lead to are printed.
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
            stats = sim.stats()  # the dataset's figures, before the webhooks' calls
            webhooks = _webhooks(sim, conn, customer_created)
    webhook_records = webhooks.pop("records")
    rt.close()
    sim.stop()
    log_file.close()

    bodies = [json.loads(m.body) for m in records]
    cc_bodies = [json.loads(m.body) for m in cc]
    for body in cc_bodies[: args.show]:
        print(json.dumps(body, indent=2, ensure_ascii=False))
    from devkit import SCHEMA_PATH, record_errors

    invalid = [e for b in [*bodies, *webhook_records] for e in record_errors(b)]
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
        "webhooks": webhooks,
        "records_failing_the_schema": len(invalid),
    }
    print("summary:", json.dumps(summary, indent=2))
    for record in webhook_records:
        event = record["event"]
        print(
            f"webhook record: {event['source']}.{event['name']} {event['id']} "
            f"customer {event['customer_id']} ({event['customer']['email']})"
        )
    missing = len(ids) - len(bodies)
    if invalid:
        print(
            f"demo FAILED: records that do not validate against {SCHEMA_PATH.name}:",
            file=sys.stderr,
        )
        print("\n".join(invalid[:10]), file=sys.stderr)
        return 1
    if webhooks["customer_created_records"] != webhooks["customers"]:
        print("demo FAILED: a webhook did not lead to its record", file=sys.stderr)
        return 1
    if missing or len(dead_letters) != len(bad):
        print(
            f"demo FAILED: {missing} records missing, "
            f"{len(bad) - len(dead_letters)} dead letters missing",
            file=sys.stderr,
        )
        return 1
    return 0


DEMO_SECRET = "rapidly_whs_demo_0123456789abcdef"


def _webhooks(sim: Any, conn: Connection, customer_created: Queue) -> dict[str, Any]:
    """Signed webhooks for new customers to an embedded ingress; their records."""
    import uuid
    from datetime import UTC, datetime

    from standardwebhooks import Webhook

    signer = Webhook(DEMO_SECRET.encode())
    url, stop = _start_ingress()
    customers = [str(uuid.uuid4()) for _ in range(3)]
    answers: list[int] = []

    def post(customer_id: str, *, webhook_id: str | None = None, forged: bool = False) -> None:
        body = json.dumps(
            {
                "type": "customer.created",
                "timestamp": datetime.now(UTC).isoformat(),
                "data": {"id": customer_id, "email": "demo@example.com", "metadata": {}},
            }
        )
        webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
        now = datetime.now(UTC)
        signature = signer.sign(webhook_id, now, body + (" " if forged else ""))
        answers.append(
            _post(
                url + "/webhooks/rapidly",
                body.encode(),
                {
                    "webhook-id": webhook_id,
                    "webhook-timestamp": str(int(now.timestamp())),
                    "webhook-signature": signature,
                },
            )
        )

    try:
        # Rapidly's two jobs: for the first two customers the system event exists before the
        # webhook; for the last one it appears half a second after it.
        for customer_id in customers[:2]:
            sim.add_system_event("customer.created", customer_id)
        for customer_id in customers:
            post(customer_id)
        post(customers[0], webhook_id="msg_retried")
        post(customers[0], webhook_id="msg_retried")  # the sender's retry: 202, no second task
        post(customers[1], forged=True)  # 401
        time.sleep(0.5)
        sim.add_system_event("customer.created", customers[2])
        records = [
            json.loads(m.body) for m in _collect(conn, customer_created, len(customers), timeout=30)
        ]
    finally:
        stop()
    return {
        "customers": len(customers),
        "posted": len(answers),
        "answers": dict(Counter(answers)),
        "customer_created_records": len(records),
        "records": records,
    }


def _start_ingress() -> tuple[str, Any]:
    """The ingress's aiohttp application on its own event loop in a daemon thread."""
    import asyncio
    import threading

    from aiohttp import web

    from worker.ingress import Enqueuer, Ingress, LocalSeen, WebhookVerifier

    ingress = Ingress(
        WebhookVerifier([DEMO_SECRET]), Enqueuer("memory://", publishers=2), LocalSeen(3600)
    )
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(ingress.application(), access_log=None)

    async def start() -> str:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    url = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="ingress")
    thread.start()

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return url, stop


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=body, method="POST", headers={"content-type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


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
