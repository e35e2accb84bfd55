"""The record's JSON Schema (schemas/rapidly.enriched_event.v1.json) kept in step with the code
that builds records: every kind of record validates, and what the schema forbids is refused."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from devkit import record_errors, record_schema, validate_record
from worker.enrichment import build_record
from worker.enrichment._hierarchy import Hierarchy, IncompleteReason, walk_ancestors
from worker.rapidly import ANCESTOR_FIELDS, ChildCounts, Event


def _event(parent_id: str | None = None, **extra: Any) -> Event:
    event_id = extra.pop("id", None) or str(uuid.uuid4())
    return Event.from_api(
        {
            "id": event_id,
            "timestamp": "2025-03-03T08:00:01.000123Z",
            "workspace_id": str(uuid.uuid4()),
            "customer_id": None,
            "customer": None,
            "external_customer_id": None,
            "member_id": None,
            "external_member_id": None,
            "child_count": 0,
            "parent_id": parent_id,
            "label": "Order Placed",
            "source": "user",
            "name": "order.placed",
            "metadata": {"amount": 1999},
            **extra,
        }
    )


def _records() -> dict[str, dict[str, Any]]:
    """One record body per kind the worker publishes."""
    root = _event(label=None)
    middle = _event(root.id)
    leaf = _event(middle.id, x_new_field={"nested": [1, 2]})
    events = {e.id: e for e in (root, middle, leaf)}
    complete = walk_ancestors(leaf, events.get)
    lost = walk_ancestors(_event(str(uuid.uuid4())), lambda _: None)
    a = _event(None, id=str(uuid.uuid4()))
    cyc_a = _event(str(uuid.uuid4()))
    cyc_b = _event(cyc_a.id, id=cyc_a.parent_id)
    cycle = walk_ancestors(cyc_a, {cyc_b.id: cyc_b}.get)
    capped = walk_ancestors(leaf, events.get, max_depth=1)
    bogus_parent = walk_ancestors(_event("not-a-uuid"), lambda _: None)
    system = _event(None, source="system", name="customer.created", label="Customer Created")
    hierarchies: dict[str, tuple[Event, Hierarchy]] = {
        "root": (a, walk_ancestors(a, events.get)),
        "complete_chain": (leaf, complete),
        "parent_not_found": (_event(str(uuid.uuid4())), lost),
        "cycle": (cyc_a, cycle),
        "max_depth": (leaf, capped),
        "bogus_parent_id": (_event("not-a-uuid"), bogus_parent),
        "customer_created": (system, walk_ancestors(system, events.get)),
    }
    seen: set[IncompleteReason | None] = {h.incomplete_reason for _, h in hierarchies.values()}
    assert seen == {None, "parent_not_found", "cycle", "max_depth"}  # every kind is built
    return {
        kind: build_record(event, hierarchy, ChildCounts(2, 5), now=datetime.now(UTC)).body
        for kind, (event, hierarchy) in hierarchies.items()
    }


@pytest.mark.parametrize("kind", sorted(_records()))
def test_every_kind_of_record_validates(kind: str) -> None:
    validate_record(_records()[kind])


def test_required_keys_match_the_record_model() -> None:
    schema = record_schema()
    body = _records()["complete_chain"]
    assert set(schema["required"]) == set(body) == set(schema["properties"])
    hierarchy = schema["$defs"]["hierarchy"]
    assert set(hierarchy["required"]) == set(body["hierarchy"]) == set(hierarchy["properties"])
    ancestor = schema["$defs"]["ancestor"]
    assert (
        set(ancestor["required"]) == set(ANCESTOR_FIELDS) == set(body["hierarchy"]["ancestors"][0])
    )
    # The event: what the model insists on is what the schema requires.
    model_required = {n for n, f in Event.model_fields.items() if f.is_required()}
    assert set(schema["$defs"]["event"]["required"]) == model_required
    assert schema["properties"]["schema"]["const"] == body["schema"]
    reasons = set(hierarchy["properties"]["incomplete_reason"]["enum"])
    assert reasons == {None, *IncompleteReason.__args__}  # type: ignore[attr-defined]


def _broken(change: Any) -> list[str]:
    body = copy.deepcopy(_records()["complete_chain"])
    change(body)
    return record_errors(body)


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("unknown reason", lambda b: b["hierarchy"].update(complete=False, incomplete_reason="x")),
        ("complete with a reason", lambda b: b["hierarchy"].update(incomplete_reason="cycle")),
        ("incomplete without one", lambda b: b["hierarchy"].update(complete=False)),
        ("negative count", lambda b: b["hierarchy"].update(child_count=-1)),
        ("float depth", lambda b: b["hierarchy"].update(depth=1.5)),
        ("extra hierarchy key", lambda b: b["hierarchy"].update(extra=1)),
        ("extra ancestor key", lambda b: b["hierarchy"]["ancestors"][0].update(customer=None)),
        ("missing ancestor key", lambda b: b["hierarchy"]["ancestors"][0].pop("label")),
        ("extra top-level key", lambda b: b.update(version=2)),
        ("missing enriched_at", lambda b: b.pop("enriched_at")),
        ("wrong schema", lambda b: b.update(schema="rapidly.enriched_event.v2")),
        ("bad date-time", lambda b: b.update(enriched_at="2025-13-45T99:00:00Z")),
        ("not rfc3339", lambda b: b.update(enriched_at="yesterday Z")),
        ("bad event timestamp", lambda b: b["event"].update(timestamp="2025-03-03 08:00")),
        ("bad uuid", lambda b: b["hierarchy"].update(root_id="not-a-uuid")),
        ("bad event id", lambda b: b["event"].update(id="123")),
        ("event without name", lambda b: b["event"].pop("name")),
    ],
)
def test_the_schema_refuses(what: str, change: Any) -> None:
    assert _broken(change), what


def test_unknown_event_fields_are_kept() -> None:
    assert _broken(lambda b: b["event"].update(x_future={"a": [1]}, another=None)) == []


def test_validate_record_names_the_problem() -> None:
    body = copy.deepcopy(_records()["root"])
    body["hierarchy"]["depth"] = -1
    with pytest.raises(AssertionError, match="hierarchy/depth"):
        validate_record(body)
