"""Enrich one event: fetch it, walk its parents, count its children, build the record."""

from __future__ import annotations

from worker.enrichment._hierarchy import walk_ancestors
from worker.enrichment._record import EnrichedRecord, build_record
from worker.rapidly import EventStore, validate_event_id


def enrich_event(event_id: str, store: EventStore, *, max_depth: int) -> EnrichedRecord:
    """Raises InvalidEventId (before any call), EventNotFound, RetriesExhausted or
    ConfigurationError."""
    event_id = validate_event_id(event_id)
    event = store.event(event_id)
    hierarchy = walk_ancestors(event, store.parent, max_depth=max_depth)
    counts = store.child_counts(event)
    return build_record(event, hierarchy, counts)
