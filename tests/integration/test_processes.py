"""WORKER_PROCESSES=2: the Procfile line starts a supervisor with two worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from devkit import (
    TOKEN,
    VENV_BIN,
    SimulatorProcess,
    WorkerProcess,
    drain,
    free_port,
    producer,
    send,
)
from tests.integration.harness import ALL_RECORDS
from worker.cpus import choose_processes


def wait_for_lines(worker: WorkerProcess, event: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for r in worker.log_records() if r.get("event") == event) >= count:
            return
        assert worker.alive(), worker.log_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} {event} lines:\n{worker.log_text()[-3000:]}")


def health(worker: WorkerProcess, what: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [f"{VENV_BIN}/rapidly-worker", "health", what, "--dir", worker.env["HEALTH_DIR"]],
        capture_output=True,
        text=True,
    )


def child_pids(worker: WorkerProcess) -> dict[int, int]:
    """process index -> pid of its latest start."""
    return {
        r["process"]: r["pid"]
        for r in worker.log_records()
        if r.get("event") == "supervisor.child_started"
    }


def test_two_processes_share_the_queue(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any
) -> None:
    worker = start_worker(amqp_url, WORKER_PROCESSES="2")
    wait_for_lines(worker, "worker.consumer_ready", 2)
    expected = [e["id"] for e in sim.dataset()["events"]]
    app = producer(amqp_url)
    for event_id in expected + expected[:20]:  # 20 sent twice: still one record each
        send(app, event_id)
    records = drain(amqp_url, ALL_RECORDS, expect=len(expected), timeout=180, settle=2.0)
    by_id = Counter(m.properties["message_id"] for m in records)
    assert set(by_id) == set(expected)
    assert max(by_id.values()) == 1

    finished = [r for r in worker.log_records() if r.get("event") == "enrich.finished"]
    per_process = Counter(r["process"] for r in finished)
    assert set(per_process) == {0, 1}, per_process  # both consumed
    assert sum(per_process.values()) == len(expected) + 20

    time.sleep(6)  # one heartbeat of each child
    for what in ("live", "ready"):
        out = health(worker, what)
        assert out.returncode == 0, out.stdout
        assert "2 processes" in out.stdout
    # One metrics endpoint for the pod, summed over the children.
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.env['METRICS_PORT']}/metrics") as r:
        text = r.read().decode()
    published = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('rapidly_events_total{outcome="published"')
    )
    duplicates = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('rapidly_events_total{outcome="duplicate"')
    )
    assert (published, duplicates) == (len(expected), 20)
    assert "rapidly_worker_ready 1.0" in text
    assert TOKEN not in worker.log_text()

    pids = child_pids(worker)
    worker.signal(signal.SIGTERM)
    assert worker.proc is not None
    assert worker.proc.wait(60) == 0
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists()  # reaped by the supervisor before it exited
    assert any(r.get("event") == "supervisor.stopped" for r in worker.log_records())


def test_a_killed_process_is_restarted_and_nothing_is_lost(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any
) -> None:
    worker = start_worker(amqp_url, WORKER_PROCESSES="2")
    wait_for_lines(worker, "worker.consumer_ready", 2)
    victim = child_pids(worker)[1]
    os.kill(victim, signal.SIGKILL)
    wait_for_lines(worker, "supervisor.child_exited", 1)
    wait_for_lines(worker, "worker.consumer_ready", 3)  # process 1 again
    assert child_pids(worker)[1] != victim
    exited = next(r for r in worker.log_records() if r.get("event") == "supervisor.child_exited")
    assert (exited["process"], exited["pid"], exited["exit_code"]) == (1, victim, -9)

    expected = [e["id"] for e in sim.dataset()["events"]][:100]
    app = producer(amqp_url)
    for event_id in expected:
        send(app, event_id)
    records = drain(amqp_url, ALL_RECORDS, expect=len(expected), timeout=120, settle=1.0)
    assert Counter(m.properties["message_id"] for m in records) == Counter(expected)
    time.sleep(6)
    assert health(worker, "ready").returncode == 0


# --- WORKER_PROCESSES' default: the CPUs this process may use


def processes_line(worker: WorkerProcess) -> dict[str, Any]:
    wait_for_lines(worker, "worker.processes", 1)
    return next(r for r in worker.log_records() if r.get("event") == "worker.processes")


def test_limited_to_one_cpu_the_default_is_one_process(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any
) -> None:
    worker = start_worker(amqp_url, wrapper=("taskset", "-c", "0"), WORKER_PROCESSES="")
    line = processes_line(worker)
    assert (line["chosen"], line["source"]) == (1, "affinity")
    assert not any(r.get("event") == "supervisor.started" for r in worker.log_records())
    expected = [e["id"] for e in sim.dataset()["events"]][:30]
    app = producer(amqp_url)
    for event_id in expected:
        send(app, event_id)
    records = drain(amqp_url, ALL_RECORDS, expect=len(expected), timeout=120)
    assert Counter(m.properties["message_id"] for m in records) == Counter(expected)
    ready = [r for r in worker.log_records() if r.get("event") == "worker.consumer_ready"]
    assert len(ready) == 1


def test_an_explicit_value_wins_over_the_cpus(amqp_url: str, start_worker: Any) -> None:
    worker = start_worker(amqp_url, wrapper=("taskset", "-c", "0"), WORKER_PROCESSES="2")
    line = processes_line(worker)
    assert (line["chosen"], line["source"]) == (2, "setting")
    wait_for_lines(worker, "worker.consumer_ready", 2)
    assert set(child_pids(worker)) == {0, 1}


def test_the_default_follows_the_affinity(amqp_url: str, start_worker: Any) -> None:
    expected = choose_processes(None)
    worker = start_worker(amqp_url, WORKER_PROCESSES="")
    line = processes_line(worker)
    assert (line["chosen"], line["source"]) == (expected.count, expected.source)
    if expected.count > 1:
        wait_for_lines(worker, "worker.consumer_ready", expected.count)
        assert set(child_pids(worker)) == set(range(expected.count))


def test_several_worker_lines_share_one_metrics_port(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any
) -> None:
    """Three Procfile lines on one host, one METRICS_PORT: the first serves it, the others warn
    once and consume (one process, whose boot handler serves metrics; and a supervisor)."""
    port = free_port()
    first = start_worker(amqp_url, METRICS_PORT=str(port), WORKER_PROCESSES="1")
    single = start_worker(amqp_url, METRICS_PORT=str(port), WORKER_PROCESSES="1")
    supervised = start_worker(amqp_url, METRICS_PORT=str(port), WORKER_PROCESSES="2")
    wait_for_lines(supervised, "worker.consumer_ready", 2)
    for worker in (single, supervised):
        warnings = [r for r in worker.log_records() if r.get("event") == "metrics.port_in_use"]
        assert len(warnings) == 1, worker.log_text()[-2000:]
        assert warnings[0]["port"] == port
        assert "Traceback" not in worker.log_text()
    assert any(r.get("event") == "worker.started" for r in single.log_records())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200

    expected = [e["id"] for e in sim.dataset()["events"]]
    app = producer(amqp_url)
    for event_id in expected:
        send(app, event_id)
    records = drain(amqp_url, ALL_RECORDS, expect=len(expected), timeout=180, settle=1.0)
    assert Counter(m.properties["message_id"] for m in records) == Counter(expected)
    for worker in (first, single, supervised):
        assert worker.alive()
        finished = [r for r in worker.log_records() if r.get("event") == "enrich.finished"]
        assert finished, f"a worker line consumed nothing:\n{worker.log_text()[-2000:]}"


def test_sigusr1_prints_every_greenlets_stack(amqp_url: str, start_worker: Any) -> None:
    """The README's promise for a stuck worker: ``kill -USR1`` prints the greenlets' stacks
    (Celery's own SIGUSR1 handler, which the worker replaces once ready, prints only the
    threads')."""
    worker = start_worker(amqp_url, wrapper=("taskset", "-c", "0"), WORKER_PROCESSES="1")
    wait_for_lines(worker, "worker.consumer_ready", 1)
    os.kill(worker.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while "* Greenlets" not in worker.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = worker.log_text()
    assert "* Greenlets" in text, text[-3000:]
    greenlets = text[text.index("* Greenlets") :]
    assert "worker_main" in greenlets, greenlets[:3000]  # the main greenlet's stack
    assert worker.alive()
