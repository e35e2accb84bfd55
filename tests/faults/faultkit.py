"""Tools of the fault-injection suite: the `faults` vhost, a paced producer that survives
connection closes (on ``devkit.Sender``), quiescence detection, and the bookkeeping (records and dead letters counted per event ID) that every scenario ends with.

Everything here drives the worker from outside, as a producer, a consumer and an operator would:
the Procfile line under ``bash -c``, ``send_task`` by name, kombu reads, ``rabbitmqctl``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import devkit
from devkit import (
    CUSTOMER_CREATED,
    DEAD_QUEUE,
    EVENTS,
    EVENTS_QUEUE,
    TOKEN,
    VENV_BIN,
    WorkerProcess,
    free_port,
    rabbitmqctl,
    reachable,
    validate_record,
)
from tests.integration.harness import ALL_RECORDS

VHOST = "faults"
AMQP_URL = os.environ.get("TEST_FAULTS_AMQP_URL", f"amqp://guest:guest@127.0.0.1:5672/{VHOST}")
LOCK_PATH = Path(os.environ.get("FAULTS_LOCK", "/tmp/rapidly-fault-suite.lock"))

# One line per scenario run; conftest prints them in pytest's terminal summary.
SUMMARIES: list[str] = []


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- RabbitMQ: the vhost and the operator's commands -------------------------------------------


def infrastructure_problem() -> str | None:
    """Why the suite cannot run here, or None."""
    if not reachable(AMQP_URL):
        return (
            "RabbitMQ is not reachable at 127.0.0.1:5672; start it with: rabbitmq-server -detached"
        )
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed (needed to create the vhost and close connections)"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (the suite starts, kills and restarts its own)"
    return None


def ensure_vhost() -> None:
    devkit.ensure_vhost(AMQP_URL)


def close_connections() -> None:
    """Every connection of the vhost (the worker's consumer, publishers, our producer)."""
    out = rabbitmqctl("close_all_connections", "--vhost", VHOST, "fault suite")
    if out.returncode != 0:
        raise RuntimeError(f"close_all_connections failed: {out.stderr.strip()}")


def require_no_consumers(timeout: float = 15) -> None:
    """Results are only ours if no other worker consumes the vhost's input queue."""
    deadline = time.monotonic() + timeout
    while True:
        out = rabbitmqctl("list_queues", "-p", VHOST, "name", "consumers", "--formatter", "json")
        consumers = {q["name"]: int(q["consumers"]) for q in json.loads(out.stdout or "[]")}
        if consumers.get(EVENTS, 0) == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{consumers[EVENTS]} consumer(s) still on {EVENTS} in vhost {VHOST!r}: a worker "
                "of an earlier run is alive (rabbitmqctl list_consumers -p faults)"
            )
        time.sleep(1)


def queue_depths() -> dict[str, tuple[int, int]]:
    """name -> (ready, unacknowledged) for every queue of the vhost."""
    out = rabbitmqctl(
        "list_queues",
        "-p",
        VHOST,
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "--formatter",
        "json",
    )
    if out.returncode != 0:
        raise RuntimeError(f"list_queues failed: {out.stderr.strip()}")
    return {
        q["name"]: (int(q["messages_ready"]), int(q["messages_unacknowledged"]))
        for q in json.loads(out.stdout or "[]")
    }


def vhost_lock(timeout: float) -> contextlib.AbstractContextManager[None]:
    """Two fault runs on one machine would close each other's connections and read each other's
    records: serialise them (a `make test` waits for a running `make faults`, up to ``timeout``)."""
    return devkit.machine_lock(
        LOCK_PATH, timeout=timeout, what=f"the fault suite's vhost {VHOST!r}"
    )


def reset_queues(url: str = AMQP_URL) -> None:
    """Declare (as producer and consumers would) and empty every queue the suite reads."""
    devkit.reset_queues(url, (EVENTS_QUEUE, DEAD_QUEUE, CUSTOMER_CREATED, ALL_RECORDS))


def broker_view() -> str:
    """What RabbitMQ says about the input queue and its consumers (for a stalled run)."""
    queues = rabbitmqctl(
        "list_queues",
        "-p",
        VHOST,
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    )
    consumers = rabbitmqctl(
        "list_consumers", "-p", VHOST, "queue_name", "prefetch_count", "ack_required", "active"
    )
    return f"queues:\n{queues.stdout.strip()}\nconsumers:\n{consumers.stdout.strip()}"


def wait_quiescent(
    timeout: float,
    *,
    stable_polls: int = 3,
    interval: float = 2.0,
    tick: Callable[[], None] | None = None,
) -> float:
    """Wait until ``rapidly.events`` has neither ready nor unacknowledged messages for
    ``stable_polls`` polls in a row: no worker holds a message, so nothing more can be published.
    ``tick`` runs at every poll (the storm restarts a worker that exited on its own there).
    Returns the seconds waited; raises TimeoutError past ``timeout``."""
    started = time.monotonic()
    streak = 0
    last: tuple[int, int] = (-1, -1)
    while time.monotonic() - started < timeout:
        if tick is not None:
            tick()
        last = queue_depths().get(EVENTS, (0, 0))
        streak = streak + 1 if last == (0, 0) else 0
        if streak >= stable_polls:
            return time.monotonic() - started
        time.sleep(interval)
    raise TimeoutError(
        f"rapidly.events not quiescent after {timeout:.0f}s: (ready, unacked)={last}"
    )


# --- the worker --------------------------------------------------------------------------------


def fault_worker_env(api_url: str, redis_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    """The README's knobs, set so that faults trip and recover within a test's time."""
    env = {
        "RAPIDLY_API_URL": api_url,
        "RAPIDLY_API_TOKEN": TOKEN,
        "BROKER_URL": AMQP_URL,
        "REDIS_URL": redis_url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "WORKER_CONCURRENCY": "50",
        "WORKER_PROCESSES": "1",  # the figures (calls, RSS) are one process's; not per host
        "API_TIMEOUT_SECONDS": "2",  # the simulator's 5 s stalls must trip it
        "NOT_FOUND_WAIT_SECONDS": "8",  # lag_reads=2 needs 0.75 s of 404 back-off, plus 5xx
        "AUTH_RETRY_SECONDS": "1",
        "DEDUPE_LEASE_SECONDS": "10",  # leases of killed workers expire quickly
        "RETRY_MAX_ATTEMPTS": "10",  # 20% 5xx + 2% garbage + 1% timeouts never exhaust 10
        "RETRY_BUDGET_SECONDS": "60",
        "PUBLISH_TIMEOUT_SECONDS": "5",
        "RAPIDLY_RATE_LIMIT": "5000/s",  # above the simulator's limit: 429s do happen
        "METRICS_PORT": str(free_port()),
        "HEALTH_DIR": str(tmp / "health"),
    }
    env.update(extra)
    return env


def worker_health(worker: WorkerProcess) -> str:
    """``rapidly-worker health live`` and ``ready``, as the pod's probes would run them."""
    answers = []
    for what in ("live", "ready"):
        out = subprocess.run(
            [f"{VENV_BIN}/rapidly-worker", "health", what, "--dir", worker.env["HEALTH_DIR"]],
            capture_output=True,
            text=True,
            timeout=30,
        )
        answers.append(out.stdout.strip() or f"{what}: exit {out.returncode}")
    return "; ".join(answers)


# --- producing ---------------------------------------------------------------------------------


class PacedSender(threading.Thread):
    """Sends ``ids`` spread evenly over ``seconds`` with a plain, confirmed ``send_task``; a send
    that fails (its connection closed under it) is sent again (``devkit.Sender``'s ``resend``)."""

    def __init__(self, ids: list[Any], seconds: float, url: str = AMQP_URL) -> None:
        super().__init__(daemon=True, name="paced-sender")
        self.ids = ids
        self.seconds = seconds
        self.sender = devkit.Sender(url, confirm=True, resend=True)
        self.finished_at: float | None = None

    @property
    def sent(self) -> int:
        return self.sender.sent

    @property
    def resends(self) -> int:
        return self.sender.resends

    @property
    def errors(self) -> list[str]:
        return self.sender.errors

    def run(self) -> None:
        self.sender.send(self.ids, rate=max(1, len(self.ids)) / self.seconds)
        self.finished_at = time.monotonic()


def send_concurrently(ids: Iterable[Any], url: str = AMQP_URL) -> None:
    """Every ID from its own thread, released together by a barrier, through one producer app
    (its connection pool is shared by the threads, as in a threaded web server)."""
    ids = list(ids)
    app = devkit.producer(url, confirm=True)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
    barrier = threading.Barrier(len(ids))
    errors: list[BaseException] = []

    def one(event_id: Any) -> None:
        try:
            barrier.wait(10)
            devkit.send(app, event_id, retry=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors


# --- results -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """Records and dead letters, counted by event ID."""

    records: Counter[str] = field(default_factory=Counter)
    record_bodies: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    routing_keys: dict[str, str] = field(default_factory=dict)
    dead: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    # The Celery task id of each dead letter: equal ids mean one message dead-lettered twice
    # (a redelivery), different ids a producer's re-send.
    dead_task_ids: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def collect(cls, url: str = AMQP_URL) -> Tally:
        tally = cls()
        for message in devkit.drain_all(ALL_RECORDS, url):
            event_id = message.properties.get("message_id")
            tally.records[event_id] += 1
            body = json.loads(message.body)
            validate_record(body)  # CONTRACT.md section 9: every record validates
            tally.record_bodies[event_id].append(body)
            tally.routing_keys[event_id] = message.delivery_info["routing_key"]
        for message in devkit.drain_all(DEAD_QUEUE, url):
            try:
                event_id = json.loads(message.body)[0][0]
            except (ValueError, LookupError, TypeError):
                event_id = f"<undecodable {message.body[:40]!r}>"
            tally.dead[str(event_id)].append(str(message.headers.get("x-death-reason")))
            tally.dead_task_ids[str(event_id)].append(str(message.headers.get("id")))
        return tally

    def lost(self, valid: Iterable[str]) -> list[str]:
        return [i for i in valid if self.records[i] == 0]

    def duplicated(self) -> dict[str, int]:
        """event ID -> records beyond the first."""
        return {i: n - 1 for i, n in self.records.items() if n > 1}

    def dead_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r for rs in self.dead.values() for r in rs).items()))

    def wrong_records(self, expected: dict[str, dict[str, Any]]) -> dict[str, str]:
        """event ID -> what differs from the simulator's expected record."""
        wrong: dict[str, str] = {}
        for event_id, bodies in self.record_bodies.items():
            want = expected.get(event_id)
            if want is None:
                wrong[event_id] = "record for an ID that should have none"
                continue
            for body in bodies:
                diff = record_diff(body, want, self.routing_keys.get(event_id))
                if diff:
                    wrong[event_id] = diff
        return wrong


def record_diff(body: dict[str, Any], want: dict[str, Any], routing_key: str | None) -> str:
    have = body["hierarchy"]
    need = want["hierarchy"]
    diffs = []
    if routing_key != want["routing_key"]:
        diffs.append(f"routing_key {routing_key!r} != {want['routing_key']!r}")
    if [a["id"] for a in have["ancestors"]] != need["ancestors"]:
        diffs.append("ancestors differ")
    for key in (
        "root_id",
        "depth",
        "complete",
        "incomplete_reason",
        "child_count",
        "descendant_count",
    ):
        if have[key] != need[key]:
            diffs.append(f"{key} {have[key]!r} != {need[key]!r}")
    return "; ".join(diffs)


def confirm_lost(worker: WorkerProcess, event_ids: Iterable[str]) -> list[str]:
    """The ``event_ids`` one of whose deliveries wrote its record and then lost the connection
    before the broker's confirm came: the worker cannot know whether that record was routed, so it
    publishes again, and a duplicate is the documented outcome (never a loss). The evidence is the
    delivery's end (requeued ``NotPublished``, "publish not confirmed" with a connection error)
    or, when a kill cut the delivery short before it ended, the same error on the
    ``worker.downstream_not_confirming`` line it logged first."""
    wanted = set(event_ids)
    found: set[str] = set()
    for rec in worker.log_records():
        event_id = rec.get("event_id")
        if event_id not in wanted:
            continue
        if rec.get("event") == "enrich.finished" and rec.get("reason") == "NotPublished":
            detail = str(rec.get("detail", ""))
        elif rec.get("event") == "worker.downstream_not_confirming":
            detail = str(rec.get("error", ""))
        else:
            continue
        if detail.startswith("publish not confirmed:") and any(
            kind in detail for kind in ("Connection", "Socket", "Broken pipe", "EOF")
        ):
            found.add(str(event_id))
    return sorted(found)


# How long after a record was built its sent mark can still be unwritten: the broker write and the
# mark's write are consecutive, but a loaded two-core host can preempt the process between them
# (17 ms seen).
KILL_GAP_SECONDS = 0.5


def kill_gap(
    worker: WorkerProcess,
    duplicated: dict[str, int],
    bodies: dict[str, list[dict[str, Any]]],
    kills: Iterable[datetime],
) -> list[str]:
    """The duplicated IDs whose second record a SIGKILL explains (docs/guarantees.md): the worker
    was killed after writing the first record to the broker and before its mark landed in Redis,
    so the redelivery published again. Each has exactly one extra record, its first built before
    a kill and its second after it, and the delivery that built the first never logged its end
    (``enrich.finished``) before the kill. Its mark was still unwritten: the kill came at most
    ``KILL_GAP_SECONDS`` after the record was built, or the delivery had logged that the sent
    mark failed (Redis down) and was still retrying the done mark."""
    kill_times = list(kills)
    finished: dict[str, list[datetime]] = defaultdict(list)
    mark_failed: dict[str, list[datetime]] = defaultdict(list)
    for rec in worker.log_records():
        if rec.get("event_id") not in duplicated:
            continue
        if rec.get("event") == "enrich.finished":
            finished[str(rec["event_id"])].append(datetime.fromisoformat(str(rec["timestamp"])))
        elif rec.get("event") == "dedupe.mark_sent_failed":
            mark_failed[str(rec["event_id"])].append(datetime.fromisoformat(str(rec["timestamp"])))
    found = []
    for event_id, extra in duplicated.items():
        copies = sorted(datetime.fromisoformat(b["enriched_at"]) for b in bodies.get(event_id, []))
        if extra != 1 or len(copies) != 2:
            continue
        first, second = copies
        for kill in kill_times:
            if not first <= kill <= second:
                continue
            unmarked = (kill - first).total_seconds() <= KILL_GAP_SECONDS or any(
                first <= failed <= kill for failed in mark_failed[event_id]
            )
            if not unmarked:
                continue
            if any(first <= end <= kill for end in finished[event_id]):
                continue
            found.append(event_id)
            break
    return sorted(found)


def log_story(worker: WorkerProcess, event_ids: Iterable[str], limit: int = 40) -> str:
    """The worker's log lines about ``event_ids`` (timestamp, pid of the run, event, outcome)."""
    wanted = set(event_ids)
    lines = []
    for rec in worker.log_records():
        detail = str(rec.get("detail", ""))
        if rec.get("event_id") in wanted or any(i in detail for i in wanted):
            keep = {
                k: rec[k]
                for k in (
                    "timestamp",
                    "event_id",
                    "event",
                    "outcome",
                    "reason",
                    "detail",
                    "level",
                    "error",
                )
                if k in rec
            }
            lines.append(json.dumps(keep))
    if len(lines) > limit:
        lines = [*lines[: limit // 2], f"... {len(lines) - limit} more ...", *lines[-limit // 2 :]]
    return "\n".join(lines)


def outcome_counts(worker: WorkerProcess) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for rec in worker.log_records():
        if rec.get("event") == "enrich.finished":
            counts[str(rec.get("outcome"))] += 1
    return dict(sorted(counts.items()))


def token_leaks(worker: WorkerProcess) -> list[str]:
    return [line[:200] for line in worker.log_text().splitlines() if TOKEN in line]
