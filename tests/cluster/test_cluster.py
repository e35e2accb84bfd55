"""The worker on a three-node RabbitMQ cluster with ``RABBITMQ_QUEUE_TYPE=quorum``.

Workers are the Procfile line (real processes) with ``BROKER_URL`` listing the three nodes
(kombu failover); the simulator is a real process; the shared limiter and dedupe store are the
test Redis (``TEST_REDIS_URL``). Figures are printed and collected in the summary.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from amqp.exceptions import PreconditionFailed
from celery import Celery
from kombu import Connection, Queue

from devkit import ENRICHED, RabbitCluster, SimulatorProcess, WorkerProcess
from simulator import build_dataset
from tests.cluster.conftest import SUMMARIES
from tests.integration.harness import REDIS_STORE_URL, worker_env
from worker.publishing import topology

QUORUM = {"x-queue-type": "quorum"}
# Every record, in a quorum queue too: a classic queue on the killed node would lose them.
RECORDS = Queue("test.cluster_records", ENRICHED, routing_key="#", durable=True,
                queue_arguments=QUORUM)  # fmt: skip
QUEUES = ("rapidly.events", "rapidly.events.dead", "rapidly.customer_created", RECORDS.name)


def fresh_queues(url: str) -> None:
    """Delete the queues of an earlier scenario, and declare rapidly.events again as the
    operator would: kombu's producer pools are process-wide and remember what they declared, so
    a later producer on the same URL would not declare it again (its messages would then be
    unroutable until a worker declared the queue)."""
    with Connection(url) as conn:
        channel = conn.default_channel
        for name in QUEUES:
            channel.queue_delete(name)
        topology("quorum").events_queue.bind(channel).declare()
        RECORDS.bind(channel).declare()
    redis.Redis.from_url(REDIS_STORE_URL).flushdb()


def quorum_producer(url: str) -> Celery:
    """A plain Celery producer, told the queue type: the one setting a producer of a quorum
    rapidly.events needs (without it its declaration fails with PRECONDITION_FAILED)."""
    app = Celery(broker=url)
    app.conf.task_create_missing_queue_type = "quorum"
    app.conf.broker_transport_options = {"confirm_publish": True}
    return app


def start_workers(
    tmp: Path, sim: SimulatorProcess, url: str, lines: int, processes: int, **extra: str
) -> list[WorkerProcess]:
    workers = []
    for i in range(lines):
        env = worker_env(
            api_url=sim.url,
            broker_url=url,
            tmp=tmp / f"w{i}",
            redis_url=REDIS_STORE_URL,
            RABBITMQ_QUEUE_TYPE="quorum",
            WORKER_PROCESSES=str(processes),
            **extra,
        )
        workers.append(WorkerProcess(env, tmp / f"worker{i}.log").start())
    deadline = time.monotonic() + 120
    while ready_processes(workers) < lines * processes:
        for w in workers:
            assert w.alive(), w.log_text()[-3000:]
        assert time.monotonic() < deadline, [w.log_text()[-2000:] for w in workers]
        time.sleep(0.5)
    return workers


def ready_processes(workers: list[WorkerProcess]) -> int:
    return sum(w.log_text().count('"worker.consumer_ready"') for w in workers)


def published(workers: list[WorkerProcess]) -> int:
    return sum(w.log_text().count('"outcome": "published"') for w in workers)


def outcomes(workers: list[WorkerProcess]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for w in workers:
        for r in w.log_records():
            if r.get("event") == "enrich.finished":
                counts[str(r.get("outcome"))] += 1
    return counts


def collect_records(url: str, expected: set[str], timeout: float, settle: float) -> Counter[str]:
    """Every record's message_id (acked as read), until each expected ID has one, then ``settle``
    seconds more for late duplicates; or until ``timeout``."""
    by_id: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    with Connection(url) as conn:
        bound = RECORDS.bind(conn.default_channel)
        while time.monotonic() < (settle_until or deadline):
            if settle_until is None and expected <= set(by_id):
                settle_until = time.monotonic() + settle
            message = bound.get(no_ack=False)
            if message is None:
                time.sleep(0.05)
                continue
            message.ack()
            by_id[str(message.properties.get("message_id"))] += 1
    return by_id


def stop_all(workers: list[WorkerProcess]) -> None:
    for w in workers:
        w.stop(timeout=60)


@pytest.mark.timeout(600)
def test_rate_limit_fleet_of_six_processes(cluster: RabbitCluster, tmp_path: Path) -> None:
    """Three Procfile lines x two processes share RAPIDLY_RATE_LIMIT through Redis against a
    simulator enforcing the same budget: no 429, and the budget used, over a 30 s window."""
    # Enough events that the budget binds for the whole window: at ~0.2 calls per event 20/s
    # carries ~100 events/s.
    budget, window, n, seed = 20.0, 30.0, 8000, 11
    sim = SimulatorProcess(
        "--dataset", "bench", "--bench-size", str(n), "--seed", str(seed),
        "--latency-ms", "20", "--rate-limit", f"{budget:g}/s",
    )  # fmt: skip
    workers: list[WorkerProcess] = []
    try:
        url = cluster.url
        fresh_queues(url)
        workers = start_workers(
            tmp_path, sim, url, lines=3, processes=2, RAPIDLY_RATE_LIMIT=f"{budget:g}/s"
        )
        assert cluster.queue_type("rapidly.events") == "quorum"
        sim.reset_stats()
        app = quorum_producer(url)
        for event_id in build_dataset("bench", seed, n).bench_order():
            app.send_task("events.enrich", args=[event_id], queue="rapidly.events")
        deadline = time.monotonic() + 120
        while published(workers) == 0:
            assert time.monotonic() < deadline, "no record within 120 s"
            time.sleep(0.2)
        time.sleep(3.0)  # past the start: every process has its slots in the budget
        before, t0 = sim.stats(), time.monotonic()
        time.sleep(window)
        after, t1 = sim.stats(), time.monotonic()
        done = published(workers)
        assert done < n, "the backlog ran out inside the window: the budget was not the limit"
        per_process = Counter(
            (i, r.get("process"))
            for i, w in enumerate(workers)
            for r in w.log_records()
            if r.get("event") == "enrich.finished"
        )
    finally:
        stop_all(workers)
        final = sim.stats()
        sim.stop()
    accepted = (after["requests_total"] - after["rate_limited"]) - (
        before["requests_total"] - before["rate_limited"]
    )
    rate = accepted / (t1 - t0)
    share = rate / budget
    line = (
        f"rate limit: 6 worker processes (3 Procfile lines x 2), RAPIDLY_RATE_LIMIT={budget:g}/s "
        f"via Redis, simulator --rate-limit {budget:g}/s: 429s={final['rate_limited']} "
        f"requests/s={rate:.2f} budget_used={share:.1%} window={t1 - t0:.1f}s "
        f"records={done} processes_that_consumed={len(per_process)}"
    )
    print(line)
    SUMMARIES.append(line)
    assert final["rate_limited"] == 0
    assert share >= 0.97
    assert len(per_process) == 6, per_process


@pytest.mark.timeout(900)
def test_leader_killed_mid_run_loses_nothing(cluster: RabbitCluster, tmp_path: Path) -> None:
    """SIGKILL of the node leading rapidly.events (and holding every connection: the first URL)
    while the worker runs: every event still gets its record; duplicates are counted."""
    n, seed = 3000, 5
    sim = SimulatorProcess(
        "--dataset", "bench", "--bench-size", str(n), "--seed", str(seed), "--latency-ms", "20"
    )  # fmt: skip
    workers: list[WorkerProcess] = []
    info: dict[str, Any] = {}
    try:
        url = cluster.url
        fresh_queues(url)
        # The whole backlog first, so that the kill hits the workers, not the producer.
        ids = build_dataset("bench", seed, n).bench_order()
        app = quorum_producer(url)
        for event_id in ids:
            app.send_task("events.enrich", args=[event_id], queue="rapidly.events")
        # Asked before the run (the CLI takes seconds); only a failure moves the leader.
        leader = cluster.leader("rapidly.events")
        workers = start_workers(
            tmp_path, sim, url, lines=1, processes=2, WORKER_CONCURRENCY="20",
            DEDUPE_LEASE_SECONDS="10", PUBLISH_TIMEOUT_SECONDS="5",
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while published(workers) < n // 4:
            assert time.monotonic() < deadline, "a quarter of the records not within 180 s"
            time.sleep(0.05)
        cluster.kill(cluster.node(leader))
        info["killed"] = leader
        info["published_at_kill"] = published(workers)
        killed_at = time.monotonic()
        new_leader = ""
        while time.monotonic() - killed_at < 60:
            new_leader = cluster.leader("rapidly.events")
            if new_leader != leader:
                break
            time.sleep(1.0)
        info["new_leader"] = new_leader
        info["leader_after_s"] = round(time.monotonic() - killed_at, 1)
        by_id = collect_records(url, set(ids), timeout=400, settle=10.0)
        info["outcomes"] = dict(outcomes(workers))
        info["alive"] = all(w.alive() for w in workers)
    finally:
        stop_all(workers)
        sim.stop()
    lost = len(set(ids) - set(by_id))
    duplicates = sum(count - 1 for count in by_id.values() if count > 1)
    line = (
        f"leader kill: {n} events, 1 Procfile line x 2 processes, BROKER_URL=3 nodes; killed "
        f"{info['killed']} (leader of rapidly.events) at {info['published_at_kill']} records; "
        f"new leader {info['new_leader']} after {info['leader_after_s']}s; "
        f"lost={lost} duplicates={duplicates} records={sum(by_id.values())} "
        f"outcomes={info['outcomes']} workers_alive={info['alive']}"
    )
    print(line)
    SUMMARIES.append(line)
    assert info["new_leader"] and info["new_leader"] != info["killed"]
    assert lost == 0
    assert info["alive"]


@pytest.mark.parametrize("case", ["worker_first", "producer_first", "vhost_default_quorum"])
def test_a_plain_producer_and_a_quorum_queue(cluster: RabbitCluster, case: str) -> None:
    """What CONTRACT.md's producer (send_task, nothing else) meets on a quorum rapidly.events:
    refused, unless the vhost's default queue type is quorum."""
    node = cluster.alive()[-1]
    vhost = "/"
    if case == "vhost_default_quorum":
        vhost = "quorum-default"
        cluster.ctl(node, "add_vhost", vhost, "--default-queue-type", "quorum")
        cluster.ctl(node, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = f"amqp://guest:guest@127.0.0.1:{node.port}/{quote(vhost, safe='')}"
    quorum_events = topology("quorum").events_queue
    with Connection(url) as conn:
        conn.default_channel.queue_delete("rapidly.events")
    plain = Celery(broker=url)
    if case == "worker_first":
        with Connection(url) as conn:
            quorum_events.bind(conn.default_channel).declare()
        with pytest.raises(PreconditionFailed, match="x-queue-type"):
            plain.send_task("events.enrich", args=["x"], queue="rapidly.events")
        quorum_producer(url).send_task("events.enrich", args=["x"], queue="rapidly.events")
        assert cluster.queue_type("rapidly.events", vhost) == "quorum"
    elif case == "producer_first":
        plain.send_task("events.enrich", args=["x"], queue="rapidly.events")
        with Connection(url) as conn, pytest.raises(PreconditionFailed, match="x-queue-type"):
            quorum_events.bind(conn.default_channel).declare()
    else:
        # Both orders are accepted: the server takes a declaration without x-queue-type as
        # the vhost's default type.
        plain.send_task("events.enrich", args=["x"], queue="rapidly.events")
        assert cluster.queue_type("rapidly.events", vhost) == "quorum"
        with Connection(url) as conn:
            quorum_events.bind(conn.default_channel).declare()
            conn.default_channel.queue_delete("rapidly.events")
            quorum_events.bind(conn.default_channel).declare()
        Celery(broker=url).send_task("events.enrich", args=["y"], queue="rapidly.events")
        with Connection(url) as conn:
            bound = quorum_events.bind(conn.default_channel)
            deadline = time.monotonic() + 10
            message = bound.get(no_ack=True)
            while message is None and time.monotonic() < deadline:
                time.sleep(0.1)
                message = bound.get(no_ack=True)
            assert message is not None and message.headers["argsrepr"] == "['y']"
    with Connection(url) as conn:
        conn.default_channel.queue_delete("rapidly.events")
