"""GET /api/events/ (list): pagination, sorting, filters, hierarchy and child_count."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest


def _all_pages(client, **params) -> list[dict]:
    items: list[dict] = []
    page = 1
    while True:
        body = client.get("/api/events/", params={**params, "page": page, "limit": 100}).json()
        items.extend(body["data"])
        if not body["data"]:
            return items
        page += 1


def _ids(response) -> list[str]:
    return [e["id"] for e in response.json()["data"]]


def _ts(ds, event_id: str) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ds.timestamp_us[event_id])


def test_default_page(sim, client):
    response = client.get("/api/events/")
    assert response.status_code == 200
    body = response.json()
    total = len(sim.dataset.events)
    assert body["meta"] == {
        "total": total,
        "page": 1,
        "per_page": 10,
        "pages": math.ceil(total / 10),
    }
    assert len(body["data"]) == 10
    stamps = [sim.dataset.timestamp_us[e["id"]] for e in body["data"]]
    assert stamps == sorted(stamps, reverse=True)
    assert stamps[0] == max(sim.dataset.timestamp_us[i] for i in sim.dataset.events)


def test_ascending_sorting_and_invalid_sorting(sim, client):
    body = client.get("/api/events/", params={"sorting": "timestamp", "limit": 20}).json()
    stamps = [sim.dataset.timestamp_us[e["id"]] for e in body["data"]]
    assert stamps == sorted(stamps)
    assert stamps[0] == min(sim.dataset.timestamp_us[i] for i in sim.dataset.events)
    bad = client.get("/api/events/", params={"sorting": "name"})
    assert bad.status_code == 422
    detail = bad.json()["detail"][0]
    assert detail["type"] == "enum" and detail["loc"][:2] == ["query", "sorting"]


def test_limit_is_clamped_and_validated(sim, client):
    body = client.get("/api/events/", params={"limit": 500}).json()
    assert body["meta"]["per_page"] == 100 and len(body["data"]) == 100
    assert body["meta"]["pages"] == math.ceil(len(sim.dataset.events) / 100)
    for bad in ("0", "-3", "ten"):
        assert client.get("/api/events/", params={"limit": bad}).status_code == 422
    assert client.get("/api/events/", params={"page": 0}).status_code == 422


def test_page_past_the_end_reports_total_zero(sim, client):
    body = client.get("/api/events/", params={"page": 999, "limit": 50}).json()
    assert body == {"data": [], "meta": {"total": 0, "page": 999, "per_page": 50, "pages": 0}}


def test_every_visible_event_once_and_child_count_is_all_descendants(sim, client):
    items = _all_pages(client, sorting="timestamp")
    ids = [e["id"] for e in items]
    assert len(ids) == len(set(ids)) == len(sim.dataset.events)
    assert set(ids) == set(sim.dataset.events)
    for item in items:
        expected = dict(sim.dataset.events[item["id"]])
        expected["child_count"] = sim.dataset.list_child_count[item["id"]]
        assert item == expected
    chain = sim.dataset.ids_with_tag("chain_120")
    counts = {e["id"]: e["child_count"] for e in items}
    assert counts[chain[0]] == 119 and counts[chain[-1]] == 0


def test_parent_id_is_ignored_without_depth(sim, client):
    root = sim.dataset.ids_with_tag("chain_120")[0]
    body = client.get("/api/events/", params={"parent_id": root}).json()
    assert body["meta"]["total"] == len(sim.dataset.events)


def test_direct_children(sim, client):
    root = next(
        i for i in sim.dataset.ids_with_tag("tree") if len(sim.dataset.children.get(i, [])) >= 2
    )
    response = client.get("/api/events/", params={"parent_id": root, "depth": 1, "limit": 100})
    body = response.json()
    assert set(_ids(response)) == set(sim.dataset.children[root])
    assert root not in _ids(response)
    assert body["meta"]["total"] == len(sim.dataset.children[root])
    for item in body["data"]:
        assert item["child_count"] == sim.dataset.list_child_count[item["id"]]
    expected = sim.dataset.expected(root)["hierarchy"]
    assert body["meta"]["total"] == expected["child_count"]
    assert expected["descendant_count"] == body["meta"]["total"] + sum(
        e["child_count"] for e in body["data"]
    )


def test_descendants_down_to_depth(sim, client):
    chain = sim.dataset.ids_with_tag("chain_120")
    response = client.get("/api/events/", params={"parent_id": chain[10], "depth": 3})
    assert set(_ids(response)) == set(chain[11:14])
    assert (
        client.get("/api/events/", params={"parent_id": chain[10], "depth": 0}).json()["data"] == []
    )


def test_unknown_parent_gives_empty_list(sim, client):
    response = client.get(
        "/api/events/", params={"parent_id": sim.dataset.unknown_ids[0]["id"], "depth": 1}
    )
    assert response.status_code == 200
    assert response.json()["data"] == [] and response.json()["meta"]["total"] == 0


def test_children_under_a_cycle(sim, client):
    a, b = sim.dataset.ids_with_tag("cycle_2")
    response = client.get("/api/events/", params={"parent_id": a, "depth": 1})
    assert set(_ids(response)) == set(sim.dataset.children[a])
    assert b in _ids(response) and a not in _ids(response)
    (s,) = sim.dataset.ids_with_tag("self_parent")
    listed = _ids(client.get("/api/events/", params={"parent_id": s, "depth": 5}))
    assert s not in listed and len(listed) == 1


def test_depth_zero_lists_roots_only(sim, client):
    items = _all_pages(client, depth=0)
    roots = {i for i, e in sim.dataset.events.items() if e["parent_id"] is None}
    assert {e["id"] for e in items} == roots
    assert all(e["parent_id"] is None for e in items)


def test_depth_without_parent_lists_roots_and_descendants(sim, client):
    items = _all_pages(client, depth=1)
    roots = {i for i, e in sim.dataset.events.items() if e["parent_id"] is None}
    level1 = {i for i, e in sim.dataset.events.items() if e["parent_id"] in roots}
    assert {e["id"] for e in items} == roots | level1


@pytest.mark.parametrize(("depth", "kind"), [(6, "less_than_equal"), (-1, "greater_than_equal")])
def test_depth_out_of_range(sim, client, depth, kind):
    response = client.get("/api/events/", params={"depth": depth})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "RequestValidationError"
    assert body["detail"][0]["type"] == kind and body["detail"][0]["loc"] == ["query", "depth"]


def test_customer_lookup_finds_the_system_event(sim, client):
    ds = sim.dataset
    for event_id in ds.ids_with_tag("customer_created")[:5]:
        customer_id = ds.events[event_id]["customer_id"]
        response = client.get(
            "/api/events/",
            params={
                "name": "customer.created",
                "source": "system",
                "customer_id": customer_id,
                "depth": 0,
            },
        )
        assert _ids(response) == [event_id]
    # A customer that also has user events named customer.created.
    user_cc = next(
        i for i in ds.ids_with_tag("user_named_customer_created") if ds.events[i]["customer_id"]
    )
    customer_id = ds.events[user_cc]["customer_id"]
    both = _ids(
        client.get(
            "/api/events/",
            params={
                "name": "customer.created",
                "customer_id": customer_id,
            },
        )
    )
    assert user_cc in both
    only_system = _ids(
        client.get(
            "/api/events/",
            params={
                "name": "customer.created",
                "source": "system",
                "customer_id": customer_id,
                "depth": 0,
            },
        )
    )
    assert user_cc not in only_system
    assert all(ds.events[i]["source"] == "system" for i in only_system)


def test_customer_id_filter_includes_events_by_external_id(sim, client):
    ds = sim.dataset
    event_id = next(
        i for i, e in ds.events.items() if e["customer_id"] is None and e["customer"] is not None
    )
    customer_id = ds.events[event_id]["customer"]["id"]
    listed = _ids(client.get("/api/events/", params={"customer_id": customer_id, "limit": 100}))
    assert event_id in listed
    external = ds.events[event_id]["external_customer_id"]
    by_external = _ids(
        client.get("/api/events/", params={"external_customer_id": external, "limit": 100})
    )
    assert set(by_external) == set(listed)


def test_name_and_source_filters(sim, client):
    ds = sim.dataset
    names = ["workflow.started", "workflow.finished"]
    response = client.get("/api/events/", params=[("name", n) for n in names])
    assert {e["name"] for e in response.json()["data"]} == set(names)
    assert response.json()["meta"]["total"] == sum(
        1 for e in ds.events.values() if e["name"] in names
    )
    system = client.get("/api/events/", params={"source": "system", "limit": 1}).json()
    assert system["meta"]["total"] == len(ds.ids_with_tag("system"))
    assert client.get("/api/events/", params={"source": "robot"}).status_code == 422


def test_workspace_filter(sim, client):
    ds = sim.dataset
    mine = client.get("/api/events/", params={"workspace_id": ds.workspace_id}).json()
    assert mine["meta"]["total"] == len(ds.events)
    other = client.get("/api/events/", params={"workspace_id": ds.other_workspace_id}).json()
    assert other["data"] == [] and other["meta"]["total"] == 0


def test_timestamp_bounds_are_exclusive(sim, client):
    ds = sim.dataset
    event_id = ds.ids_with_tag("chain_12")[5]
    at = _ts(ds, event_id)
    tick = timedelta(microseconds=1)
    same = {i for i in ds.events if ds.timestamp_us[i] == ds.timestamp_us[event_id]}
    around = _ids(
        client.get(
            "/api/events/",
            params={
                "start_timestamp": (at - tick).isoformat(),
                "end_timestamp": (at + tick).isoformat(),
            },
        )
    )
    assert set(around) == same
    assert (
        client.get(
            "/api/events/",
            params={
                "start_timestamp": at.isoformat(),
                "end_timestamp": (at + tick).isoformat(),
            },
        ).json()["data"]
        == []
    )
    assert (
        client.get(
            "/api/events/",
            params={
                "start_timestamp": (at - tick).isoformat(),
                "end_timestamp": at.isoformat(),
            },
        ).json()["data"]
        == []
    )
    after = client.get("/api/events/", params={"start_timestamp": at.isoformat()}).json()
    assert after["meta"]["total"] == sum(
        1 for i in ds.events if ds.timestamp_us[i] > ds.timestamp_us[event_id]
    )
    zulu = client.get(
        "/api/events/",
        params={
            "end_timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    ).json()
    assert zulu["meta"]["total"] == sum(
        1 for i in ds.events if ds.timestamp_us[i] < ds.timestamp_us[event_id]
    )


def test_naive_or_bad_timestamps_are_422(sim, client):
    naive = client.get("/api/events/", params={"start_timestamp": "2025-03-04T00:00:00"})
    assert naive.status_code == 422
    assert naive.json()["detail"][0]["type"] == "timezone_aware"
    bad = client.get("/api/events/", params={"end_timestamp": "yesterday"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "end_timestamp"]


def test_metadata_filter(sim, client):
    ds = sim.dataset
    chain = ds.ids_with_tag("chain_12")
    assert _ids(
        client.get(
            "/api/events/",
            params={
                "metadata[step]": "3",
                "name": "workflow.step",
            },
        )
    ) == [chain[3]]
    either = _ids(
        client.get(
            "/api/events/",
            params=[
                ("metadata[step]", "3"),
                ("metadata[step]", "4"),
                ("name", "workflow.step"),
            ],
        )
    )
    assert set(either) == {chain[3], chain[4]}
    trial = client.get("/api/events/", params={"metadata[trial]": "false", "limit": 100}).json()
    assert trial["data"] and all(e["metadata"]["trial"] is False for e in trial["data"])


def test_invalid_uuid_filters_are_422(sim, client):
    response = client.get("/api/events/", params={"customer_id": "nope"})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["type"] == "uuid_parsing" and detail["loc"] == ["query", "customer_id"]
    nil = client.get(
        "/api/events/",
        params={
            "parent_id": "00000000-0000-0000-0000-000000000000",
            "depth": 1,
        },
    )
    assert nil.status_code == 422 and nil.json()["detail"][0]["type"] == "uuid_version"


def test_list_requires_auth(sim, anon):
    assert anon.get("/api/events/").status_code == 401
    assert anon.get("/api/events/", params={"depth": 9}).status_code == 401


def test_root_windows_by_time_match_the_unwindowed_list(sim, client):
    """Root windows (depth=0, ascending, start/end bounds) are answered from the roots' sorted
    timestamps; they must equal filtering the full root list by the same strict bounds."""
    import random

    ds = sim.dataset
    everything = [e["id"] for e in _all_pages(client, depth=0, sorting="timestamp")]
    stamps = sorted(ds.timestamp_us[i] for i in everything)
    assert len(everything) > 100  # a dataset with something to bisect
    rng = random.Random(7)
    picks = [stamps[0] - 1, stamps[0], stamps[-1], stamps[-1] + 1, stamps[len(stamps) // 2]]
    picks += [rng.choice(stamps) + rng.choice([-1, 0, 1, -1_000_000]) for _ in range(15)]

    def iso(us: int) -> str:
        return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat()

    for n, start in enumerate(picks):
        end = start + rng.choice([1, 5_000_000, 3_600_000_000]) if n % 2 else None
        params = {"depth": 0, "sorting": "timestamp", "start_timestamp": iso(start)}
        if end is not None:
            params["end_timestamp"] = iso(end)
        got = [e["id"] for e in _all_pages(client, **params)]
        want = [
            i
            for i in everything
            if ds.timestamp_us[i] > start and (end is None or ds.timestamp_us[i] < end)
        ]
        assert got == want, (start, end)
