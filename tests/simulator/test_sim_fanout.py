"""The ``fanout`` dataset: one wide parent whose children the server lists in windows."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx

from simulator import build_dataset, start_in_thread


def test_one_parent_with_the_children_in_time_order() -> None:
    ds = build_dataset("fanout", 7, 1000)
    assert ds.events.keys() == build_dataset("fanout", 7, 1000).events.keys()  # deterministic
    (parent,) = ds.ids_with_tag("fanout_parent")
    (root,) = ds.ids_with_tag("fanout_root")
    children = ds.ids_with_tag("fanout_child")
    assert len(children) == 1000
    assert all(ds.parent_of[c] == parent for c in children)
    assert ds.parent_of[parent] == root
    stamps = sorted(ds.timestamp_us[c] for c in children)
    assert len(set(stamps)) == 1000  # distinct microseconds: windows never split a tie
    assert 590 * 10**6 < stamps[-1] - stamps[0] <= 600 * 10**6
    h = ds.expected(parent)["hierarchy"]
    assert (h["child_count"], h["descendant_count"]) == (1000, 1002)  # two have a grandchild
    assert ds.expected(children[0])["hierarchy"]["ancestors"] == [root, parent]


def test_a_window_of_the_parents_children_from_a_timestamp() -> None:
    ds = build_dataset("fanout", 7, 300)
    (parent,) = ds.ids_with_tag("fanout_parent")
    children = sorted(ds.ids_with_tag("fanout_child"), key=ds.timestamp_us.__getitem__)
    with start_in_thread(dataset=ds, port=0) as sim:
        at = ds.events[children[150]]["timestamp"]
        params = {"parent_id": parent, "depth": 1, "sorting": "timestamp", "limit": 100}
        headers = {"Authorization": f"Bearer {sim.config.token}"}
        whole = httpx.get(f"{sim.url}/api/events/", params={**params, "limit": 1}, headers=headers)
        assert whole.json()["meta"]["total"] == 300
        # One microsecond before the child: the start is exclusive.
        before = (datetime.fromisoformat(at) - timedelta(microseconds=1)).isoformat()
        page = httpx.get(
            f"{sim.url}/api/events/",
            params={**params, "start_timestamp": before.replace("+00:00", "Z")},
            headers=headers,
        ).json()
        assert [e["id"] for e in page["data"]] == children[150:250]
