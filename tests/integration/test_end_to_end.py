"""The real worker (Procfile line) against real brokers and the simulator over HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from devkit import CUSTOMER_CREATED, DEAD, TOKEN, VENV_BIN, SimulatorProcess, drain, producer, send
from tests.integration.harness import ALL_RECORDS

DEAD_QUEUE = Queue(DEAD, Exchange(DEAD, "direct", durable=True), DEAD, durable=True)


def check_record(
    message: Any, expected: dict[str, Any], event: dict[str, Any] | None = None
) -> None:
    body = json.loads(message.body)
    assert message.content_type == "application/json"
    assert message.properties["delivery_mode"] == 2
    assert message.properties["message_id"] == body["event"]["id"]
    assert message.headers["schema"] == body["schema"] == "rapidly.enriched_event.v1"
    assert message.delivery_info["routing_key"] == expected["routing_key"]
    h = body["hierarchy"]
    want = expected["hierarchy"]
    assert [a["id"] for a in h["ancestors"]] == want["ancestors"]
    for key in ("root_id", "depth", "complete", "incomplete_reason", "child_count"):
        assert h[key] == want[key], (key, body["event"]["id"])
    assert h["descendant_count"] == want["descendant_count"], body["event"]["id"]
    assert body["event"]["child_count"] == 0
    assert body["enriched_at"].endswith("Z")
    if event is not None:
        assert body["event"] == event


def test_whole_dataset(sim: SimulatorProcess, broker_url: str, start_worker: Any) -> None:
    worker = start_worker(broker_url)
    data = sim.dataset()
    expected = {e["id"]: e["expected"] for e in data["events"]}
    bad = {x["id"]: x["reason"] for x in data["invalid_ids"] + data["unknown_ids"]}
    app = producer(broker_url)
    for event_id in list(expected) + list(bad):
        send(app, event_id)

    records = drain(broker_url, ALL_RECORDS, expect=len(expected), timeout=180, settle=1.0)
    dead = drain(broker_url, DEAD_QUEUE, expect=len(bad), timeout=60, settle=0.5)
    customer_created = drain(broker_url, CUSTOMER_CREATED, expect=10**9, timeout=1.0)

    by_id = Counter(m.properties["message_id"] for m in records)
    assert set(by_id) == set(expected), "one record per valid event, none for invalid ones"
    assert max(by_id.values()) == 1, "no duplicates"
    for message in records:
        check_record(message, expected[message.properties["message_id"]])

    want_cc = {i for i, e in expected.items() if e["is_customer_created"]}
    assert want_cc and {m.properties["message_id"] for m in customer_created} == want_cc
    # a user event named customer.created exists in the dataset and is not routed there
    assert any(e["routing_key"] == "user.customer.created" for e in expected.values())

    reasons = {json.loads(m.body)[0][0]: m.headers["x-death-reason"] for m in dead}
    assert reasons == bad
    for m in dead:
        assert m.headers["x-death-detail"]
        assert int(m.headers["x-attempts"]) >= 0
        assert m.headers["task"] == "events.enrich"  # the original Celery message, replayable
    log_text = worker.log_text()
    assert TOKEN not in log_text
    # every ack went through and the consumer never reconnected (a full Redis pool did both)
    for trouble in ("Couldn't ack", "MaxConnectionsError", "Connection to broker lost"):
        assert trouble not in log_text
    assert worker.alive()


def test_record_event_is_exactly_what_get_returned(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any
) -> None:
    start_worker(amqp_url)
    data = sim.dataset()
    picks = [e for e in data["events"] if {"extra_fields", "unicode"} & set(e["tags"])][:5]
    assert picks
    app = producer(amqp_url)
    for e in picks:
        send(app, e["id"])
    records = drain(amqp_url, ALL_RECORDS, expect=len(picks), timeout=60)
    for message in records:
        event_id = message.properties["message_id"]
        request = urllib.request.Request(
            f"{sim.url}/api/events/{event_id}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request) as response:
            got = json.loads(response.read())
        check_record(message, next(e["expected"] for e in picks if e["id"] == event_id), got)


def test_same_id_many_times_gives_one_record(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any
) -> None:
    start_worker(amqp_url)
    event_id = next(e["id"] for e in sim.dataset()["events"] if "customer_created" in e["tags"])
    app = producer(amqp_url)
    for _ in range(5):
        send(app, event_id)
    app.send_task("events.enrich", kwargs={"event_id": event_id}, queue="rapidly.events")
    records = drain(amqp_url, ALL_RECORDS, expect=1, timeout=30, settle=3.0)
    assert [m.properties["message_id"] for m in records] == [event_id]


POISON = [
    ("pickle", "application/x-python-serialize", b"\x80\x04K\x01.", "content_type_not_allowed"),
    ("yaml", "application/x-yaml", b"- 1\n", "content_type_not_allowed"),
    ("msgpack", "application/x-msgpack", b"\x93\x90\x80\x80", "content_type_not_allowed"),
    ("not json", "application/json", b"{not json", "malformed_message"),
]


def raw_publish(url: str, body: bytes, content_type: str, headers: dict[str, Any] | None) -> None:
    with Connection(url) as conn:
        producer_ = conn.Producer()
        producer_.publish(
            body,
            exchange="rapidly.events",
            routing_key="rapidly.events",
            content_type=content_type,
            content_encoding="binary",
            headers=headers or {},
            declare=[],
        )


def test_poison_messages_are_dead_lettered_never_run(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any
) -> None:
    worker = start_worker(amqp_url)
    valid = next(e["id"] for e in sim.dataset()["events"] if "customer_created" in e["tags"])
    expected: list[str] = []
    for _, content_type, body, reason in POISON:
        raw_publish(
            amqp_url,
            body,
            content_type,
            {"task": "events.enrich", "id": str(uuid.uuid4()), "argsrepr": "poison"},
        )
        expected.append(reason)
    raw_publish(amqp_url, b'{"hello": "world"}', "application/json", None)  # not a Celery message
    expected.append("malformed_message")
    app = producer(amqp_url)
    app.send_task("events.enrich", args=[], queue="rapidly.events")
    app.send_task("events.enrich", args=[valid, "extra"], queue="rapidly.events")
    expected += ["invalid_arguments", "invalid_arguments"]
    for value in (
        12345,
        "x" * 1_000_000,
        str(uuid.uuid1()),
        "00000000-0000-0000-0000-000000000000",
    ):
        send(app, value)
        expected.append("invalid_event_id")
    app.send_task("events.other", args=[valid], queue="rapidly.events")
    expected.append("unknown_task")
    send(app, valid)  # still works after all that

    dead = drain(amqp_url, DEAD_QUEUE, expect=len(expected), timeout=60, settle=1.0)
    assert sorted(m.headers["x-death-reason"] for m in dead) == sorted(expected)
    for m in dead:
        if m.headers["x-death-reason"] == "content_type_not_allowed":
            assert m.content_type != "application/json"  # unchanged: same content type and body
    records = drain(amqp_url, ALL_RECORDS, expect=1, timeout=30)
    assert [m.properties["message_id"] for m in records] == [valid]
    assert worker.alive()
    assert sim.stats()["by_kind"].get("get", 0) >= 1


def test_rejected_token_requeues_and_recovers(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any, tmp_path: Any
) -> None:
    worker = start_worker(amqp_url)
    sim.configure(token_valid=False)
    event_id = next(e["id"] for e in sim.dataset()["events"] if "customer_created" in e["tags"])
    send(producer(amqp_url), event_id)
    deadline = time.monotonic() + 30
    health = [f"{VENV_BIN}/rapidly-worker", "health", "ready", "--dir", worker.env["HEALTH_DIR"]]
    while time.monotonic() < deadline:
        if subprocess.run(health, capture_output=True).returncode == 1:
            break
        time.sleep(0.5)
    else:
        pytest.fail("worker still reports ready while the API rejects its token")
    assert drain(amqp_url, ALL_RECORDS, expect=1, timeout=3) == []
    assert drain(amqp_url, DEAD_QUEUE, expect=1, timeout=1) == []  # not dead-lettered
    assert "worker.api_rejects_token" in worker.log_text()
    sim.configure(token_valid=True)
    records = drain(amqp_url, ALL_RECORDS, expect=1, timeout=60)
    assert [m.properties["message_id"] for m in records] == [event_id]
    time.sleep(6)  # one heartbeat
    assert subprocess.run(health, capture_output=True).returncode == 0
    assert TOKEN not in worker.log_text()


def test_health_and_metrics_of_a_running_worker(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any
) -> None:
    worker = start_worker(amqp_url)
    event_id = next(e["id"] for e in sim.dataset()["events"] if "customer_created" in e["tags"])
    send(producer(amqp_url), event_id)
    send(producer(amqp_url), "not-a-uuid")
    assert drain(amqp_url, ALL_RECORDS, expect=1, timeout=30)
    assert drain(amqp_url, DEAD_QUEUE, expect=1, timeout=30)
    time.sleep(6)
    for what in ("live", "ready"):
        out = subprocess.run(
            [f"{VENV_BIN}/rapidly-worker", "health", what, "--dir", worker.env["HEALTH_DIR"]],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.env['METRICS_PORT']}/metrics") as r:
        text = r.read().decode()
    assert 'rapidly_events_total{outcome="published"} 1.0' in text
    assert 'rapidly_dead_letters_total{reason="invalid_event_id"} 1.0' in text
    assert 'rapidly_records_published_total{kind="customer_created"} 1.0' in text
    assert "rapidly_api_request_seconds_bucket" in text
    assert "rapidly_worker_ready 1.0" in text


def test_sigterm_finishes_in_flight_events(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any
) -> None:
    worker = start_worker(amqp_url)
    sim.configure(latency_ms=300.0)
    ids = [e["id"] for e in sim.dataset()["events"] if "customer_created" in e["tags"]][:30]
    app = producer(amqp_url)
    for event_id in ids:
        send(app, event_id)
    time.sleep(1.0)  # in flight: each needs two 300 ms calls
    worker.signal(signal.SIGTERM)
    assert worker.proc is not None
    assert worker.proc.wait(60) == 0
    done = drain(amqp_url, ALL_RECORDS, expect=len(ids), timeout=2)
    # Whatever was not finished before the shutdown is still queued, not lost.
    with Connection(amqp_url) as conn:
        left = (
            Queue("rapidly.events")
            .bind(conn.default_channel)
            .queue_declare(passive=True)
            .message_count
        )
    assert len({m.properties["message_id"] for m in done}) + left == len(ids)
    assert "worker.stopped" in worker.log_text()
