"""An in-memory API behind httpx.MockTransport, for unit tests of the client and the store.

Integration tests use the real simulator over HTTP instead.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

TOKEN = "unit_test_token_5f2b9c"
BASE = "http://api.test"


def new_id() -> str:
    return str(uuid.uuid4())


def make_event(
    event_id: str,
    parent_id: str | None = None,
    *,
    name: str = "api_call",
    source: str = "user",
    ts: str = "2026-11-20T10:00:00Z",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": event_id,
        "timestamp": ts,
        "workspace_id": "ws",
        "customer_id": None,
        "customer": None,
        "external_customer_id": None,
        "member_id": None,
        "external_member_id": None,
        "child_count": 0,
        "parent_id": parent_id,
        "label": name.title(),
        "source": source,
        "name": name,
        "metadata": {},
        **extra,
    }


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class FakeApi:
    def __init__(self, events: list[dict[str, Any]] | None = None) -> None:
        self.events: dict[str, dict[str, Any]] = {e["id"]: e for e in events or []}
        self.calls: Counter[str] = Counter()
        self.requests: list[httpx.Request] = []
        self.script: list[Callable[[httpx.Request], httpx.Response | None]] = []
        # Ids not yet in ``depth`` lists: the server writes a user event's closure rows seconds
        # after the event (GET and lists without ``depth`` see it at once).
        self.late: set[str] = set()
        self.lock = threading.Lock()

    def add(self, *events: dict[str, Any]) -> None:
        for event in events:
            self.events[event["id"]] = event

    def descendants(self, event_id: str) -> int:
        seen: set[str] = set()
        frontier = [event_id]
        while frontier:
            current = frontier.pop()
            for e in self.events.values():
                if e["parent_id"] == current and e["id"] not in seen and e["id"] != event_id:
                    seen.add(e["id"])
                    frontier.append(e["id"])
        return len(seen)

    def below(self, event_id: str, depth: int) -> list[dict[str, Any]]:
        """``parent_id=event_id&depth=N``: descendants 1..N levels down, each once, the event
        itself excluded (breadth first, as the simulator answers)."""
        seen, frontier, found = {event_id}, [event_id], []
        for _ in range(depth):
            level = [
                e
                for e in self.events.values()
                if e["parent_id"] in frontier and e["id"] not in seen
            ]
            seen.update(e["id"] for e in level)
            found.extend(level)
            frontier = [e["id"] for e in level]
        return found

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            if self.script:
                scripted = self.script.pop(0)(request)
                if scripted is not None:
                    self.calls["scripted"] += 1
                    return scripted
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"error": "invalid_token", "error_description": "x"})
        path = request.url.path
        if path == "/api/events/":
            self.calls["list"] += 1
            params = request.url.params
            parent = params.get("parent_id") if "depth" in params else None
            items = [
                e for e in self.events.values() if e["parent_id"] == parent and e["id"] != parent
            ]
            if parent is not None and int(params["depth"]) > 1:
                items = self.below(parent, int(params["depth"]))
            if "depth" in params:
                items = [e for e in items if e["id"] not in self.late]
            if "start_timestamp" in params:  # exclusive, as the server's
                start = _ts(params["start_timestamp"])
                items = [e for e in items if _ts(e["timestamp"]) > start]
            items.sort(key=lambda e: _ts(e["timestamp"]))
            limit = min(int(params.get("limit", 10)), 100)
            page = int(params.get("page", 1))
            chunk = items[(page - 1) * limit : page * limit]
            data = [{**e, "child_count": self.descendants(e["id"])} for e in chunk]
            total = len(items) if chunk or page == 1 else 0
            return httpx.Response(
                200,
                json={
                    "data": data,
                    "meta": {
                        "total": total,
                        "page": page,
                        "per_page": limit,
                        "pages": max(1, -(-len(items) // limit)),
                    },
                },
            )
        if path.startswith("/api/events/"):
            self.calls["get"] += 1
            event_id = path.rsplit("/", 1)[1]
            event = self.events.get(event_id)
            if event is None:
                return httpx.Response(
                    404, json={"error": "ResourceNotFound", "detail": "Not found"}
                )
            return httpx.Response(
                200,
                content=json.dumps({**event, "child_count": 0}).encode(),
                headers={"content-type": "application/json", "x-request-id": "req-1"},
            )
        return httpx.Response(404, json={"error": "ResourceNotFound", "detail": "Not found"})


class DictRedis:
    """The Redis calls the event cache makes, over a dict; ``reads`` lists the keys read."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.reads: list[str] = []

    def get(self, key: str) -> str | None:
        self.reads.append(key)
        return self.data.get(key)

    def pipeline(self, transaction: bool = False) -> DictRedis:
        return self

    def set(self, key: str, value: str, ex: int | None = None) -> None:
        self.data[key] = value

    def execute(self) -> None:
        return None
