"""Typed views of the API's JSON. Unknown fields are kept; the exact object the API sent is too."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

# The six fields an ancestor entry copies, exactly as the API sent them (CONTRACT.md section 2).
ANCESTOR_FIELDS = ("id", "name", "source", "label", "timestamp", "parent_id")
# More events than any workspace holds: a count past it is a broken answer, not a count (it would
# otherwise become a record's child_count, or a page loop that never ends).
MAX_LIST_TOTAL = 1_000_000_000


class Event(BaseModel):
    """One event. ``as_sent()`` returns the object exactly as the API answered it."""

    model_config = ConfigDict(extra="allow", frozen=True)
    # The object as sent, in a slot rather than a pydantic private attribute: the worker parses
    # a hundred events per list page, and a private attribute's set-up was a third of each
    # parse's CPU. Set once, in ``from_api``.
    __slots__ = ("_raw",)

    id: str
    timestamp: str
    source: str
    name: str
    label: str | None = None
    parent_id: str | None = None
    customer_id: str | None = None
    workspace_id: str | None = None
    child_count: int = 0

    if TYPE_CHECKING:  # not an annotation pydantic sees: it would make it a private attribute
        _raw: dict[str, Any]

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Event:
        event = cls.model_validate(raw)
        object.__setattr__(event, "_raw", raw)  # past the frozen model's guard, once
        return event

    def as_sent(self) -> dict[str, Any]:
        return self._raw

    def as_get(self) -> dict[str, Any]:
        """The object as GET /api/events/{id} answers it: list responses differ only in
        ``child_count`` (descendants there, always 0 on GET)."""
        if self._raw.get("child_count", 0) == 0:
            return self._raw
        return {**self._raw, "child_count": 0}

    @property
    def routing_key(self) -> str:
        return f"{self.source}.{self.name}"

    @property
    def is_customer_created(self) -> bool:
        return self.source == "system" and self.name == "customer.created"

    def ancestor_entry(self) -> dict[str, Any]:
        return {field: self._raw.get(field) for field in ANCESTOR_FIELDS}


class EventPage(BaseModel):
    """One page of the list endpoint, from either shape it is documented or observed in."""

    model_config = ConfigDict(frozen=True)

    events: list[Event]
    total: int
    page: int
    pages: int

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> EventPage:
        if "data" in raw:  # what the server sends: {"data": [...], "meta": {...}}
            items = raw["data"]
            meta = raw.get("meta") or {}
            total = meta.get("total", len(items))
            page = meta.get("page", 1)
            pages = meta.get("pages", 1)
        elif "items" in raw:  # Polar's documented shape: {"items": [...], "pagination": {...}}
            items = raw["items"]
            meta = raw.get("pagination") or {}
            total = meta.get("total_count", meta.get("total", len(items)))
            page = meta.get("page", 1)
            pages = meta.get("max_page", meta.get("pages", 1))
        else:
            raise ValueError("list body has neither 'data' nor 'items'")
        if not isinstance(items, list):
            raise ValueError("list body's items are not a list")
        counts = {"total": _count(total), "page": _count(page), "pages": _count(pages)}
        if counts["total"] < 0 or counts["pages"] < 0 or counts["page"] < 1:
            raise ValueError("list body's meta holds a negative count")
        if counts["total"] > MAX_LIST_TOTAL or counts["pages"] > MAX_LIST_TOTAL:
            raise ValueError("list body's meta holds an absurd count")
        return cls(events=[Event.from_api(item) for item in items], **counts)


def _count(value: object) -> int:
    """An integer as JSON sends it: ``3``, not ``3.5``, ``"3"`` or ``true``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"list body's meta holds a {type(value).__name__}, not an integer")
    return value
