"""The domain: resolve an event's hierarchy and build its record. No Celery, no kombu."""

from worker.enrichment._enrich import enrich_event
from worker.enrichment._hierarchy import DEFAULT_MAX_DEPTH, Hierarchy, walk_ancestors
from worker.enrichment._record import SCHEMA, EnrichedRecord, build_record, rfc3339_now

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "SCHEMA",
    "EnrichedRecord",
    "Hierarchy",
    "build_record",
    "enrich_event",
    "rfc3339_now",
    "walk_ancestors",
]
