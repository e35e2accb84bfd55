"""Query parameters of the list calls that answer for many events at once.

Start and end timestamps are exclusive to the microsecond, so a window that must include the
event at ``at`` starts one microsecond before it; the offset is sent as ``Z`` (a raw ``+00:00``
decodes to a space in a URL and the server answers 422).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any


def exclusive_start(at: datetime) -> str:
    return (at - timedelta(microseconds=1)).isoformat().replace("+00:00", "Z")


def sibling_window_params(parent_id: str, at: datetime, size: int) -> dict[str, Any]:
    """``parent_id``'s direct children from ``at`` on, oldest first (``depth=1``: without a
    depth the server ignores ``parent_id``)."""
    return {
        "parent_id": parent_id,
        "depth": 1,
        "sorting": "timestamp",
        "start_timestamp": exclusive_start(at),
        "limit": size,
        "page": 1,
    }


def direct_count_params(event_id: str) -> dict[str, Any]:
    """A one-item page of ``event_id``'s children: its ``meta.total`` is the direct count."""
    return {"parent_id": event_id, "depth": 1, "limit": 1, "page": 1}


def family_params(parent_id: str, size: int) -> dict[str, Any]:
    """The first page of ``parent_id``'s children, oldest first: the whole family when it fits,
    else the first window over it."""
    return {"parent_id": parent_id, "depth": 1, "sorting": "timestamp", "limit": size, "page": 1}
