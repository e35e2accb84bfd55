"""GET /api/events/{id}: bodies, the error order, headers, path quirks."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from simulator import SimulatorConfig

TOKEN = SimulatorConfig().token
NOSCOPE = SimulatorConfig().noscope_token

PLACEHOLDERS = {"x-ratelimit-limit": "0", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "0"}


def _assert_placeholders(response: httpx.Response) -> None:
    for name, value in PLACEHOLDERS.items():
        assert response.headers.get(name) == value, name
    assert uuid.UUID(response.headers["x-request-id"]).version == 4


def _some(sim, tag: str) -> str:
    return sim.dataset.ids_with_tag(tag)[0]


def test_get_returns_the_event_exactly_with_child_count_zero(sim, client):
    root = next(i for i in sim.dataset.ids_with_tag("tree") if sim.dataset.children.get(i))
    response = client.get(f"/api/events/{root}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == sim.dataset.events[root]
    assert body["child_count"] == 0
    assert sim.dataset.list_child_count[root] > 0
    _assert_placeholders(response)


def test_request_ids_differ(sim, client):
    event_id = _some(sim, "system")
    first = client.get(f"/api/events/{event_id}").headers["x-request-id"]
    second = client.get(f"/api/events/{event_id}").headers["x-request-id"]
    assert first != second


def test_unicode_is_sent_as_utf8_and_extra_fields_kept(sim, client):
    event_id = next(
        i
        for i in sim.dataset.ids_with_tag("unicode")
        if not sim.dataset.events[i]["label"].isascii()
    )
    response = client.get(f"/api/events/{event_id}")
    label = sim.dataset.events[event_id]["label"]
    assert label.encode() in response.content  # raw UTF-8, not \\u escapes
    assert response.json()["label"] == label
    extra = sim.dataset.ids_with_tag("extra_fields")
    for event_id in extra:
        assert client.get(f"/api/events/{event_id}").json() == sim.dataset.events[event_id]


def test_hard_and_soft_deleted_customers(sim, client):
    hard = client.get(f"/api/events/{_some(sim, 'hard_deleted_customer')}").json()
    assert hard["customer"] is None and hard["customer_id"] is not None
    soft = client.get(f"/api/events/{_some(sim, 'soft_deleted_customer')}").json()
    assert soft["customer"]["deleted_at"] is not None


INVALID_TOKEN_BODY = {"error": "invalid_token"}


@pytest.mark.parametrize("event_ref", ["valid", "bad-id", "unknown"])
def test_unknown_token_is_checked_first(sim, anon, event_ref):
    event_id = {
        "valid": _some(sim, "system"),
        "bad-id": "not-a-uuid",
        "unknown": sim.dataset.unknown_ids[0]["id"],
    }[event_ref]
    response = anon.get(f"/api/events/{event_id}", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "invalid_token" and body["error_description"]
    assert set(body) == {"error", "error_description"}
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    _assert_placeholders(response)


def test_expired_valid_token(sim, client):
    sim.update(token_valid=False)
    response = client.get(f"/api/events/{_some(sim, 'system')}")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    sim.update(token_valid=True)
    assert client.get(f"/api/events/{_some(sim, 'system')}").status_code == 200


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Token abc"])
def test_missing_token(sim, anon, header):
    headers = {"Authorization": header} if header is not None else {}
    response = anon.get("/api/events/not-a-uuid", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized", "detail": "Unauthorized"}
    _assert_placeholders(response)


def test_insufficient_scope_before_validation(sim, anon):
    response = anon.get("/api/events/not-a-uuid", headers={"Authorization": f"Bearer {NOSCOPE}"})
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "insufficient_scope" and body["error_description"]
    _assert_placeholders(response)


def test_422_bodies_for_every_invalid_id(sim, client):
    for entry in sim.dataset.invalid_ids:
        response = client.get(f"/api/events/{entry['id']}")
        assert response.status_code == 422, entry
        body = response.json()
        assert body["error"] == "RequestValidationError"
        (detail,) = body["detail"]
        assert detail["type"] == entry["detail_type"]
        assert detail["loc"] == ["path", "id"]
        assert detail["input"] == entry["id"]
        assert detail["msg"]
        _assert_placeholders(response)


def test_nil_and_v1_are_uuid_version_errors(sim, client):
    nil = client.get("/api/events/00000000-0000-0000-0000-000000000000").json()
    assert nil["detail"][0]["type"] == "uuid_version"
    v1 = client.get(f"/api/events/{uuid.uuid1()}").json()
    assert v1["detail"][0]["type"] == "uuid_version"
    assert client.get("/api/events/12345").json()["detail"][0]["type"] == "uuid_parsing"


def test_404_unknown_and_other_workspace(sim, client):
    for event_id in [sim.dataset.unknown_ids[0]["id"], *sim.dataset.other_events]:
        response = client.get(f"/api/events/{event_id}")
        assert response.status_code == 404
        assert response.json() == {"error": "ResourceNotFound", "detail": "Not found"}
        _assert_placeholders(response)


def test_other_uuid_spellings_are_accepted(sim, client):
    event_id = _some(sim, "system")
    for spelling in (event_id.upper(), event_id.replace("-", ""), "{" + event_id + "}"):
        response = client.get(f"/api/events/{spelling}")
        assert response.status_code == 200, spelling
        assert response.json()["id"] == event_id


def test_v1_paths_are_rewritten_with_deprecation(sim, client):
    event_id = _some(sim, "system")
    response = client.get(f"/v1/events/{event_id}")
    assert response.status_code == 200
    assert response.json() == sim.dataset.events[event_id]
    assert response.headers["deprecation"] == "true"
    assert "deprecation" not in client.get(f"/api/events/{event_id}").headers
    listed = client.get("/v1/events/", params={"limit": 3})
    assert listed.status_code == 200 and len(listed.json()["data"]) == 3
    assert listed.headers["deprecation"] == "true"


def test_events_without_slash_redirects_keeping_query(sim, client):
    response = client.get("/api/events?limit=5&page=2")
    assert response.status_code == 307
    assert response.headers["location"].endswith("/api/events/?limit=5&page=2")
    _assert_placeholders(response)
    followed = client.get("/api/events?limit=5&page=2", follow_redirects=True)
    assert followed.status_code == 200 and followed.json()["meta"]["page"] == 2


def test_unknown_route_and_method(sim, client):
    response = client.get("/api/nothing-here")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}
    assert client.post("/api/events/", json={}).status_code == 405


def test_head_matches_get_status(sim, client):
    event_id = _some(sim, "system")
    assert client.head(f"/api/events/{event_id}").status_code == 200
    assert client.head("/api/events/not-a-uuid").status_code == 422


def test_body_is_compact_json(sim, client):
    event_id = _some(sim, "system")
    raw = client.get(f"/api/events/{event_id}").content
    assert (
        raw
        == json.dumps(
            sim.dataset.events[event_id], ensure_ascii=False, separators=(",", ":")
        ).encode()
    )


def test_token_is_only_accepted_as_bearer(sim, anon):
    response = anon.get(
        f"/api/events/{_some(sim, 'system')}", headers={"Authorization": f"bearer {TOKEN}"}
    )
    assert response.status_code == 200
