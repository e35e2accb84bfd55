"""Enrich one event: fetch it, walk its parents, count its children, build the record.

The event ID arrives validated (``worker.service`` validates it once, on entry); the unit of work
around this (dedupe, publish) is ``worker.service``.
"""

from __future__ import annotations

from worker.enrichment._hierarchy import walk_ancestors
from worker.enrichment._record import EnrichedRecord, build_record
from worker.rapidly import EventStore


def enrich_event(event_id: str, store: EventStore, *, max_depth: int) -> EnrichedRecord:
    """Raises EventNotFound, RetriesExhausted, ConfigurationError or a TransientError."""
    event = store.event(event_id)
    try:
        hierarchy = walk_ancestors(event, store.parent, max_depth=max_depth)
    except BaseException:
        store.leave(event.id)  # never counted: the events waiting for it go now
        raise
    counts = store.child_counts(event)  # leaves the event once counted
    return build_record(event, hierarchy, counts)
