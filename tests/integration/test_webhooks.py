"""The webhook ingress end to end: the Procfile's web: line and worker: line as real processes,
the simulator over HTTP, real RabbitMQ and Redis. Every request is signed by the
``standardwebhooks`` library itself, as Rapidly's sender would sign it."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from standardwebhooks import Webhook as Signer

from devkit import (
    CUSTOMER_CREATED,
    DEAD_QUEUE,
    TOKEN,
    SimulatorProcess,
    WorkerGroup,
    WorkerProcess,
    drain,
    ensure_vhost,
    free_port,
    rabbitmqctl,
)
from tests.integration.harness import AMQP_URL, REDIS_STORE_URL

SECRET = "rapidly_whs_integration0123456789abcdef"
OLD_SECRET = "rapidly_whs_rotatedaway9876543210fedcba"
ROUTE = "/webhooks/rapidly"


@dataclass
class WebProcess(WorkerProcess):
    """The Procfile's ``web:`` line, unchanged, under ``bash -c``."""

    kind: str = "web"
    drop_env: tuple[str, ...] = ("RAPIDLY_API_TOKEN",)  # the web process must not need it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"web exited {self.proc.returncode}:\n{self.log_text()}")
            if get(self.url + "/healthz")[0] == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"web not up in {timeout}s:\n{self.log_text()[-3000:]}")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def post(web: WebProcess, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(
        web.url + ROUTE,
        data=body,
        method="POST",
        headers={"content-type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def signed(
    body: bytes,
    *,
    secret: str = SECRET,
    webhook_id: str | None = None,
    at: datetime | None = None,
) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(tz=UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Signer(secret.encode()).sign(webhook_id, at, body.decode()),
    }


def webhook_body(kind: str, customer: dict[str, Any]) -> bytes:
    return json.dumps(
        {"type": kind, "timestamp": datetime.now(tz=UTC).isoformat(), "data": customer}
    ).encode()


def api_get(sim: SimulatorProcess, path: str) -> Any:
    request = urllib.request.Request(sim.url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def customer_created_events(sim: SimulatorProcess, count: int) -> list[dict[str, Any]]:
    """System customer.created events of the dataset whose customer still exists, as GET
    returns them (the record's ``event``)."""
    data = sim.dataset()
    ids = [e["id"] for e in data["events"] if e["expected"]["is_customer_created"]]
    found = []
    for event_id in ids:
        event = api_get(sim, f"/api/events/{event_id}")
        if event["customer"] is not None:
            found.append(event)
        if len(found) == count:
            return found
    raise AssertionError("the dataset has too few customers with a customer.created event")


@pytest.fixture
def start_web(tmp_path: Path) -> Iterator[Any]:
    group = WorkerGroup(tmp_path, WebProcess)

    def start(broker: str, *, wait: bool = True, **extra: str) -> WebProcess:
        env = {
            "RAPIDLY_WEBHOOK_SECRET": SECRET,
            "PORT": str(free_port()),
            "BROKER_URL": broker,
            "LOG_FORMAT": "json",
            **extra,
        }
        return group.start(env, wait=wait)

    yield start
    group.stop_all(timeout=15)


def test_webhooks_become_customer_created_records(
    sim: SimulatorProcess, broker_url: str, start_worker: Any, start_web: Any
) -> None:
    worker = start_worker(broker_url, NOT_FOUND_WAIT_SECONDS="8")
    web = start_web(
        broker_url, RAPIDLY_WEBHOOK_SECRET=f"{SECRET} {OLD_SECRET}", REDIS_URL=REDIS_STORE_URL
    )
    first, rotated = customer_created_events(sim, 2)

    # Valid, then the sender's retries of the same webhook id: three 202, one message.
    body = webhook_body("customer.created", first["customer"])
    headers = signed(body)
    assert [post(web, body, headers) for _ in range(3)] == [202, 202, 202]
    # Signed with the other secret of a rotation.
    body2 = webhook_body("customer.created", rotated["customer"])
    assert post(web, body2, signed(body2, secret=OLD_SECRET)) == 202

    # Refused: nothing enqueued for any of them.
    stale = datetime.now(tz=UTC) - timedelta(minutes=6)
    big = b'{"type": "customer.created", "data": {"pad": "' + b"x" * (1 << 20) + b'"}}'
    unknown = json.dumps({"type": "order.paid", "data": {"id": "x"}}).encode()
    bad_id = webhook_body("customer.created", {"id": "cus_123"})
    assert post(web, body, {**signed(body), "webhook-signature": "v1,AAAA"}) == 401
    assert post(web, body, signed(body, at=stale)) == 401
    assert post(web, body, signed(body, secret="rapidly_whs_notours000000000000")) == 401
    assert post(web, body, {}) == 401
    assert post(web, b"not json", signed(b"not json")) == 400
    assert post(web, bad_id, signed(bad_id)) == 400
    assert post(web, big, signed(big)) == 413
    assert post(web, unknown, signed(unknown)) == 202

    # A customer whose system event lands after its webhook, and one whose never does.
    late_customer = str(uuid.uuid4())
    late = webhook_body("customer.created", {"id": late_customer, "email": "late@example.com"})
    assert post(web, late, signed(late)) == 202
    never = webhook_body("customer.created", {"id": str(uuid.uuid4())})
    assert post(web, never, signed(never)) == 202
    time.sleep(1.5)
    late_event = sim.admin(
        "/_sim/system_events", {"name": "customer.created", "customer_id": late_customer}
    )["event"]

    records = drain(broker_url, CUSTOMER_CREATED, expect=3, timeout=60, settle=2.0)
    by_id = {m.properties["message_id"]: json.loads(m.body) for m in records}
    assert len(records) == 3, [m.properties["message_id"] for m in records]
    assert set(by_id) == {first["id"], rotated["id"], late_event["id"]}
    assert by_id[first["id"]]["event"] == first  # exactly what GET returns
    assert by_id[first["id"]]["hierarchy"]["complete"] is True
    dead = drain(broker_url, DEAD_QUEUE, expect=1, timeout=30, settle=0.5)
    assert [m.headers["x-death-reason"] for m in dead] == ["event_not_found"]
    assert dead[0].headers["task"] == "events.enrich_customer"

    status, metrics = get(web.url + "/metrics")
    assert status == 200
    assert b'rapidly_webhooks_total{outcome="ignored"} 1.0' in metrics
    assert b'rapidly_webhooks_total{outcome="duplicate"} 2.0' in metrics
    assert b'rapidly_webhooks_total{outcome="unauthorized"} 4.0' in metrics
    assert get(web.url + "/readyz")[0] == 200

    text = web.log_text()
    for secret in (SECRET, OLD_SECRET):
        assert secret not in text
    for leaked in (first["customer"]["email"], "late@example.com", "not json", "xxxxxxxx"):
        assert leaked not in text
    finished = [r for r in web.log_records() if r.get("event") == "webhook.finished"]
    assert {r["webhook_id"] for r in finished if r["status"] == 202} >= {headers["webhook-id"]}
    assert worker.alive()


@pytest.mark.parametrize("kind", ["amqp", "redis"])
def test_broker_unreachable_is_503(tmp_path: Path, start_web: Any, kind: str) -> None:
    closed = free_port()
    url = (
        f"amqp://guest:guest@127.0.0.1:{closed}//"
        if kind == "amqp"
        else (f"redis://127.0.0.1:{closed}/0")
    )
    web = start_web(url)
    body = webhook_body("customer.created", {"id": str(uuid.uuid4())})
    headers = signed(body)
    started = time.monotonic()
    assert post(web, body, headers) == 503
    assert time.monotonic() - started < 3.0
    assert get(web.url + "/readyz")[0] == 503
    assert get(web.url + "/healthz")[0] == 200


def test_a_vhost_deleted_under_the_ingress_is_503_then_202_again(
    amqp_url: str, start_web: Any
) -> None:
    # This suite's own extra vhost, named after the one the tests use, never a sibling's.
    parts = urllib.parse.urlsplit(amqp_url)
    vhost = (parts.path[1:].strip("/") or "default") + "-down"
    down_url = urllib.parse.urlunsplit(parts._replace(path="/" + vhost))
    assert down_url.endswith("/" + vhost)
    if ensure_vhost(down_url) is None:
        pytest.skip("not a local RabbitMQ: the vhost cannot be deleted")
    try:
        web = start_web(down_url)
        body = webhook_body("customer.created", {"id": str(uuid.uuid4())})
        assert post(web, body, signed(body)) == 202  # the pool now holds a live connection
        assert rabbitmqctl("delete_vhost", vhost).returncode == 0
        retry = signed(body)
        assert post(web, body, retry) == 503
        ensure_vhost(down_url)
        assert post(web, body, retry) == 202  # not marked on the 503: the retry goes through
        with Connection(down_url) as conn:
            queued = conn.default_channel.queue_declare("rapidly.events", passive=True)
        assert queued.message_count == 1
    finally:
        rabbitmqctl("delete_vhost", vhost)


def test_start_up_and_shutdown(tmp_path: Path, start_web: Any) -> None:
    web = start_web(AMQP_URL, wait=False, RAPIDLY_WEBHOOK_SECRET="")
    assert web.proc is not None
    assert web.proc.wait(30) == 2
    lines = web.log_text().strip().splitlines()
    assert lines == [
        "rapidly-worker: invalid configuration: RAPIDLY_WEBHOOK_SECRET: required, not set"
    ]

    web = start_web(AMQP_URL)
    web.signal(signal.SIGTERM)
    assert web.proc is not None
    assert web.proc.wait(20) == 0
    assert "web.stopped" in web.log_text()
