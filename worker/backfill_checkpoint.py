"""The backfill's durable parts: time as integer microseconds, the task message it hands over,
and its checkpoint file (cursor, IDs handed over at it, events waiting for their counts).
``worker.backfill`` drives them; see its docstring for the paging and the count resolution."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from worker.errors import BackfillError
from worker.publishing import TaskMessage
from worker.rapidly import Event

TASK_NAME = "events.enrich"
CHECKPOINT_VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- time as integer microseconds: the API's timestamps are exact to the microsecond


def parse_time(text: str) -> int:
    """RFC 3339 with a timezone -> epoch microseconds; ValueError otherwise."""
    parsed = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone (e.g. 2025-03-03T08:00:00Z)")
    delta = parsed - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_time(us: int) -> str:
    """Epoch microseconds -> ``2025-03-03T08:00:00.000001Z`` (``Z``: a raw ``+00:00`` in a URL
    decodes to a space and the API answers 422)."""
    return (
        (_EPOCH + timedelta(microseconds=us))
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def now_us() -> int:
    return parse_time(datetime.now(UTC).isoformat())


def task_message(event_id: str) -> TaskMessage:
    """An ``events.enrich`` task exactly as ``send_task(..., args=[event_id])`` writes it
    (Celery message protocol 2, JSON)."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": TASK_NAME,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr([event_id]),
        "kwargsrepr": "{}",
        "origin": "rapidly-worker-backfill",
        "ignore_result": False,
    }
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps([[event_id], {}, embed]).encode()
    return TaskMessage(body=body, headers=headers, properties={"correlation_id": task_id})


# --- the checkpoint


@dataclass
class Pending:
    event: Event  # as listed: child_count = all descendants
    direct: int = 0  # direct children seen so far
    descendants: int = 0  # what they account for: sum of 1 + their child_count

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event.as_sent(), "direct": self.direct, "desc": self.descendants}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pending:
        return cls(Event.from_api(data["event"]), int(data["direct"]), int(data["desc"]))


@dataclass
class Checkpoint:
    path: Path
    key: str
    cursor: int  # every event before it is handed over (or pending)
    handed: dict[str, int] = field(default_factory=dict)  # id -> timestamp, at/after the floor
    pending: dict[str, Pending] = field(default_factory=dict)
    count: int = 0  # events handed over in all runs

    @classmethod
    def open(cls, path: Path, key: str, since: int) -> Checkpoint:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path, key, since)
        except (OSError, ValueError) as exc:
            raise BackfillError(f"checkpoint {path} is unreadable: {exc}") from None
        if data.get("version") != CHECKPOINT_VERSION or data.get("key") != key:
            raise BackfillError(
                f"checkpoint {path} belongs to another backfill (other token, API or --since): "
                "remove it or pass another --checkpoint"
            )
        return cls(
            path,
            key,
            int(data["cursor"]),
            {str(k): int(v) for k, v in data["handed"].items()},
            {p["event"]["id"]: Pending.from_json(p) for p in data["pending"]},
            int(data["count"]),
        )

    def save(self) -> None:
        data = {
            "version": CHECKPOINT_VERSION,
            "key": self.key,
            "cursor": self.cursor,
            "cursor_time": format_time(self.cursor),
            "handed": self.handed,
            "pending": [p.to_json() for p in self.pending.values()],
            "count": self.count,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def prune(self, floor: int) -> None:
        """IDs handed over before ``floor`` can no longer be listed again: forget them."""
        self.handed = {k: ts for k, ts in self.handed.items() if ts >= floor}


def checkpoint_key(namespace: str, api_url: str, since: int) -> str:
    return hashlib.sha256(f"{namespace}|{api_url}|{since}".encode()).hexdigest()[:16]


def default_checkpoint_path(key: str) -> Path:
    return Path.cwd() / f"rapidly-backfill-{key}.json"


__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "Pending",
    "checkpoint_key",
    "default_checkpoint_path",
    "format_time",
    "now_us",
    "parse_time",
    "task_message",
]
