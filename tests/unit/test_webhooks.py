"""The webhook ingress without servers: signature verification, body parsing, the task message,
settings, the handler's answers (aiohttp's test server, kombu's in-memory broker), and the
worker's side (finding the customer's system event with one list call)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer
from celery import Celery
from kombu import Connection
from standardwebhooks import Webhook as Signer

from tests.unit.fakeapi import FakeApi, make_event, new_id
from tests.unit.test_dedupe_and_service import FakePublisher, service_for
from worker.dedupe import LocalDedupeStore
from worker.errors import (
    CustomerEventNotFound,
    InvalidCustomerId,
    InvalidMessage,
    RetriesExhausted,
    SettingsError,
)
from worker.ingress import (
    MAX_BODY_BYTES,
    ROUTE,
    Enqueuer,
    Ingress,
    LocalSeen,
    NotAWebhook,
    Unauthorized,
    WebhookVerifier,
    load_ingress_settings,
    parse,
)
from worker.publishing import EVENTS_QUEUE
from worker.rapidly import EventStore

SECRET = "rapidly_whs_unit0123456789abcdef"
OTHER = "rapidly_whs_other9876543210fedcba"


def signed(
    body: bytes | str,
    *,
    secret: str = SECRET,
    webhook_id: str | None = None,
    at: datetime | None = None,
) -> dict[str, str]:
    """Headers as Rapidly sends them, signed by the reference library itself."""
    text = body.decode() if isinstance(body, bytes) else body
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(tz=UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Signer(secret.encode()).sign(webhook_id, at, text),
    }


def customer_body(kind: str = "customer.created", customer_id: str | None = None) -> bytes:
    data = {"id": customer_id or str(uuid.uuid4()), "email": "a@example.com", "metadata": {}}
    return json.dumps({"type": kind, "timestamp": "2026-11-30T10:00:00Z", "data": data}).encode()


# --- verification


def test_a_signature_keyed_with_the_whole_secret_is_accepted() -> None:
    body = customer_body()
    headers = signed(body)
    assert WebhookVerifier([SECRET]).verify(body, headers) == headers["webhook-id"]


def test_the_key_is_the_whole_secret_prefix_included() -> None:
    body = customer_body()
    without_prefix = signed(body, secret=SECRET.removeprefix("rapidly_whs_"))
    with pytest.raises(Unauthorized):
        WebhookVerifier([SECRET]).verify(body, without_prefix)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, b: ({**h, "webhook-signature": "v1,AAAA"}, b), id="bad signature"),
        pytest.param(lambda h, b: (h, b + b" "), id="body changed"),
        pytest.param(lambda h, b: ({**h, "webhook-id": "msg_other"}, b), id="id changed"),
        pytest.param(lambda h, b: ({**h, "webhook-signature": "v1"}, b), id="malformed"),
        pytest.param(lambda h, b: ({**h, "webhook-signature": "v1,!!!"}, b), id="not base64"),
        pytest.param(lambda h, b: ({**h, "webhook-signature": "v2,AAAA"}, b), id="other version"),
        pytest.param(lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), id="bad timestamp"),
        pytest.param(
            lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
            id="no signature",
        ),
        pytest.param(lambda h, b: ({}, b), id="no headers"),
        pytest.param(lambda h, b: (h, b"\xff\xfe"), id="not UTF-8"),
    ],
)
def test_anything_but_the_signed_request_is_unauthorized(tamper: Any) -> None:
    body = customer_body()
    headers, body = tamper(signed(body), body)
    with pytest.raises(Unauthorized):
        WebhookVerifier([SECRET]).verify(body, headers)


@pytest.mark.parametrize("minutes", [-6, 6])
def test_a_timestamp_over_five_minutes_off_is_unauthorized(minutes: int) -> None:
    body = customer_body()
    headers = signed(body, at=datetime.now(tz=UTC) + timedelta(minutes=minutes))
    with pytest.raises(Unauthorized, match="too"):
        WebhookVerifier([SECRET]).verify(body, headers)


def test_within_the_tolerance_is_accepted() -> None:
    body = customer_body()
    headers = signed(body, at=datetime.now(tz=UTC) - timedelta(minutes=4))
    WebhookVerifier([SECRET]).verify(body, headers)


def test_during_a_rotation_either_secret_is_accepted_and_no_other() -> None:
    verifier = WebhookVerifier([OTHER, SECRET])
    body = customer_body()
    verifier.verify(body, signed(body, secret=SECRET))
    verifier.verify(body, signed(body, secret=OTHER))
    with pytest.raises(Unauthorized):
        verifier.verify(body, signed(body, secret="rapidly_whs_neither0000000000"))
    assert SECRET not in repr(verifier)


# --- the body


def test_a_customer_webhook_parses_to_its_type_and_canonical_customer_id() -> None:
    customer_id = str(uuid.uuid4())
    webhook = parse("msg_1", customer_body("customer.updated", customer_id.upper()))
    assert (webhook.type, webhook.customer_id, webhook.is_customer_event) == (
        "customer.updated",
        customer_id,
        True,
    )


def test_an_unknown_type_parses_without_a_customer() -> None:
    webhook = parse("msg_1", json.dumps({"type": "order.paid", "data": {"id": 7}}).encode())
    assert (webhook.type, webhook.customer_id, webhook.is_customer_event) == (
        "order.paid",
        None,
        False,
    )


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"data": {"id": "7a9e4ed6-2b1f-4a5a-9d0e-0e6a0f1d2c3b"}}',
        b'{"type": "customer.created"}',
        b'{"type": "customer.created", "data": []}',
        b'{"type": "customer.created", "data": {"id": "cus_123"}}',
        b'{"type": "customer.created", "data": {}}',
        b'{"type": 5, "data": {}}',
    ],
)
def test_not_a_webhook_body(body: bytes) -> None:
    with pytest.raises(NotAWebhook):
        parse("msg_1", body)


# --- the task message


def test_the_task_message_is_what_send_task_sends() -> None:
    args = ["customer.created", str(uuid.uuid4())]
    producer = Celery(broker="memory://")
    producer.send_task("events.enrich_customer", args=args, queue="rapidly.events")
    enqueuer = Enqueuer("memory://", publishers=1)
    try:
        asyncio.run(enqueuer.enqueue(*args))
    finally:
        enqueuer.close()
    with Connection("memory://") as conn:
        queue = EVENTS_QUEUE.bind(conn.default_channel)
        theirs, ours = queue.get(no_ack=True), queue.get(no_ack=True)
    assert theirs is not None and ours is not None
    varying = {"id", "root_id", "origin"}
    assert {k: v for k, v in ours.headers.items() if k not in varying} == {
        k: v for k, v in theirs.headers.items() if k not in varying
    }
    assert ours.headers["root_id"] == ours.headers["id"]
    assert json.loads(ours.body) == json.loads(theirs.body)
    assert json.loads(ours.body)[0] == args
    assert (ours.content_type, ours.content_encoding) == ("application/json", "utf-8")
    assert ours.properties["correlation_id"] == ours.headers["id"]
    assert ours.properties["delivery_mode"] == theirs.properties["delivery_mode"] == 2
    # Through the queue's own direct exchange rather than the default one: the same queue.
    assert ours.delivery_info["routing_key"] == theirs.delivery_info["routing_key"]


# --- settings


def test_settings_need_the_secret_but_no_api_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAPIDLY_API_TOKEN", raising=False)
    monkeypatch.delenv("RAPIDLY_WEBHOOK_SECRET", raising=False)
    with pytest.raises(SettingsError, match="RAPIDLY_WEBHOOK_SECRET: required"):
        load_ingress_settings()
    monkeypatch.setenv("RAPIDLY_WEBHOOK_SECRET", f"  {SECRET}   {OTHER} ")
    settings = load_ingress_settings()
    assert settings.secrets == [SECRET, OTHER]
    assert settings.port == 8000
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PORT", "http"), ("BROKER_URL", "http://x"), ("REDIS_URL", "mysql://x")],
)
def test_a_wrong_setting_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("RAPIDLY_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"^invalid configuration: {variable}: ") as info:
        load_ingress_settings()
    assert SECRET not in str(info.value)


# --- the handler, in process (kombu's in-memory broker)


class BrokenEnqueuer(Enqueuer):
    async def enqueue(self, event_name: str, customer_id: str) -> str:
        from worker.ingress import BrokerUnavailable

        raise BrokerUnavailable("connection refused")


def _purge_memory() -> None:
    with Connection("memory://") as conn:
        EVENTS_QUEUE.bind(conn.default_channel).declare()
        EVENTS_QUEUE.bind(conn.default_channel).purge()


def _queued() -> list[Any]:
    got = []
    with Connection("memory://") as conn:
        queue = EVENTS_QUEUE.bind(conn.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            got.append(message)
    return got


def run_ingress(enqueuer_cls: type[Enqueuer], requests: list[tuple[bytes, dict[str, str]]]) -> Any:
    async def go() -> list[tuple[int, dict[str, Any]]]:
        ingress = Ingress(
            WebhookVerifier([SECRET]), enqueuer_cls("memory://", publishers=2), LocalSeen(60)
        )
        async with TestClient(TestServer(ingress.application())) as client:
            answers = []
            for body, headers in requests:
                response = await client.post(ROUTE, data=body, headers=headers)
                answers.append((response.status, await response.json()))
            return answers

    return asyncio.run(go())


def test_handler_answers_and_enqueues_once_per_webhook_id() -> None:
    _purge_memory()
    body = customer_body()
    headers = signed(body)
    unknown = json.dumps({"type": "order.paid", "data": {}}).encode()
    too_big = b"{" + b" " * MAX_BODY_BYTES + b"}"
    answers = run_ingress(
        Enqueuer,
        [
            (body, headers),
            (body, headers),
            (body, headers),
            (body, {**headers, "webhook-signature": "v1,AAAA"}),
            (b"nope", signed(b"nope")),
            (unknown, signed(unknown)),
            (too_big, signed(too_big)),
        ],
    )
    assert [status for status, _ in answers] == [202, 202, 202, 401, 400, 202, 413]
    assert [a["status"] for _, a in answers[:3]] == ["accepted", "duplicate", "duplicate"]
    assert answers[5][1]["status"] == "ignored"
    queued = _queued()
    assert len(queued) == 1
    assert json.loads(queued[0].body)[0] == ["customer.created", json.loads(body)["data"]["id"]]


def test_broker_down_is_503_and_the_retry_is_not_a_duplicate() -> None:
    _purge_memory()
    body = customer_body()
    headers = signed(body)
    assert [s for s, _ in run_ingress(BrokenEnqueuer, [(body, headers)])] == [503]
    # The id was not marked: the sender's retry, once the broker is back, is enqueued.
    assert [s for s, _ in run_ingress(Enqueuer, [(body, headers)])] == [202]
    assert len(_queued()) == 1


# --- the worker's side: the system event behind a webhook


def system_event(customer_id: str, **extra: Any) -> dict[str, Any]:
    return make_event(
        new_id(), name="customer.created", source="system", customer_id=customer_id, **extra
    )


def answer_system_list(api: FakeApi, found: list[dict[str, Any]], times: int = 1) -> None:
    def respond(request: httpx.Request) -> httpx.Response | None:
        params = request.url.params
        if params.get("customer_id") is None:
            return None
        assert (params["source"], params["depth"], params["sorting"], params["limit"]) == (
            "system",
            "0",
            "-timestamp",
            "1",
        )
        data = [{**e, "child_count": 0} for e in found]
        meta = {"total": len(data), "page": 1, "per_page": 1, "pages": len(data)}
        return httpx.Response(200, json={"data": data, "meta": meta})

    api.script.extend([respond] * times)


def test_the_system_event_costs_one_list_call_and_no_get(api: FakeApi, store: EventStore) -> None:
    customer_id = new_id()
    event = system_event(customer_id)
    api.add(event)
    answer_system_list(api, [event])
    dedupe = LocalDedupeStore(ttl=60, lease=30)
    publisher = FakePublisher(dedupe)
    service = service_for(store, dedupe, publisher)
    outcome = service.process_customer_event("customer.created", customer_id)
    assert outcome.outcome == "published"
    assert api.calls == {"scripted": 1}  # the list call only: no GET, no children listing
    (record,) = publisher.published
    assert record.body["event"] == {**event, "child_count": 0}
    assert record.routing_key == "system.customer.created"
    # The same webhook again (or events.enrich of that id): one record.
    answer_system_list(api, [event])
    assert service.process_customer_event("customer.created", customer_id).outcome == "duplicate"
    assert service.process(event["id"]).outcome == "duplicate"
    assert len(publisher.published) == 1


def test_a_system_event_not_listed_yet_is_retried_then_not_found(
    api: FakeApi, store: EventStore, sleeps: list[float]
) -> None:
    customer_id = new_id()
    event = system_event(customer_id)
    api.add(event)
    answer_system_list(api, [], times=2)
    answer_system_list(api, [event])
    assert store.system_event("customer.created", customer_id).id == event["id"]
    assert len(sleeps) == 2

    answer_system_list(api, [], times=100)
    with pytest.raises(CustomerEventNotFound) as info:
        store.system_event("customer.updated", customer_id)
    assert info.value.reason == "event_not_found"
    assert sum(sleeps[2:]) == pytest.approx(3.0)  # the store's not-found wait (fixture: 3 s)


def test_another_event_in_the_answer_never_becomes_a_record(
    api: FakeApi, store: EventStore
) -> None:
    customer_id = new_id()
    answer_system_list(api, [system_event(new_id())], times=100)
    with pytest.raises(RetriesExhausted) as info:
        store.system_event("customer.created", customer_id)
    assert info.value.reason == "exhausted_retries"


@pytest.mark.parametrize(
    ("name", "customer_id", "error"),
    [
        ("customer.created", "cus_123", InvalidCustomerId),
        ("customer.created", None, InvalidCustomerId),
        ("order.paid", str(uuid.uuid4()), InvalidMessage),
    ],
)
def test_bad_task_arguments_are_permanent_before_any_call(
    api: FakeApi, store: EventStore, name: str, customer_id: Any, error: type[Exception]
) -> None:
    dedupe = LocalDedupeStore(ttl=60, lease=30)
    service = service_for(store, dedupe, FakePublisher(dedupe))
    with pytest.raises(error):
        service.process_customer_event(name, customer_id)
    assert not api.requests
