"""The API's answers are checked before they become a record (CONTRACT.md section 3)."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from pydantic import SecretStr

from tests.unit.fakeapi import BASE, TOKEN, FakeApi, make_event, new_id
from worker.enrichment import enrich_event
from worker.enrichment._record import routing_key_for
from worker.errors import ApiUnavailable, InvalidEventId, RetriesExhausted
from worker.rapidly import EventPage, EventStore, RapidlyClient, RetryPolicy, validate_event_id


def client_answering(body: bytes, **kwargs: object) -> RapidlyClient:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, content=body, headers={"content-type": "application/json"}
        )
    )
    return RapidlyClient(BASE, SecretStr(TOKEN), transport=transport, **kwargs)  # type: ignore[arg-type]


def list_body(events: list[dict[str, object]], **meta: object) -> bytes:
    return json.dumps(
        {"data": events, "meta": {"total": len(events), "page": 1, "pages": 1, **meta}}
    ).encode()


@pytest.mark.parametrize(
    "spelling",
    [
        "urn:uuid:{}",
        "{{{}}}",
        "nodash",
        " {} ",
        "{}\n",
    ],
)
def test_only_the_canonical_hyphenated_form_is_an_id(spelling: str) -> None:
    event_id = new_id()
    value = event_id.replace("-", "") if spelling == "nodash" else spelling.format(event_id)
    with pytest.raises(InvalidEventId):
        validate_event_id(value)
    assert validate_event_id(event_id.upper()) == event_id


def test_nil_and_other_versions_are_not_ids() -> None:
    for value in (str(uuid.UUID(int=0)), str(uuid.uuid1()), str(uuid.uuid4())[:35] + "g"):
        with pytest.raises(InvalidEventId):
            validate_event_id(value)


def test_get_answering_another_events_id_is_invalid() -> None:
    asked, other = new_id(), new_id()
    client = client_answering(json.dumps(make_event(other)).encode())
    with pytest.raises(ApiUnavailable, match="another event"):
        client.get_event(asked)


def test_children_of_another_parent_are_invalid() -> None:
    parent = new_id()
    client = client_answering(list_body([make_event(new_id(), new_id())]))
    with pytest.raises(ApiUnavailable, match="another parent"):
        client.list_children(parent)
    ok = client_answering(list_body([make_event(new_id(), parent.upper())]))
    assert len(ok.list_children(parent).events) == 1


@pytest.mark.parametrize(
    "meta",
    [{"total": -1}, {"total": 10**12}, {"pages": -3}, {"page": 0}, {"total": "7"}, {"total": 2.5}],
)
def test_absurd_list_counts_are_invalid(meta: dict[str, object]) -> None:
    with pytest.raises(ApiUnavailable):
        client_answering(list_body([], **meta)).list_children(new_id())
    with pytest.raises((ValueError, TypeError)):
        EventPage.from_api(json.loads(list_body([], **meta)))


def test_body_over_the_cap_is_not_read_whole() -> None:
    event_id = new_id()
    body = json.dumps(make_event(event_id, padding="x" * 5000)).encode()
    with pytest.raises(ApiUnavailable, match="over 1024 bytes"):
        client_answering(body, max_body_bytes=1024).get_event(event_id)
    assert client_answering(body, max_body_bytes=len(body)).get_event(event_id).id == event_id


def test_deeply_nested_body_is_an_invalid_response() -> None:
    event_id = new_id()
    nested = '{"id": "' + event_id + '", "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(ApiUnavailable, match="not a JSON object"):
        client_answering(nested.encode()).get_event(event_id)


def test_wrong_answers_are_retried_then_exhausted() -> None:
    asked = new_id()
    wrong = json.dumps(make_event(new_id())).encode()
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, content=list_body([]) if request.url.path == "/api/events/" else wrong
        )
    )
    client = RapidlyClient(BASE, SecretStr(TOKEN), transport=transport)
    store = EventStore(
        client, policy=RetryPolicy(max_attempts=3, sleep=lambda _: None), max_events=10
    )
    with pytest.raises(RetriesExhausted) as caught:
        enrich_event(asked, store, max_depth=10)
    assert caught.value.reason == "exhausted_retries"
    assert caught.value.attempts == 3


@pytest.mark.parametrize("parent", ["", "garbage", str(uuid.UUID(int=0)), "urn:uuid:" + new_id()])
def test_parent_id_that_is_not_a_uuid4_publishes_incomplete(
    api: FakeApi, store: EventStore, parent: str
) -> None:
    event = make_event(new_id(), parent)
    api.add(event)
    record = enrich_event(event["id"], store, max_depth=10)
    hierarchy = record.body["hierarchy"]
    assert hierarchy["complete"] is False
    assert hierarchy["incomplete_reason"] == "parent_not_found"
    assert hierarchy["ancestors"] == []
    gets = [r.url.path for r in api.requests if r.url.path != "/api/events/"]
    assert gets == [f"/api/events/{event['id']}"]  # no call for the parent


def test_routing_key_is_cut_at_a_character_boundary() -> None:
    key = routing_key_for("user", "事件" * 43)  # 86 CJK characters, 3 bytes each
    assert len(key.encode()) == 254  # 255 would split a character
    assert key == ("user." + "事件" * 43)[: len(key)]
    assert routing_key_for("system", "customer.created") == "system.customer.created"
    assert len(routing_key_for("user", "a" * 300).encode()) == 255
