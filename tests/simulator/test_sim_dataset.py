"""The datasets: determinism, the nasty cases, and the expected enrichment."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import UUID4, TypeAdapter, ValidationError

from simulator import build_dataset, classify_uuid4, format_timestamp
from simulator._dataset import EVENT_KEYS, reach_counts


@pytest.fixture(scope="module")
def ds():
    return build_dataset("default", 42)


@pytest.fixture(scope="module")
def bench():
    return build_dataset("bench", 42, 2000)


def _brute_descendants(children: dict[str, list[str]], node: str) -> set[str]:
    seen: set[str] = set()
    stack = [node]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in seen and child != node:
                seen.add(child)
                stack.append(child)
    return seen


def test_same_seed_same_dataset_and_other_seed_differs(ds):
    again = build_dataset("default", 42)
    assert list(again.events) == list(ds.events)
    assert again.events == ds.events
    assert again.invalid_ids == ds.invalid_ids
    assert again.unknown_ids == ds.unknown_ids
    other = build_dataset("default", 43)
    assert not set(other.events) & set(ds.events)


def test_default_dataset_size_and_tags(ds):
    assert 250 <= len(ds) <= 600
    tags = ds.all_tags()
    for tag in (
        "system",
        "customer_created",
        "customer_updated",
        "customer_deleted",
        "user_named_customer_created",
        "chain",
        "chain_12",
        "chain_7",
        "chain_120",
        "cycle",
        "cycle_2",
        "self_parent",
        "cycle_child",
        "deep",
        "cross_workspace_parent",
        "missing_parent",
        "hard_deleted_customer",
        "soft_deleted_customer",
        "unicode",
        "extra_fields",
        "tree",
        "max_depth",
        "same_timestamp",
    ):
        assert tags.get(tag, 0) > 0, tag
    assert 1 <= len(ds.other_events) <= 10
    assert all(e["workspace_id"] == ds.other_workspace_id for e in ds.other_events.values())


def test_every_event_has_every_key_and_valid_ids(ds):
    for event_id, event in ds.all_events.items():
        assert list(event)[: len(EVENT_KEYS)] == list(EVENT_KEYS)
        assert event["child_count"] == 0
        assert uuid.UUID(event_id).version == 4
        assert event["timestamp"].endswith("Z")
        if event["source"] == "system":
            assert event["parent_id"] is None
            assert event["label"] in ("Customer Created", "Customer Updated", "Customer Deleted")
            assert set(event["metadata"]) >= {
                "customer_id",
                "customer_email",
                "customer_name",
                "customer_external_id",
            }
            assert ("updated_fields" in event["metadata"]) == (event["name"] == "customer.updated")


def test_customer_variants(ds):
    hard = ds.ids_with_tag("hard_deleted_customer")
    assert all(ds.events[i]["customer"] is None for i in hard)
    assert any(ds.events[i]["customer_id"] for i in hard)
    soft = ds.ids_with_tag("soft_deleted_customer")
    assert all(ds.events[i]["customer"]["deleted_at"] for i in soft)
    customers = [e["customer"] for e in ds.events.values() if e["customer"]]
    assert {c["type"] for c in customers} == {"individual", "team", None}
    assert any(c["billing_address"] is None for c in customers)
    assert any(c["billing_address"] and c["billing_address"]["line2"] is None for c in customers)
    # The live customer diverges from the creation snapshot after an update.
    diverged = [
        e
        for e in ds.events.values()
        if e["name"] == "customer.created"
        and e["source"] == "system"
        and e["customer"]
        and (e["customer"]["email"], e["customer"]["name"])
        != (e["metadata"]["customer_email"], e["metadata"]["customer_name"])
    ]
    assert diverged


def test_timestamps_format_and_microseconds(ds):
    assert format_timestamp(1_700_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert format_timestamp(1_700_000_000_000_123) == "2023-11-14T22:13:20.000123Z"
    stamps = [e["timestamp"] for e in ds.events.values()]
    assert any("." in s for s in stamps)
    assert any("." not in s for s in stamps)
    span = max(ds.timestamp_us.values()) - min(ds.timestamp_us.values())
    assert span > 2 * 86_400 * 1_000_000


def test_unicode_and_extra_fields(ds):
    assert any(not ds.events[i]["label"].isascii() for i in ds.ids_with_tag("unicode"))
    extra = ds.ids_with_tag("extra_fields")
    assert any(ds.events[i].get("x_experimental") == {"a": 1} for i in extra)
    assert all(set(ds.events[i]) - set(EVENT_KEYS) for i in extra)


def test_reach_counts_match_brute_force(ds):
    for event_id in ds.all_events:
        assert ds.list_child_count[event_id] == len(_brute_descendants(ds.children, event_id))


def test_reach_counts_small_graphs():
    graph = {
        "a": "b",
        "b": "a",
        "c": "a",
        "d": "c",
        "s": "s",
        "t": "s",
        "r": None,
        "x": "r",
        "o": "missing",
    }
    counts = reach_counts(graph)
    assert counts == {"a": 3, "b": 3, "c": 1, "d": 0, "s": 1, "t": 0, "r": 1, "x": 0, "o": 0}


def test_expected_two_cycle(ds):
    a, b = ds.ids_with_tag("cycle_2")
    assert ds.events[a]["parent_id"] == b and ds.events[b]["parent_id"] == a
    h = ds.expected(a)["hierarchy"]
    assert h["ancestors"] == [b]
    assert h["root_id"] == b
    assert h["depth"] == 1
    assert h["complete"] is False and h["incomplete_reason"] == "cycle"
    child, grandchild = ds.ids_with_tag("cycle_child")[:2]
    hc = ds.expected(grandchild)["hierarchy"]
    assert hc["ancestors"] == [b, a, child]
    assert hc["incomplete_reason"] == "cycle"
    # a's direct children: b and the child hanging under the cycle.
    assert h["child_count"] == 2
    # CONTRACT formula: direct children + their list child_count (b reaches a, child,
    # grandchild: 3; child reaches grandchild: 1).
    assert h["descendant_count"] == (1 + 3) + (1 + 1)


def test_expected_self_parent(ds):
    (s,) = ds.ids_with_tag("self_parent")
    assert ds.events[s]["parent_id"] == s
    h = ds.expected(s)["hierarchy"]
    assert h == {
        "root_id": s,
        "depth": 0,
        "ancestors": [],
        "complete": False,
        "incomplete_reason": "cycle",
        "child_count": 1,
        "descendant_count": 1,
    }


def test_expected_chain_of_120_hits_max_depth(ds):
    chain = ds.ids_with_tag("chain_120")
    assert len(chain) == 120
    assert ds.events[chain[0]]["parent_id"] is None
    leaf = ds.expected(chain[-1])["hierarchy"]
    assert leaf["complete"] is False and leaf["incomplete_reason"] == "max_depth"
    assert leaf["depth"] == 100
    assert leaf["ancestors"] == chain[19:119]
    assert leaf["root_id"] == chain[19]
    exactly_cap = ds.expected(chain[100])["hierarchy"]
    assert exactly_cap["complete"] is True and exactly_cap["depth"] == 100
    assert exactly_cap["root_id"] == chain[0]
    over_cap = ds.expected(chain[101])["hierarchy"]
    assert over_cap["incomplete_reason"] == "max_depth"
    # A bigger cap completes the walk.
    big = ds.expected(chain[-1], max_depth=200)["hierarchy"]
    assert big["complete"] is True and big["depth"] == 119 and big["root_id"] == chain[0]
    root = ds.expected(chain[0])["hierarchy"]
    assert root["child_count"] == 1 and root["descendant_count"] == 119


def test_expected_cross_workspace_parent(ds):
    crossing, row = ds.ids_with_tag("cross_workspace_parent")
    parent = ds.events[crossing]["parent_id"]
    assert parent in ds.other_events and parent not in ds.events
    h = ds.expected(crossing)["hierarchy"]
    assert h["ancestors"] == [] and h["root_id"] == crossing
    assert h["incomplete_reason"] == "parent_not_found" and h["complete"] is False
    h2 = ds.expected(row)["hierarchy"]
    assert h2["ancestors"] == [crossing] and h2["incomplete_reason"] == "parent_not_found"
    with pytest.raises(KeyError):
        ds.expected(parent)


def test_expected_tree_child_vs_descendant_count(ds):
    trees = [
        i
        for i in ds.ids_with_tag("tree")
        if ds.events[i]["source"] == "system"
        and ds.expected(i)["hierarchy"]["descendant_count"]
        > ds.expected(i)["hierarchy"]["child_count"]
    ]
    assert trees
    for root in trees:
        exp = ds.expected(root)
        h = exp["hierarchy"]
        assert exp["routing_key"] == "system.customer.created"
        assert exp["is_customer_created"] is True
        assert h["complete"] is True and h["ancestors"] == [] and h["root_id"] == root
        assert h["child_count"] == len(ds.children[root])
        assert h["descendant_count"] == len(_brute_descendants(ds.children, root))
    grandchild = next(
        i for i in ds.ids_with_tag("tree") if ds.expected(i)["hierarchy"]["depth"] == 2
    )
    h = ds.expected(grandchild)["hierarchy"]
    parent = ds.events[grandchild]["parent_id"]
    assert h["ancestors"] == [ds.events[parent]["parent_id"], parent]
    assert h["complete"] is True


def test_expected_user_named_customer_created(ds):
    for event_id in ds.ids_with_tag("user_named_customer_created"):
        exp = ds.expected(event_id)
        assert exp["routing_key"] == "user.customer.created"
        assert exp["is_customer_created"] is False


def test_chains_share_ancestors(ds):
    chain12 = ds.ids_with_tag("chain_12")
    chain7 = ds.ids_with_tag("chain_7")
    assert len(chain12) == 12 and len(chain7) == 7
    shared = ds.ids_with_tag("shared_ancestor")
    assert shared == chain12[:3]
    leaf7 = ds.expected(chain7[-1])["hierarchy"]
    assert leaf7["depth"] == 6 and leaf7["ancestors"][:3] == chain12[:3]
    assert ds.expected(chain12[-1])["hierarchy"]["depth"] == 11


def test_expected_is_a_copy(ds):
    event_id = ds.ids_with_tag("chain_12")[-1]
    first = ds.expected(event_id)
    first["hierarchy"]["ancestors"].clear()
    assert (
        ds.expected(event_id)["hierarchy"]["depth"]
        == len(ds.expected(event_id)["hierarchy"]["ancestors"])
        == 11
    )


def test_invalid_and_unknown_ids(ds):
    ids = [x["id"] for x in ds.invalid_ids]
    assert {"not-a-uuid", "12345", "00000000-0000-0000-0000-000000000000"} <= set(ids)
    assert any(classify_uuid4(i) == "uuid_version" and uuid.UUID(i).version == 1 for i in ids)
    for entry in ds.invalid_ids:
        assert entry["reason"] == "invalid_event_id"
        assert classify_uuid4(entry["id"]) == entry["detail_type"]
    for entry in ds.unknown_ids:
        assert entry["reason"] == "event_not_found"
        assert classify_uuid4(entry["id"]) is None
        assert entry["id"] not in ds.events


_UUID4 = TypeAdapter(UUID4)


def _pydantic_kind(text: str) -> str | None:
    try:
        _UUID4.validate_python(text)
    except ValidationError as exc:
        return exc.errors()[0]["type"]
    return None


_uuid_like = st.one_of(
    st.uuids().map(str),
    st.uuids(version=4).map(str),
    st.uuids(version=4).map(lambda u: u.hex),
    st.uuids(version=4).map(lambda u: "{" + str(u) + "}"),
    st.uuids(version=4).map(lambda u: "urn:uuid:" + str(u)),
    st.uuids(version=4).map(lambda u: str(u).upper()),
    st.integers(0, 2**128 - 1).map(lambda i: str(uuid.UUID(int=i))),
    st.text(alphabet="0123456789abcdef-{}:urnid ", max_size=45),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(_uuid_like)
def test_uuid_classification_matches_pydantic(text):
    assert classify_uuid4(text) == _pydantic_kind(text)


def test_bench_dataset_shape(bench):
    assert len(bench) == 2000
    system = bench.ids_with_tag("system")
    assert all(bench.events[i]["name"] == "customer.created" for i in system)
    assert 0.70 <= len(system) / 2000 <= 0.80
    assert all(bench.events[i]["parent_id"] is None for i in system)
    with_trees = [i for i in system if bench.children.get(i)]
    assert 0.12 * len(system) <= len(with_trees) <= 0.25 * len(system)
    chain_depths = [bench.expected(i)["hierarchy"]["depth"] for i in bench.ids_with_tag("chain")]
    assert max(chain_depths) == 8 and min(chain_depths) == 0
    assert all(bench.expected(i)["hierarchy"]["complete"] for i in bench.events)
    chain_roots = [i for i in bench.ids_with_tag("chain") if bench.events[i]["parent_id"] is None]
    assert 2 <= len(chain_roots) <= 20
    assert any(len(bench.children.get(r, [])) > 1 for r in chain_roots)  # branching


def test_bench_order(bench):
    order = bench.bench_order()
    assert sorted(order) == sorted(bench.events)
    assert order == bench.bench_order()
    position = {event_id: n for n, event_id in enumerate(order)}
    parents_first = sum(
        1
        for i, e in bench.events.items()
        if e["parent_id"] is None or position[e["parent_id"]] < position[i]
    )
    assert parents_first / len(order) > 0.95
    by_time = sorted(bench.events, key=bench.timestamp_us.__getitem__)
    assert order != by_time  # some local shuffles
    assert all(abs(position[i] - n) < 5 for n, i in enumerate(by_time))


def test_bench_size_is_exact_and_deterministic():
    small = build_dataset("bench", 7, 50)
    assert len(small) == 50
    assert list(build_dataset("bench", 7, 50).events) == list(small.events)
    assert len(build_dataset("bench", 7, 0)) == 0


def test_hostile_dataset_extends_default(ds):
    hostile = build_dataset("hostile", 42)
    assert set(ds.events) <= set(hostile.events)
    chain = hostile.ids_with_tag("chain_10000")
    assert len(chain) == 10_000
    leaf = hostile.expected(chain[-1])["hierarchy"]
    assert leaf["incomplete_reason"] == "max_depth" and leaf["depth"] == 100
    assert hostile.expected(chain[0])["hierarchy"]["descendant_count"] == 9_999
    extra = [i for i in hostile.ids_with_tag("hostile") if i not in ds.events]
    reasons = {hostile.expected(i)["hierarchy"]["incomplete_reason"] for i in extra}
    assert {"cycle", "parent_not_found", "max_depth"} <= reasons
    assert len(hostile.ids_with_tag("self_parent")) == 2


def test_dataset_does_not_depend_on_hash_seed():
    root = Path(__file__).resolve().parents[2]
    code = (
        "import hashlib, json; from simulator import build_dataset; "
        "d = build_dataset('default', 5); "
        "print(hashlib.sha256(json.dumps([d.all_events, d.tags, d.bench_order()]).encode())"
        ".hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)},
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert len(digests) == 1
