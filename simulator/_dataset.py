"""Deterministic datasets of Rapidly events, and the expected enrichment of each event.

Everything here is derived from one ``random.Random(seed)``: the same ``(name, seed,
bench_size)`` always gives the same ids, timestamps and payloads. Sets are never iterated
where order matters, so ``PYTHONHASHSEED`` does not change the result either.
"""

from __future__ import annotations

import copy
import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DEFAULT_MAX_DEPTH = 100
BASE_TIME_US = int(datetime(2025, 3, 3, 8, 0, 0, tzinfo=UTC).timestamp()) * 1_000_000

SYSTEM_LABELS = {
    "customer.created": "Customer Created",
    "customer.updated": "Customer Updated",
    "customer.deleted": "Customer Deleted",
}

EVENT_KEYS = (
    "id",
    "timestamp",
    "workspace_id",
    "customer_id",
    "customer",
    "external_customer_id",
    "member_id",
    "external_member_id",
    "child_count",
    "parent_id",
    "label",
    "source",
    "name",
    "metadata",
)

NIL_UUID = "00000000-0000-0000-0000-000000000000"


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def format_timestamp(us: int) -> str:
    """Epoch microseconds → ``2025-03-03T08:00:00Z`` (``.ffffffZ`` only when non-zero)."""
    seconds, micro = divmod(us, 1_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{micro:06d}Z" if micro else f"{text}Z"


def timestamp_to_us(dt: datetime) -> int:
    """Aware datetime → epoch microseconds (exact, no float rounding)."""
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_HEX = "[0-9a-fA-F]"
_HYPHENATED = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
_UUID_FORMS = re.compile(
    rf"^(?:{_HEX}{{32}}|{_HYPHENATED}|\{{{_HYPHENATED}\}}|urn:uuid:{_HYPHENATED})$"
)


def classify_uuid4(raw: str) -> str | None:
    """How the real server (pydantic ``UUID4``) judges a string.

    ``None`` when it is a valid UUID version 4, ``"uuid_parsing"`` when it is not a UUID
    at all, ``"uuid_version"`` when it is a UUID of another version (the nil UUID, the max
    UUID and non-RFC-4122 variants included).
    """
    if not _UUID_FORMS.match(raw):
        return "uuid_parsing"
    hex_digits = re.sub(r"[^0-9a-fA-F]", "", raw.removeprefix("urn:uuid:"))
    if uuid.UUID(hex=hex_digits).version != 4:
        return "uuid_version"
    return None


def normalize_uuid(raw: str) -> str:
    """Canonical lowercase hyphenated form of a string ``classify_uuid4`` accepted."""
    hex_digits = re.sub(r"[^0-9a-fA-F]", "", raw.removeprefix("urn:uuid:"))
    return str(uuid.UUID(hex=hex_digits))


def _uuid_with_version(bits: int, version: int) -> str:
    """A UUID with the RFC 4122 variant and an arbitrary version nibble (1..15)."""
    bits &= ~(0xC000 << 48)
    bits |= 0x8000 << 48
    bits &= ~(0xF000 << 64)
    bits |= version << 76
    return str(uuid.UUID(int=bits))


# --------------------------------------------------------------------------------------
# Graph computations
# --------------------------------------------------------------------------------------


def reach_counts(parent_of: dict[str, str | None]) -> dict[str, int]:
    """For every node, how many distinct nodes are reachable through children (itself
    excluded) in the parent-pointer graph, in O(n) even with cycles.

    Each node has at most one parent, so the graph is a forest whose roots are either
    parentless nodes or cycles. A node off every cycle has a plain subtree below it; a node
    on a cycle reaches the whole cycle plus every subtree hanging off it.
    """
    par = {
        n: (p if p is not None and p in parent_of and p != n else None)
        for n, p in parent_of.items()
    }
    self_loops = [n for n, p in parent_of.items() if p == n]
    children: dict[str, list[str]] = {}
    for child, p in par.items():
        if p is not None:
            children.setdefault(p, []).append(child)

    state: dict[str, int] = {}
    cycles: list[list[str]] = [[n] for n in self_loops]
    on_cycle: dict[str, int] = {n: i for i, n in enumerate(self_loops)}
    for n in self_loops:
        state[n] = 2
    for start in par:
        if start in state:
            continue
        path: list[str] = []
        cursor: str | None = start
        while cursor is not None and cursor not in state:
            state[cursor] = 1
            path.append(cursor)
            cursor = par[cursor]
        if cursor is not None and state[cursor] == 1:
            cyc = path[path.index(cursor) :]
            for m in cyc:
                on_cycle[m] = len(cycles)
            cycles.append(cyc)
        for m in path:
            state[m] = 2

    size: dict[str, int] = {}
    tree_roots = [n for n in par if n not in on_cycle and (par[n] is None or par[n] in on_cycle)]
    for root in tree_roots:
        stack: list[tuple[str, bool]] = [(root, False)]
        while stack:
            node, done = stack.pop()
            kids = children.get(node, ())
            if done:
                size[node] = 1 + sum(size[k] for k in kids)
            else:
                stack.append((node, True))
                stack.extend((k, False) for k in kids)

    result = {n: size[n] - 1 for n in size}
    for cyc in cycles:
        total = len(cyc)
        for member in cyc:
            total += sum(size[k] for k in children.get(member, ()) if k not in on_cycle)
        for member in cyc:
            result[member] = total - 1
    return result


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------


class Dataset:
    """Events of one simulated Rapidly deployment, indexed for the server and the tests.

    ``events`` holds the token's workspace (what ``GET /api/events/{id}`` answers, with
    ``child_count`` 0), ``other_events`` another workspace nobody can see with the token,
    ``all_events`` both. ``children`` indexes every event's direct children (all
    workspaces, creation order, self-parents excluded).
    """

    def __init__(
        self,
        *,
        name: str,
        seed: int,
        workspace_id: str,
        other_workspace_id: str,
        all_events: dict[str, dict[str, Any]],
        tags: dict[str, list[str]],
        customers: dict[str, dict[str, Any]],
        invalid_ids: list[dict[str, str]],
        unknown_ids: list[dict[str, str]],
        order_seed: int,
    ) -> None:
        self.name = name
        self.seed = seed
        self.workspace_id = workspace_id
        self.other_workspace_id = other_workspace_id
        self.all_events = all_events
        self.events = {k: v for k, v in all_events.items() if v["workspace_id"] == workspace_id}
        self.other_events = {
            k: v for k, v in all_events.items() if v["workspace_id"] != workspace_id
        }
        self.tags = tags
        self.customers = customers
        self.invalid_ids = invalid_ids
        self.unknown_ids = unknown_ids
        self._order_seed = order_seed
        self.parent_of: dict[str, str | None] = {k: v["parent_id"] for k, v in all_events.items()}
        self.children: dict[str, list[str]] = {}
        for event_id, parent in self.parent_of.items():
            if parent is not None and parent != event_id:
                self.children.setdefault(parent, []).append(event_id)
        self.timestamp_us: dict[str, int] = {
            k: timestamp_to_us(datetime.fromisoformat(v["timestamp"]))
            for k, v in all_events.items()
        }
        # What the list endpoint reports as ``child_count``: all descendants, every depth.
        self.list_child_count = reach_counts(self.parent_of)
        self._expected_cache: dict[tuple[str, int], dict[str, Any]] = {}
        self._auto_tag()

    # -- views --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.events)

    def ids_with_tag(self, tag: str) -> list[str]:
        """Ids of the token-visible events carrying ``tag``, in creation order."""
        return [k for k in self.events if tag in self.tags.get(k, ())]

    def all_tags(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for event_id in self.events:
            for tag in self.tags.get(event_id, ()):
                counts[tag] = counts.get(tag, 0) + 1
        return dict(sorted(counts.items()))

    def get_event(self, event_id: str) -> dict[str, Any]:
        """A deep copy of the event exactly as ``GET /api/events/{id}`` returns it."""
        return copy.deepcopy(self.events[event_id])

    def ancestor_entry(self, event_id: str) -> dict[str, Any]:
        """The six fields the CONTRACT copies into ``hierarchy.ancestors``."""
        ev = self.all_events[event_id]
        return {k: ev[k] for k in ("id", "name", "source", "label", "timestamp", "parent_id")}

    def bench_order(self) -> list[str]:
        """Token-visible ids in the order a producer would send them: creation (timestamp)
        order, parents before children, with small local shuffles (windows of 5)."""
        rng = random.Random(self._order_seed)
        order = sorted(self.events, key=lambda k: self.timestamp_us[k])
        for start in range(0, len(order), 5):
            if rng.random() < 0.3:
                window = order[start : start + 5]
                rng.shuffle(window)
                order[start : start + 5] = window
        return order

    # -- expectations -------------------------------------------------------------------

    def expected(self, event_id: str, max_depth: int = DEFAULT_MAX_DEPTH) -> dict[str, Any]:
        """What the worker must publish for ``event_id`` (CONTRACT section 2), computed from
        the stored graph as seen by the workspace token. Raises KeyError for an id the
        token cannot read. Returns a fresh copy."""
        return copy.deepcopy(self._expected(event_id, max_depth))

    def _expected(self, event_id: str, max_depth: int) -> dict[str, Any]:
        key = (event_id, max_depth)
        cached = self._expected_cache.get(key)
        if cached is None:
            cached = self._compute_expected(event_id, max_depth)
            self._expected_cache[key] = cached
        return cached

    def _compute_expected(self, event_id: str, max_depth: int) -> dict[str, Any]:
        event = self.events[event_id]
        chain: list[str] = []  # nearest parent first
        in_chain: set[str] = set()
        reason: str | None = None
        current = event
        while True:
            parent_id = current["parent_id"]
            if parent_id is None:
                break
            if parent_id == event_id or parent_id in in_chain:
                reason = "cycle"
                break
            if len(chain) >= max_depth:
                reason = "max_depth"
                break
            parent = self.events.get(parent_id)  # another workspace's answers 404
            if parent is None:
                reason = "parent_not_found"
                break
            chain.append(parent_id)
            in_chain.add(parent_id)
            current = parent
        ancestors = chain[::-1]
        direct = [c for c in self.children.get(event_id, ()) if c in self.events]
        # CONTRACT: direct children (list total) + the list child_count of each of them.
        descendants = sum(1 + self.list_child_count[c] for c in direct)
        return {
            "event_id": event_id,
            "routing_key": f"{event['source']}.{event['name']}",
            "is_customer_created": event["source"] == "system"
            and event["name"] == "customer.created",
            "hierarchy": {
                "root_id": ancestors[0] if ancestors else event_id,
                "depth": len(ancestors),
                "ancestors": ancestors,
                "complete": reason is None,
                "incomplete_reason": reason,
                "child_count": len(direct),
                "descendant_count": descendants,
            },
        }

    def summary(
        self,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        tags: list[str] | None = None,
        ids: list[str] | None = None,
        with_expected: bool = True,
    ) -> dict[str, Any]:
        """The ``GET /_sim/dataset`` document."""
        wanted = ids if ids is not None else list(self.events)
        entries = []
        for event_id in wanted:
            if event_id not in self.events:
                continue
            event_tags = self.tags.get(event_id, [])
            if tags and not any(t in event_tags for t in tags):
                continue
            entry: dict[str, Any] = {
                "id": event_id,
                "parent_id": self.events[event_id]["parent_id"],
                "tags": list(event_tags),
            }
            if with_expected:
                entry["expected"] = self._expected(event_id, max_depth)
            entries.append(entry)
        return {
            "name": self.name,
            "seed": self.seed,
            "workspace_id": self.workspace_id,
            "other_workspace_id": self.other_workspace_id,
            "max_depth": max_depth,
            "count": len(entries),
            "tag_counts": self.all_tags(),
            "events": entries,
            "invalid_ids": list(self.invalid_ids),
            "unknown_ids": list(self.unknown_ids),
            "other_workspace_event_ids": list(self.other_events),
        }

    # -- automatic tags -----------------------------------------------------------------

    def _auto_tag(self) -> None:
        gone = {c for c, cust in self.customers.items() if cust.get("_hard_deleted")}
        gone_external = {
            (cust["workspace_id"], cust["external_id"])
            for cust in self.customers.values()
            if cust.get("_hard_deleted") and cust["external_id"] is not None
        }
        for event_id, ev in self.all_events.items():
            tags = self.tags.setdefault(event_id, [])

            def add(tag: str, tags: list[str] = tags) -> None:
                if tag not in tags:
                    tags.append(tag)

            if ev["workspace_id"] != self.workspace_id:
                add("other_workspace")
                continue
            add(ev["source"])
            if ev["parent_id"] is None:
                add("root")
            if ev["source"] == "system" and ev["name"] == "customer.created":
                add("customer_created")
            if ev["source"] == "system" and ev["name"] == "customer.updated":
                add("customer_updated")
            if ev["source"] == "system" and ev["name"] == "customer.deleted":
                add("customer_deleted")
            if ev["source"] == "user" and ev["name"] == "customer.created":
                add("user_named_customer_created")
            if ev["customer"] is None and (
                ev["customer_id"] in gone
                or (ev["workspace_id"], ev["external_customer_id"]) in gone_external
            ):
                add("hard_deleted_customer")
            if ev["customer"] is not None and ev["customer"]["deleted_at"] is not None:
                add("soft_deleted_customer")
            if any(k not in EVENT_KEYS for k in ev):
                add("extra_fields")
            if not _is_ascii(ev):
                add("unicode")
            if self.children.get(event_id):
                add("has_children")
            hierarchy = self._expected(event_id, DEFAULT_MAX_DEPTH)["hierarchy"]
            if hierarchy["depth"] > 5:
                add("deep")
            if hierarchy["incomplete_reason"] is not None:
                add(hierarchy["incomplete_reason"])
        # Customers' private marker must not leak into payloads.
        for cust in self.customers.values():
            cust.pop("_hard_deleted", None)
        self.customers = {k: v for k, v in self.customers.items() if k not in gone}


def _is_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return value.isascii()
    if isinstance(value, dict):
        return all(_is_ascii(k) and _is_ascii(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_ascii(v) for v in value)
    return True


# --------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------


def _label(name: str, source: str, label: str | None) -> str:
    if label is not None:
        return label
    if source == "system":
        return SYSTEM_LABELS.get(name, name)
    return name


@dataclass
class _Draft:
    id: str
    ts: int
    workspace_id: str
    source: str
    name: str
    label: str
    parent_id: str | None
    metadata: dict[str, Any]
    customer_id: str | None = None
    external_customer_id: str | None = None
    member_id: str | None = None
    external_member_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _Builder:
    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.seed = seed
        # default and hostile share a stream, so hostile = default + extras (same ids).
        stream = "bench" if name == "bench" else "default"
        self.rng = random.Random(f"rapidly-sim:{stream}:{seed}")
        self.now = BASE_TIME_US
        self.drafts: dict[str, _Draft] = {}
        self.tags: dict[str, list[str]] = {}
        self.customers: dict[str, dict[str, Any]] = {}
        self.workspace_id = self.uuid4()
        self.other_workspace_id = self.uuid4()
        self._customer_seq = 0

    # -- primitives ---------------------------------------------------------------------

    def uuid4(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def advance(self, lo_s: int, hi_s: int, micro_p: float = 0.4) -> int:
        """Move the clock forward by lo..hi seconds (lo >= 1); maybe with microseconds."""
        seconds = self.now // 1_000_000 + self.rng.randint(max(1, lo_s), max(1, hi_s))
        micro = self.rng.randint(1, 999_999) if self.rng.random() < micro_p else 0
        self.now = seconds * 1_000_000 + micro
        return self.now

    def tag(self, event_id: str, *tags: str) -> None:
        bucket = self.tags.setdefault(event_id, [])
        for t in tags:
            if t not in bucket:
                bucket.append(t)

    def add(
        self,
        *,
        name: str,
        source: str = "user",
        parent_id: str | None = None,
        label: str | None = None,
        metadata: dict[str, Any] | None = None,
        customer_id: str | None = None,
        external_customer_id: str | None = None,
        member_id: str | None = None,
        external_member_id: str | None = None,
        extra: dict[str, Any] | None = None,
        workspace_id: str | None = None,
        event_id: str | None = None,
        ts: int | None = None,
        tags: tuple[str, ...] = (),
    ) -> str:
        eid = event_id or self.uuid4()
        self.drafts[eid] = _Draft(
            id=eid,
            ts=self.now if ts is None else ts,
            workspace_id=workspace_id or self.workspace_id,
            source=source,
            name=name,
            label=_label(name, source, label),
            parent_id=parent_id,
            metadata=metadata or {},
            customer_id=customer_id,
            external_customer_id=external_customer_id,
            member_id=member_id,
            external_member_id=external_member_id,
            extra=extra or {},
        )
        self.tag(eid, *tags)
        return eid

    # -- customers and system events ----------------------------------------------------

    def add_customer(
        self, workspace_id: str | None = None, *, simple: bool = False
    ) -> dict[str, Any]:
        rng = self.rng
        self._customer_seq += 1
        n = self._customer_seq
        if simple:
            name: str | None = rng.choice(_SIMPLE_NAMES)
            email = f"customer{n}@example.com"
            billing = None
            ctype: str | None = "individual"
            metadata: dict[str, Any] = {}
        else:
            name = rng.choice(_NAMES)
            email = rng.choice(_EMAIL_PATTERNS).format(n=n)
            billing = copy.deepcopy(rng.choice(_BILLING))
            ctype = rng.choice(["individual", "team", None])
            metadata = copy.deepcopy(rng.choice(_CUSTOMER_METADATA))
        external_id = f"ext_cus_{n:05d}" if rng.random() < 0.7 else None
        customer_id = self.uuid4()
        customer: dict[str, Any] = {
            "id": customer_id,
            "created_at": format_timestamp(self.now),
            "modified_at": None,
            "metadata": metadata,
            "external_id": external_id,
            "email": email,
            "email_verified": rng.random() < 0.6,
            "type": ctype,
            "name": name,
            "billing_address": billing,
            "workspace_id": workspace_id or self.workspace_id,
            "deleted_at": None,
            "avatar_url": f"https://avatars.example.com/{n}.png" if rng.random() < 0.3 else None,
        }
        self.customers[customer_id] = customer
        return customer

    def system_event(
        self,
        name: str,
        customer: dict[str, Any],
        *,
        updated_fields: dict[str, Any] | None = None,
        tags: tuple[str, ...] = (),
    ) -> str:
        # System events land seconds after the change they record.
        self.advance(1, 8, micro_p=0.9)
        metadata: dict[str, Any] = {
            "customer_id": customer["id"],
            "customer_email": customer["email"],
            "customer_name": customer["name"],
            "customer_external_id": customer["external_id"],
        }
        if name == "customer.updated":
            metadata["updated_fields"] = copy.deepcopy(updated_fields or {})
        return self.add(
            name=name,
            source="system",
            metadata=metadata,
            customer_id=customer["id"],
            workspace_id=customer["workspace_id"],
            tags=tags,
        )

    def user_event(
        self,
        customer: dict[str, Any] | None,
        *,
        name: str | None = None,
        parent_id: str | None = None,
        label: str | None = None,
        metadata: dict[str, Any] | None = None,
        ts: int | None = None,
        tags: tuple[str, ...] = (),
        extra: dict[str, Any] | None = None,
        workspace_id: str | None = None,
        event_id: str | None = None,
    ) -> str:
        """A user event attributed either by customer_id or by external_customer_id."""
        rng = self.rng
        customer_id = external_customer_id = None
        if customer is None:
            external_customer_id = f"ext_unknown_{rng.randint(1000, 9999)}"
        elif customer["external_id"] is not None and rng.random() < 0.35:
            external_customer_id = customer["external_id"]
        else:
            customer_id = customer["id"]
        member_id = external_member_id = None
        roll = rng.random()
        if roll < 0.1:
            member_id = self.uuid4()
        elif roll < 0.18:
            external_member_id = f"mem_{rng.randint(100, 999)}"
        return self.add(
            name=name or rng.choice(_USER_NAMES),
            parent_id=parent_id,
            label=label,
            metadata=metadata
            if metadata is not None
            else copy.deepcopy(rng.choice(_USER_METADATA)),
            customer_id=customer_id,
            external_customer_id=external_customer_id,
            member_id=member_id,
            external_member_id=external_member_id,
            extra=extra,
            ts=ts,
            tags=tags,
            workspace_id=workspace_id or (customer["workspace_id"] if customer else None),
            event_id=event_id,
        )

    # -- finishing ----------------------------------------------------------------------

    def finish(self) -> Dataset:
        by_external = {
            (c["workspace_id"], c["external_id"]): c
            for c in self.customers.values()
            if c["external_id"] is not None and not c.get("_hard_deleted")
        }
        all_events: dict[str, dict[str, Any]] = {}
        for draft in sorted(self.drafts.values(), key=lambda d: d.ts):
            customer = None
            if draft.customer_id is not None:
                live = self.customers.get(draft.customer_id)
                customer = None if live is None or live.get("_hard_deleted") else live
            elif draft.external_customer_id is not None:
                customer = by_external.get((draft.workspace_id, draft.external_customer_id))
            if customer is not None:
                customer = {k: copy.deepcopy(v) for k, v in customer.items() if k[0] != "_"}
            event = {
                "id": draft.id,
                "timestamp": format_timestamp(draft.ts),
                "workspace_id": draft.workspace_id,
                "customer_id": draft.customer_id,
                "customer": customer,
                "external_customer_id": draft.external_customer_id,
                "member_id": draft.member_id,
                "external_member_id": draft.external_member_id,
                "child_count": 0,
                "parent_id": draft.parent_id,
                "label": draft.label,
                "source": draft.source,
                "name": draft.name,
                "metadata": copy.deepcopy(draft.metadata),
            }
            for key, value in draft.extra.items():
                event[key] = copy.deepcopy(value)
            all_events[draft.id] = event

        invalid_ids = [
            {"id": "not-a-uuid", "reason": "invalid_event_id", "detail_type": "uuid_parsing"},
            {"id": "12345", "reason": "invalid_event_id", "detail_type": "uuid_parsing"},
            {"id": NIL_UUID, "reason": "invalid_event_id", "detail_type": "uuid_version"},
            {
                "id": _uuid_with_version(self.rng.getrandbits(128), 1),
                "reason": "invalid_event_id",
                "detail_type": "uuid_version",
            },
            {
                "id": _uuid_with_version(self.rng.getrandbits(128), 7),
                "reason": "invalid_event_id",
                "detail_type": "uuid_version",
            },
            {
                "id": "ffffffff-ffff-ffff-ffff-ffffffffffff",
                "reason": "invalid_event_id",
                "detail_type": "uuid_version",
            },
            {
                "id": self.uuid4()[:-1] + "z",
                "reason": "invalid_event_id",
                "detail_type": "uuid_parsing",
            },
        ]
        unknown_ids: list[dict[str, str]] = []
        while len(unknown_ids) < 6:
            candidate = self.uuid4()
            if candidate not in all_events:
                unknown_ids.append({"id": candidate, "reason": "event_not_found"})
        for event_id, event in all_events.items():
            if event["workspace_id"] != self.workspace_id:
                unknown_ids.append(
                    {"id": event_id, "reason": "event_not_found", "note": "other_workspace"}
                )
        return Dataset(
            name=self.name,
            seed=self.seed,
            workspace_id=self.workspace_id,
            other_workspace_id=self.other_workspace_id,
            all_events=all_events,
            tags={k: list(self.tags.get(k, [])) for k in all_events},
            customers=self.customers,
            invalid_ids=invalid_ids,
            unknown_ids=unknown_ids,
            order_seed=self.rng.getrandbits(64),
        )


# --------------------------------------------------------------------------------------
# Content pools
# --------------------------------------------------------------------------------------

_NAMES: list[str | None] = [
    "Alice Martin",
    "Bob Smith",
    "José Müller",
    "Zoë Ørsted 🦄",
    "山田 太郎",
    "Олег Петров",
    "محمد العلي",
    "Siobhán O'Brien",
    "Nguyễn Ngọc Anh",
    "Łukasz Żółć",
    "प्रिया शर्मा",
    "김민준",
    'Emma "Em" Jones',
    None,
    "",
]
_SIMPLE_NAMES = ["Alice Martin", "Bob Smith", "Carol White", "Dan Brown", "Eve Black", None]
_EMAIL_PATTERNS = [
    "customer{n}@example.com",
    "alice+{n}@example.org",
    "Bob.Smith{n}@Example.COM",
    "o'brien.{n}@example.ie",
    "user_{n}@sub.example.co.uk",
]
_BILLING: list[dict[str, Any] | None] = [
    None,
    {
        "country": "US",
        "line1": "1 Market St",
        "line2": "Suite 300",
        "postal_code": "94105",
        "city": "San Francisco",
        "state": "US-CA",
    },
    {
        "country": "DE",
        "line1": "Hauptstraße 5",
        "line2": None,
        "postal_code": "10115",
        "city": "Berlin",
        "state": None,
    },
    {
        "country": "JP",
        "line1": "千代田区丸の内1-1",
        "line2": None,
        "postal_code": "100-0005",
        "city": "東京",
        "state": "JP-13",
    },
    {
        "country": "FR",
        "line1": None,
        "line2": None,
        "postal_code": None,
        "city": None,
        "state": None,
    },
]
_CUSTOMER_METADATA: list[dict[str, Any]] = [
    {},
    {"plan": "pro"},
    {"seats": 5, "vip": True},
    {"source": "🚀 launch", "region": "eu"},
    {"score": 4.5, "tier": "gold"},
]
_USER_NAMES = [
    "checkout.started",
    "order.placed",
    "invoice.paid",
    "api.call",
    "feature.used",
    "session.started",
    "page.viewed",
    "llm.completion",
    "export.finished",
]
_UNICODE_USER_NAMES = ["注文.作成", "événement.spécial", "заказ.создан", "🎉.celebrated"]
_UNICODE_LABELS = [
    "Заказ создан 🚀",
    "注文が作成されました",
    "Événement ✨",
    "طلب جديد",
    "नया ऑर्डर",
    "주문 완료 ✅",
]
_USER_METADATA: list[dict[str, Any]] = [
    {},
    {"amount": 1999, "currency": "usd"},
    {"path": "/api/v1/items", "status": 200, "duration_ms": 12.5},
    {"plan": "pro", "trial": False},
    {"_cost": {"amount": "0.012", "currency": "usd"}, "model": "gpt-x"},
    {
        "_llm": {
            "vendor": "acme",
            "model": "acme-large",
            "prompt": None,
            "response": None,
            "input_tokens": 120,
            "output_tokens": 48,
            "total_tokens": 168,
        }
    },
    {"feature": "export", "count": 3},
]
_UNICODE_METADATA: list[dict[str, Any]] = [
    {"comment": "Привет 👋", "城市": "東京"},
    {"emoji": "🎉🔥💯", "rtl": "مرحبا بالعالم"},
    {"note": "Ünïcödé ñ — “quotes” ‘and’ …", "hindi": "नमस्ते"},  # noqa: RUF001
    {"zwj": "👩‍👩‍👧‍👦", "combining": "e\u0301", "korean": "안녕하세요"},
]
_EXTRA_FIELDS: list[dict[str, Any]] = [
    {"x_experimental": {"a": 1}},
    {"ingested_at": "2025-03-04T10:00:00.5Z"},
    {"x_flags": ["beta", "ünïcode"]},
    {"x_null": None},
    {"x_nested": {"deep": {"deeper": [1, 2, {"k": "v"}]}}},
    {"x_experimental": {"a": 2}, "x_score": 0.75, "x_enabled": True},
]


# --------------------------------------------------------------------------------------
# The three datasets
# --------------------------------------------------------------------------------------


def _tree_under(
    b: _Builder,
    root_id: str,
    customer: dict[str, Any] | None,
    *,
    tags: tuple[str, ...],
    max_children: int = 4,
    user_cc_p: float = 0.0,
) -> list[str]:
    """1..max_children user children under root, each with 0..3 children, some deeper."""
    rng = b.rng
    created: list[str] = []
    for _ in range(rng.randint(1, max_children)):
        b.advance(1, 90)
        name = "customer.created" if rng.random() < user_cc_p else None
        child = b.user_event(customer, parent_id=root_id, name=name, tags=tags)
        created.append(child)
        shared_ts = b.now if rng.random() < 0.3 else None
        for _ in range(rng.randint(0, 3)):
            if shared_ts is None:
                b.advance(1, 60)
            grandchild = b.user_event(customer, parent_id=child, ts=shared_ts, tags=tags)
            if shared_ts is not None:
                b.tag(grandchild, "same_timestamp")
            created.append(grandchild)
            if rng.random() < 0.25:
                b.advance(1, 30)
                created.append(b.user_event(customer, parent_id=grandchild, tags=tags))
    return created


def _add_default(b: _Builder) -> None:
    rng = b.rng
    customers: list[dict[str, Any]] = []
    created_events: list[str] = []

    # Customers, their customer.created system events, and user trees under some of them.
    for i in range(40):
        b.advance(600, 7200)
        customer = b.add_customer()
        customers.append(customer)
        event_id = b.system_event("customer.created", customer)
        created_events.append(event_id)
        if i % 3 == 0:
            b.tag(event_id, "tree")
            _tree_under(b, event_id, customer, tags=("tree",), user_cc_p=0.15)

        # Standalone user events in between.
        for _ in range(rng.randint(0, 3)):
            b.advance(30, 1800)
            unicode = rng.random() < 0.2
            b.user_event(
                rng.choice([*customers, None]) if rng.random() < 0.9 else None,
                name=rng.choice(_UNICODE_USER_NAMES) if unicode and rng.random() < 0.5 else None,
                label=rng.choice(_UNICODE_LABELS) if unicode else None,
                metadata=copy.deepcopy(rng.choice(_UNICODE_METADATA)) if unicode else None,
            )

    # User events named customer.created: roots and children of system customer.created.
    for _ in range(3):
        b.advance(60, 900)
        b.user_event(
            rng.choice(customers),
            name="customer.created",
            metadata={"imported": True, "origin": "legacy-crm"},
        )
    for system_root in rng.sample(created_events, 3):
        b.advance(60, 900)
        b.user_event(
            b.customers[str(b.drafts[system_root].customer_id)],
            parent_id=system_root,
            name="customer.created",
            metadata={"mirror": True},
            tags=("tree",),
        )
        b.tag(system_root, "tree")

    # Events with unknown extra fields.
    for extra in _EXTRA_FIELDS:
        b.advance(60, 900)
        b.user_event(rng.choice(customers), extra=copy.deepcopy(extra))

    # Deep user chains sharing ancestors: 12 events, and a 7-event branch off its 3rd.
    chain_customer = rng.choice(customers)
    chain_12: list[str] = []
    for i in range(12):
        b.advance(5, 120)
        name = {0: "workflow.started", 11: "workflow.finished"}.get(i, "workflow.step")
        chain_12.append(
            b.user_event(
                chain_customer,
                name=name,
                parent_id=chain_12[-1] if chain_12 else None,
                metadata={"step": i},
                tags=("chain", "chain_12"),
            )
        )
    branch = chain_12[:3]
    for i in range(3, 7):
        b.advance(5, 120)
        branch.append(
            b.user_event(
                chain_customer,
                name="workflow.branch",
                parent_id=branch[-1],
                metadata={"step": i, "branch": "b"},
                tags=("chain", "chain_7"),
            )
        )
    for ancestor in chain_12[:3]:
        b.tag(ancestor, "chain_7", "shared_ancestor")

    # A user chain of 8 under a system customer.created event.
    parent: str | None
    parent = created_events[7]
    b.tag(created_events[7], "chain_under_system")
    owner = b.customers[str(b.drafts[created_events[7]].customer_id)]
    for i in range(8):
        b.advance(5, 120)
        parent = b.user_event(
            owner,
            name="onboarding.step",
            parent_id=parent,
            metadata={"step": i + 1},
            tags=("chain", "chain_under_system"),
        )

    # A chain of 120: deeper than the default cap of 100.
    parent = None
    for i in range(120):
        b.advance(1, 20)
        parent = b.user_event(
            chain_customer,
            name="pipeline.stage",
            parent_id=parent,
            metadata={"stage": i},
            tags=("chain", "chain_120"),
        )

    _add_broken_links(b, customers, label="")

    # Updates, soft deletes, hard deletes (the live customer diverges from the snapshots).
    order = list(range(len(customers)))
    rng.shuffle(order)
    updated, soft, hard = order[:8], order[8:12], order[12:16]
    for idx in updated:
        customer = customers[idx]
        b.advance(600, 3600)
        changes: dict[str, Any]
        kind = rng.randrange(4)
        if kind == 0:
            changes = {"name": rng.choice(["Renamed Person", "Ana Lúcia 🌸", "新しい名前"])}
        elif kind == 1:
            changes = {"email": f"changed{idx}@example.net"}
        elif kind == 2:
            changes = {"billing_address": copy.deepcopy(_BILLING[1])}
        else:
            changes = {"metadata": {"plan": "enterprise", "seats": 50}}
        customer.update(copy.deepcopy(changes))
        customer["modified_at"] = format_timestamp(b.now)
        b.system_event("customer.updated", customer, updated_fields=changes)
    for idx in soft:
        customer = customers[idx]
        b.advance(600, 3600)
        customer["deleted_at"] = format_timestamp(b.now)
        customer["modified_at"] = format_timestamp(b.now)
        b.system_event("customer.deleted", customer)
    for idx in hard:
        customer = customers[idx]
        b.advance(600, 3600)
        b.system_event("customer.deleted", customer)
        customer["_hard_deleted"] = True

    # The other workspace's own events.
    for _ in range(2):
        b.advance(60, 600)
        other_customer = b.add_customer(b.other_workspace_id)
        root = b.system_event("customer.created", other_customer)
        b.advance(5, 60)
        b.user_event(other_customer, parent_id=root, workspace_id=b.other_workspace_id)


def _add_broken_links(b: _Builder, customers: list[dict[str, Any]], *, label: str) -> None:
    """A 2-cycle with a subtree, a self-parent with a child, a 3-cycle, a parent in the
    other workspace, and a parent that exists nowhere."""
    rng = b.rng
    extra_tags = (label,) if label else ()
    owner = rng.choice(customers) if customers else None
    a_id, b_id = b.uuid4(), b.uuid4()
    b.advance(60, 600)
    b.user_event(
        owner, name="loop.a", parent_id=b_id, event_id=a_id, tags=("cycle", "cycle_2", *extra_tags)
    )
    b.advance(1, 60)
    b.user_event(
        owner, name="loop.b", parent_id=a_id, event_id=b_id, tags=("cycle", "cycle_2", *extra_tags)
    )
    b.advance(1, 60)
    under = b.user_event(
        owner, name="loop.child", parent_id=a_id, tags=("cycle", "cycle_child", *extra_tags)
    )
    b.advance(1, 60)
    b.user_event(
        owner, name="loop.grandchild", parent_id=under, tags=("cycle", "cycle_child", *extra_tags)
    )

    self_id = b.uuid4()
    b.advance(60, 600)
    b.user_event(
        owner,
        name="loop.self",
        parent_id=self_id,
        event_id=self_id,
        tags=("cycle", "self_parent", *extra_tags),
    )
    b.advance(1, 60)
    b.user_event(
        owner, name="loop.self_child", parent_id=self_id, tags=("cycle", "cycle_child", *extra_tags)
    )

    if not label:
        x, y, z = b.uuid4(), b.uuid4(), b.uuid4()
        for me, parent in ((x, z), (y, x), (z, y)):
            b.advance(1, 60)
            b.user_event(
                owner,
                name="loop.triangle",
                parent_id=parent,
                event_id=me,
                tags=("cycle", "cycle_3"),
            )

    # A parent in another workspace: GET of it answers 404 for our token.
    b.advance(60, 600)
    other_customer = b.add_customer(b.other_workspace_id)
    other_parent = b.user_event(
        other_customer,
        name="partner.sync",
        workspace_id=b.other_workspace_id,
        tags=("other_parent",),
    )
    b.advance(1, 60)
    crossing = b.user_event(
        owner,
        name="partner.import",
        parent_id=other_parent,
        tags=("cross_workspace_parent", *extra_tags),
    )
    b.advance(1, 60)
    b.user_event(
        owner,
        name="partner.import.row",
        parent_id=crossing,
        tags=("cross_workspace_parent", *extra_tags),
    )

    # A parent id that exists in no workspace at all.
    b.advance(60, 600)
    orphan = b.user_event(
        owner, name="orphan.event", parent_id=b.uuid4(), tags=("missing_parent", *extra_tags)
    )
    b.advance(1, 60)
    b.user_event(owner, name="orphan.child", parent_id=orphan, tags=("missing_parent", *extra_tags))


def _add_hostile(b: _Builder, chain_length: int = 10_000) -> None:
    owner = b.add_customer()
    b.advance(60, 600)
    b.system_event("customer.created", owner, tags=("hostile",))
    parent = None
    for i in range(chain_length):
        b.advance(1, 2, micro_p=0.5)
        parent = b.user_event(
            owner,
            name="hostile.link",
            parent_id=parent,
            metadata={"i": i},
            tags=("hostile", "chain", "chain_10000"),
        )
    _add_broken_links(b, [owner], label="hostile")


def _add_bench(b: _Builder, size: int) -> None:
    """About 72% customer.created system roots, about one in six with a small user tree,
    and user chains of depth 2..8 sharing ancestors under a few roots. Creation order is
    time order."""
    rng = b.rng
    n_system = round(size * 0.72)
    other = size - n_system
    # A fifth of the roots with trees would use the whole non-system budget, so the tree
    # rate is capped to leave about 30% of it for the chains.
    tree_budget = int(other * 0.7)
    p_tree = min(0.2, tree_budget / max(1.0, n_system * 1.72))
    chain_budget = other - tree_budget
    count = systems = tree_events = chain_events = 0
    chain_roots: list[str] = []
    n_chain_roots = max(1, other // 60)
    depth_of: dict[str, int] = {}
    chain_kids: dict[str, list[str]] = {}
    customers: list[dict[str, Any]] = []

    def step() -> None:
        b.advance(1, 3, micro_p=0.8)

    while count < size:
        systems_left = n_system - systems
        others_left = size - count - systems_left
        chain_left = chain_budget - chain_events
        p_system = systems_left / max(1e-9, systems_left + max(0, chain_left) / 3.0)
        if systems_left > 0 and (chain_left <= 0 or rng.random() < p_system):
            step()
            customer = b.add_customer(simple=True)
            customers.append(customer)
            root = b.system_event("customer.created", customer, tags=("bench",))
            systems += 1
            count += 1
            budget = min(others_left - max(0, chain_left), tree_budget - tree_events)
            if budget > 0 and rng.random() < p_tree:
                b.tag(root, "tree")
                kids = rng.choices([1, 2, 3], weights=[7, 2, 1])[0]
                for _ in range(kids):
                    if budget <= 0:
                        break
                    step()
                    child = b.user_event(customer, parent_id=root, tags=("bench", "tree"))
                    budget -= 1
                    count += 1
                    tree_events += 1
                    if rng.random() < 0.15:
                        for _ in range(rng.randint(1, 2)):
                            if budget <= 0:
                                break
                            step()
                            b.user_event(customer, parent_id=child, tags=("bench", "tree"))
                            budget -= 1
                            count += 1
                            tree_events += 1
            continue

        # A user chain job: reuse a root and part of an existing path, then extend it.
        owner = rng.choice(customers) if customers and rng.random() < 0.8 else None
        budget = others_left if systems_left <= 0 else max(1, min(others_left, chain_left))
        start_count = count
        if len(chain_roots) < n_chain_roots or not chain_roots:
            step()
            root = b.user_event(owner, name="job.started", tags=("bench", "chain"))
            chain_roots.append(root)
            depth_of[root] = 0
            count += 1
            budget -= 1
        else:
            root = rng.choice(chain_roots)
        target = rng.randint(2, 8)
        node = root
        shared = rng.randint(0, target - 1)
        while depth_of[node] < shared:
            below = chain_kids.get(node)
            if not below:
                break
            node = rng.choice(below)
        while depth_of[node] < target and budget > 0:
            step()
            nxt = b.user_event(
                owner,
                name=rng.choice(["job.step", "job.retry", "job.output"]),
                parent_id=node,
                metadata={"depth": depth_of[node] + 1},
                tags=("bench", "chain"),
            )
            depth_of[nxt] = depth_of[node] + 1
            chain_kids.setdefault(node, []).append(nxt)
            node = nxt
            count += 1
            budget -= 1
        chain_events += count - start_count

    # The other workspace's few events.
    for _ in range(3):
        b.advance(5, 60)
        cust = b.add_customer(b.other_workspace_id, simple=True)
        b.system_event("customer.created", cust)


FANOUT_SPAN_US = 600 * 1_000_000  # the wide parent's children span ten minutes


def _add_fanout(b: _Builder, children: int) -> None:
    """One wide parent: a ``batch.started`` user event under a customer's ``customer.created``,
    with ``children`` ``batch.item`` children spread over ten minutes in time order (distinct
    microsecond timestamps); one child in 500 has a grandchild, so not every child is a leaf."""
    customer = b.add_customer(simple=True)
    root = b.system_event("customer.created", customer, tags=("fanout", "fanout_root"))
    b.advance(1, 2)
    parent = b.user_event(
        customer, name="batch.started", parent_id=root, tags=("fanout", "fanout_parent")
    )
    start = b.now + 1_000_000
    step = max(1, FANOUT_SPAN_US // max(1, children))
    for i in range(children):
        at = start + i * step + b.rng.randrange(step)
        child = b.user_event(
            customer,
            name="batch.item",
            parent_id=parent,
            metadata={"item": i},
            ts=at,
            tags=("fanout", "fanout_child"),
        )
        if i % 500 == 499:
            b.user_event(
                customer,
                name="batch.item.retry",
                parent_id=child,
                metadata={"item": i},
                ts=start + FANOUT_SPAN_US + i,
                tags=("fanout", "fanout_grandchild"),
            )
    b.now = start + FANOUT_SPAN_US * 2


def build_dataset(name: str = "default", seed: int = 42, bench_size: int = 2000) -> Dataset:
    """Build one of the datasets: ``"default"`` (a few hundred nasty events),
    ``"bench"`` (``bench_size`` producer-like events), ``"hostile"`` (default plus a
    10,000-event chain and more broken links) or ``"fanout"`` (one parent with
    ``bench_size`` children). Deterministic for a given seed."""
    if name not in ("default", "bench", "hostile", "fanout"):
        raise ValueError(f"unknown dataset {name!r}")
    builder = _Builder(name, seed)
    if name == "bench":
        _add_bench(builder, bench_size)
    elif name == "fanout":
        _add_fanout(builder, bench_size)
    else:
        _add_default(builder)
        if name == "hostile":
            _add_hostile(builder)
    return builder.finish()
