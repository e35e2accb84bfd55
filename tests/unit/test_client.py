from __future__ import annotations

import email.utils
import time

import httpx
import pytest
from pydantic import SecretStr

from tests.unit.fakeapi import BASE, TOKEN, FakeApi, make_event, new_id
from worker.errors import (
    ApiUnavailable,
    ConfigurationError,
    EventNotYetVisible,
    InvalidEventId,
    RateLimited,
    UnexpectedResponse,
)
from worker.rapidly import EventPage, RapidlyClient, parse_retry_after, validate_event_id


def respond(response: httpx.Response):
    return lambda request: response


def test_get_returns_typed_event_keeping_unknown_fields(
    api: FakeApi, client: RapidlyClient
) -> None:
    event = make_event(new_id(), x_experimental={"a": 1}, label="Ünïcode 🎉")
    api.add(event)
    got = client.get_event(event["id"])
    assert got.id == event["id"]
    assert got.as_sent()["x_experimental"] == {"a": 1}
    assert got.as_sent()["label"] == "Ünïcode 🎉"
    assert api.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    "value",
    [
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
        "a8098c1a-f86e-11da-bd1a-00112444be1e",
        12345,
        None,
        "x" * 1_000_000,
        "",
    ],
)
def test_invalid_ids_are_rejected_before_any_call(
    api: FakeApi, client: RapidlyClient, value: object
) -> None:
    with pytest.raises(InvalidEventId):
        client.get_event(value)  # type: ignore[arg-type]
    assert api.requests == []


def test_invalid_id_message_is_bounded() -> None:
    with pytest.raises(InvalidEventId) as info:
        validate_event_id("y" * 1_000_000)
    assert len(str(info.value)) < 200


def test_uppercase_v4_is_canonicalised() -> None:
    event_id = new_id()
    assert validate_event_id(event_id.upper()) == event_id


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(401, json={"error": "invalid_token"}), ConfigurationError),
        (
            httpx.Response(401, json={"error": "Unauthorized", "detail": "Unauthorized"}),
            ConfigurationError,
        ),
        (httpx.Response(403, json={"error": "insufficient_scope"}), ConfigurationError),
        (httpx.Response(404, json={"error": "ResourceNotFound"}), EventNotYetVisible),
        (httpx.Response(422, json={"error": "RequestValidationError"}), InvalidEventId),
        (httpx.Response(429, headers={"Retry-After": "3"}), RateLimited),
        (httpx.Response(500, text="Internal Server Error"), ApiUnavailable),
        (httpx.Response(503, text=""), ApiUnavailable),
        (httpx.Response(200, text="<html>oops"), ApiUnavailable),
        (httpx.Response(200, json=[1, 2]), ApiUnavailable),
        (httpx.Response(200, json={"id": "no other fields"}), ApiUnavailable),
        (httpx.Response(418, text="teapot"), UnexpectedResponse),
    ],
)
def test_every_response_class_maps_to_one_error(
    api: FakeApi, client: RapidlyClient, response: httpx.Response, error: type
) -> None:
    api.script.append(respond(response))
    with pytest.raises(error) as info:
        client.get_event(new_id())
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)


def test_429_carries_retry_after_seconds(api: FakeApi, client: RapidlyClient) -> None:
    api.script.append(respond(httpx.Response(429, headers={"Retry-After": "7"})))
    with pytest.raises(RateLimited) as info:
        client.get_event(new_id())
    assert info.value.retry_after == 7


def test_retry_after_http_date_and_garbage() -> None:
    now = time.time()
    date = email.utils.formatdate(now + 12, usegmt=True)
    assert 10 <= parse_retry_after(date, now=now) <= 12
    assert parse_retry_after("soon") == 1.0
    assert parse_retry_after(None) == 1.0
    assert parse_retry_after("999999") == 300.0


def test_timeout_and_connection_errors_are_transient(api: FakeApi, client: RapidlyClient) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    api.script.extend([boom, refused])
    with pytest.raises(ApiUnavailable, match="timed out"):
        client.get_event(new_id())
    with pytest.raises(ApiUnavailable, match="ConnectError"):
        client.get_event(new_id())


def test_redirect_to_another_host_is_not_followed(api: FakeApi, client: RapidlyClient) -> None:
    event_id = new_id()
    api.script.append(
        respond(
            httpx.Response(307, headers={"Location": f"https://evil.test/api/events/{event_id}"})
        )
    )
    with pytest.raises(ConfigurationError, match="another origin"):
        client.get_event(event_id)
    assert [r.url.host for r in api.requests] == ["api.test"]


def test_same_origin_redirect_is_followed_once(api: FakeApi, client: RapidlyClient) -> None:
    event = make_event(new_id())
    api.add(event)
    api.script.append(
        respond(httpx.Response(307, headers={"Location": f"/api/events/{event['id']}"}))
    )
    assert client.get_event(event["id"]).id == event["id"]
    assert len(api.requests) == 2
    assert api.requests[1].headers["authorization"] == f"Bearer {TOKEN}"


def test_token_not_in_repr() -> None:
    c = RapidlyClient(BASE, SecretStr(TOKEN))
    try:
        assert TOKEN not in repr(c)
        assert TOKEN not in repr(c.__dict__)
    finally:
        c.close()


def test_list_accepts_both_shapes() -> None:
    e = make_event(new_id())
    a = EventPage.from_api(
        {
            "data": [{**e, "child_count": 4}],
            "meta": {"total": 1, "page": 1, "per_page": 10, "pages": 1},
        }
    )
    b = EventPage.from_api(
        {"items": [{**e, "child_count": 4}], "pagination": {"total_count": 1, "max_page": 1}}
    )
    assert a.total == b.total == 1
    assert a.events[0].child_count == b.events[0].child_count == 4
    assert a.events[0].as_get()["child_count"] == 0
    with pytest.raises(ValueError):
        EventPage.from_api({"results": []})


def test_list_children_asks_for_depth_one(api: FakeApi, client: RapidlyClient) -> None:
    parent = make_event(new_id())
    api.add(parent, make_event(new_id(), parent["id"]))
    page = client.list_children(parent["id"])
    assert page.total == 1
    params = api.requests[0].url.params
    assert params["parent_id"] == parent["id"]
    assert params["depth"] == "1"
    assert params["limit"] == "100"
