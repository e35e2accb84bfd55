"""The enriched record (schema ``rapidly.enriched_event.v1``) and where it is routed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.enrichment._hierarchy import Hierarchy, IncompleteReason
from worker.rapidly import ChildCounts, Event

SCHEMA = "rapidly.enriched_event.v1"
# AMQP's shortstr: a routing key over 255 bytes cannot even be encoded (CONTRACT.md section 3).
MAX_ROUTING_KEY_BYTES = 255


def routing_key_for(source: str, name: str) -> str:
    """``<source>.<name>``, cut to 255 UTF-8 bytes at a character boundary (a lone surrogate,
    which no frame can carry, becomes ``?``)."""
    key = f"{source}.{name}"
    encoded = key.encode("utf-8", "replace")
    if len(encoded) <= MAX_ROUTING_KEY_BYTES and len(encoded) == len(key.encode("utf-8", "ignore")):
        return key
    return encoded[:MAX_ROUTING_KEY_BYTES].decode("utf-8", "ignore")


@dataclass(frozen=True, slots=True)
class EnrichedRecord:
    event_id: str
    routing_key: str
    body: dict[str, Any]

    @property
    def schema(self) -> str:
        return str(self.body["schema"])

    @property
    def is_customer_created(self) -> bool:
        return self.routing_key == "system.customer.created"

    # The hierarchy's fields, typed, for code that reports on a record (the body is what is
    # published, and stays the single source of truth).
    @property
    def root_id(self) -> str:
        return str(self._hierarchy["root_id"])

    @property
    def depth(self) -> int:
        return int(self._hierarchy["depth"])

    @property
    def complete(self) -> bool:
        return bool(self._hierarchy["complete"])

    @property
    def incomplete_reason(self) -> IncompleteReason | None:
        reason: IncompleteReason | None = self._hierarchy["incomplete_reason"]
        return reason

    @property
    def child_count(self) -> int:
        return int(self._hierarchy["child_count"])

    @property
    def descendant_count(self) -> int:
        return int(self._hierarchy["descendant_count"])

    @property
    def _hierarchy(self) -> dict[str, Any]:
        hierarchy: dict[str, Any] = self.body["hierarchy"]
        return hierarchy


def rfc3339_now(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def build_record(
    event: Event, hierarchy: Hierarchy, counts: ChildCounts, *, now: datetime | None = None
) -> EnrichedRecord:
    body = {
        "schema": SCHEMA,
        # Exactly as GET /api/events/{id} answers it: unknown fields kept, child_count untouched.
        "event": event.as_get(),
        "hierarchy": hierarchy.as_record(
            child_count=counts.direct, descendant_count=counts.descendants
        ),
        "enriched_at": rfc3339_now(now),
    }
    return EnrichedRecord(
        event_id=event.id, routing_key=routing_key_for(event.source, event.name), body=body
    )
