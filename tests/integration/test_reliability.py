"""Nothing lost, nothing trusted blindly: the real worker (Procfile line) against real RabbitMQ,
Redis and the simulator, under a downstream that refuses records, hostile API answers and a
wrong API URL (CONTRACT.md section 3)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from kombu import Connection

from devkit import (
    DEAD_QUEUE,
    EVENTS_QUEUE,
    VENV_BIN,
    SimulatorProcess,
    WorkerProcess,
    drain,
    producer,
    rabbitmqctl,
    send,
)
from tests.integration.harness import ALL_RECORDS


def vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def ready(worker: WorkerProcess) -> tuple[bool, str]:
    result = subprocess.run(
        [f"{VENV_BIN}/rapidly-worker", "health", "ready", "--dir", worker.env["HEALTH_DIR"]],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "RAPIDLY_API_TOKEN": "x"},
    )
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout}s: {what}")


def queue_depth(broker_url: str, queue: Any) -> int:
    with Connection(broker_url) as conn:
        return int(queue.bind(conn.default_channel).queue_declare(passive=True).message_count)


@pytest.fixture
def no_write_user(amqp_url: str) -> Iterator[tuple[str, str]]:
    """A RabbitMQ user that may do everything on the test vhost except write to
    rapidly.enriched: its publishes are refused with a channel close (403 ACCESS_REFUSED)."""
    name, password = f"rel_nowrite_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    vhost = vhost_of(amqp_url)
    for args in (
        ("add_user", name, password),
        ("set_permissions", "-p", vhost, name, ".*", r"^(?!rapidly\.enriched$).*", ".*"),
    ):
        done = rabbitmqctl(*args)
        if done.returncode != 0:
            pytest.skip(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()[:200]}")
    parts = urlsplit(amqp_url)
    url = f"amqp://{name}:{password}@{parts.hostname}:{parts.port or 5672}{parts.path or '/'}"
    yield name, url
    rabbitmqctl("delete_user", name)


def test_refused_records_are_requeued_until_the_downstream_accepts(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any, no_write_user: tuple[str, str]
) -> None:
    name, downstream = no_write_user
    worker = start_worker(amqp_url, DOWNSTREAM_BROKER_URL=downstream)
    events = [e["id"] for e in sim.dataset()["events"]][:12]
    app = producer(amqp_url)
    for event_id in events:
        send(app, event_id)

    # Refused while the permission is missing: not ready, nothing published, nothing dead.
    wait_for(lambda: not ready(worker)[0], 30, "readiness reflects the refusal")
    assert "downstream" in ready(worker)[1]
    time.sleep(3)
    assert drain(amqp_url, ALL_RECORDS, expect=1, timeout=0.5) == []
    assert queue_depth(amqp_url, DEAD_QUEUE) == 0
    logs = worker.log_records()
    assert not any(r.get("outcome") == "published" for r in logs)
    assert any("AccessRefused" in str(r.get("detail", "")) for r in logs)

    granted = rabbitmqctl("set_permissions", "-p", vhost_of(amqp_url), name, ".*", ".*", ".*")
    assert granted.returncode == 0, granted.stderr

    records = drain(amqp_url, ALL_RECORDS, expect=len(events), timeout=120, settle=3.0)
    counts = Counter(m.properties["message_id"] for m in records)
    assert set(counts) == set(events), "every event ends with its record: none lost"
    assert max(counts.values()) == 1, f"and exactly one each: {counts.most_common(3)}"
    wait_for(lambda: ready(worker)[0], 30, "ready again once records are confirmed")
    assert queue_depth(amqp_url, DEAD_QUEUE) == 0
    assert worker.alive()


def test_hostile_answers_never_become_records(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any
) -> None:
    template = {
        "timestamp": "2026-11-20T10:00:00.000000Z",
        "workspace_id": sim.dataset()["workspace_id"],
        "customer_id": None,
        "customer": None,
        "external_customer_id": None,
        "member_id": None,
        "external_member_id": None,
        "child_count": 0,
        "label": "x",
        "metadata": {},
    }
    long_name = "事件" * 43  # 86 CJK characters: "user." + 258 bytes
    ids = {k: str(uuid.uuid4()) for k in ("long", "empty_parent", "nil_parent", "wrong_id")}
    other = str(uuid.uuid4())

    def event(event_id: str, **fields: Any) -> dict[str, Any]:
        return {
            **template,
            "id": event_id,
            "source": "user",
            "name": "ok",
            "parent_id": None,
            **fields,
        }

    sim.admin(
        "/_sim/overrides",
        {
            "clear": True,
            "get": {
                ids["long"]: event(ids["long"], name=long_name),
                ids["empty_parent"]: event(ids["empty_parent"], parent_id=""),
                ids["nil_parent"]: event(ids["nil_parent"], parent_id=str(uuid.UUID(int=0))),
                ids["wrong_id"]: event(other),  # the API answers with another event
            },
        },
    )
    try:
        start_worker(amqp_url)
        app = producer(amqp_url)
        for event_id in ids.values():
            send(app, event_id)
        records = drain(amqp_url, ALL_RECORDS, expect=3, timeout=60, settle=2.0)
        dead = drain(amqp_url, DEAD_QUEUE, expect=1, timeout=60, settle=1.0)
    finally:
        sim.admin("/_sim/overrides", {"clear": True})

    by_id = {m.properties["message_id"]: m for m in records}
    assert set(by_id) == {ids["long"], ids["empty_parent"], ids["nil_parent"]}
    key = by_id[ids["long"]].delivery_info["routing_key"]
    assert len(key.encode()) <= 255 and ("user." + long_name).startswith(key)
    for which in ("empty_parent", "nil_parent"):
        hierarchy = json.loads(by_id[ids[which]].body)["hierarchy"]
        assert hierarchy["complete"] is False
        assert hierarchy["incomplete_reason"] == "parent_not_found"
    assert [json.loads(m.body)[0][0] for m in dead] == [ids["wrong_id"]]
    assert dead[0].headers["x-death-reason"] == "exhausted_retries"
    assert other not in {m.properties["message_id"] for m in records}


def test_wrong_api_url_keeps_messages_queued_and_not_ready(
    sim: SimulatorProcess, amqp_url: str, start_worker: Any
) -> None:
    worker = start_worker(amqp_url, RAPIDLY_API_URL=sim.url + "/v2")
    event_id = sim.dataset()["events"][0]["id"]
    send(producer(amqp_url), event_id)
    ok, reason = ready(worker)
    assert not ok and "RAPIDLY_API_URL" in reason
    time.sleep(8)  # several gate intervals (AUTH_RETRY_SECONDS=1)
    assert queue_depth(amqp_url, DEAD_QUEUE) == 0
    assert drain(amqp_url, ALL_RECORDS, expect=1, timeout=0.5) == []
    assert any("RAPIDLY_API_URL" in str(r.get("error", "")) for r in worker.log_records())
    worker.stop()
    assert queue_depth(amqp_url, EVENTS_QUEUE) == 1, "still queued, not dead-lettered"
