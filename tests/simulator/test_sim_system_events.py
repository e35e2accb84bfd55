"""The list call the webhook worker makes, and the admin call that adds a late system event."""

from __future__ import annotations

import uuid

import httpx

from simulator import SimulatorHandle


def newest(client: httpx.Client, name: str, customer_id: str) -> list[dict]:
    params = {
        "name": name,
        "source": "system",
        "customer_id": customer_id,
        "depth": 0,
        "sorting": "-timestamp",
        "limit": 1,
    }
    response = client.get("/api/events/", params=params)
    assert response.status_code == 200
    return response.json()["data"]


def test_a_dataset_customer_has_its_system_event_listed(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    events = sim.dataset.events.values()
    system = [e for e in events if e["source"] == "system" and e["name"] == "customer.created"]
    user_named_alike = [
        e for e in events if e["source"] == "user" and e["name"] == "customer.created"
    ]
    assert system and user_named_alike  # the filter on source matters in this dataset
    for event in system[:5]:
        (found,) = newest(client, "customer.created", event["customer_id"])
        assert found["id"] == event["id"]
        assert found["child_count"] == sim.dataset.list_child_count[event["id"]]


def test_a_late_system_event_is_listed_and_fetched_from_then_on(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    customer_id = str(uuid.uuid4())
    assert newest(client, "customer.created", customer_id) == []
    response = client.post(
        "/_sim/system_events", json={"name": "customer.created", "customer_id": customer_id}
    )
    assert response.status_code == 200
    event = response.json()["event"]
    assert (event["source"], event["name"], event["customer_id"], event["parent_id"]) == (
        "system",
        "customer.created",
        customer_id,
        None,
    )
    (found,) = newest(client, "customer.created", customer_id)
    assert found == event
    assert client.get(f"/api/events/{event['id']}").json() == event
    assert newest(client, "customer.updated", customer_id) == []
    # Newer events of the same customer come first.
    later = sim.add_system_event("customer.created", customer_id)
    assert newest(client, "customer.created", customer_id)[0]["id"] == later["id"]
    assert client.post("/_sim/system_events", json={"name": "order.paid"}).status_code == 400
