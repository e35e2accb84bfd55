"""One unit of work: an event ID in, at most one confirmed record out.

    lease the ID       -> "duplicate" if it was published already (the message is acknowledged)
    enrich (API)       -> EnrichedRecord, or a typed error for the task layer to map
    publish            -> marked "sent" when written, then the broker's confirm

Publishing is last and only on success; the caller acknowledges the input after this returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from worker.dedupe import Claim, DedupeStore
from worker.enrichment import EnrichedRecord, enrich_event
from worker.errors import TransientError
from worker.publishing import PublishError, RecordPublisher
from worker.rapidly import EventStore, validate_event_id

log = structlog.get_logger()

LEASE_POLL_SECONDS = 1.0
# A Redis restart takes a second or two: worth waiting for before requeueing a published event.
COMPLETE_ATTEMPTS = 6


class DedupeUnavailable(TransientError):
    def __init__(self, error: BaseException):
        self.error = error
        super().__init__(f"dedupe store unavailable: {type(error).__name__}")


class LeaseBusy(TransientError):
    def __init__(self, event_id: str, waited: float):
        self.event_id = event_id
        super().__init__(
            f"event {event_id} is being published by another worker (waited {waited:.0f}s)"
        )


class NotPublished(TransientError):
    def __init__(self, error: PublishError):
        self.error = error
        super().__init__(str(error))


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome: str  # "published" | "duplicate"
    record: EnrichedRecord | None = None


class EnrichmentService:
    def __init__(
        self,
        store: EventStore,
        publisher: RecordPublisher,
        dedupe: DedupeStore,
        *,
        max_depth: int,
        lease_wait_seconds: float,
        sleep: Callable[[float], None] = time.sleep,
        on_published: Callable[[EnrichedRecord], None] | None = None,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._dedupe = dedupe
        self._max_depth = max_depth
        self._lease_wait = lease_wait_seconds
        self._sleep = sleep
        self._on_published = on_published

    def process(self, event_id: str) -> Outcome:
        event_id = validate_event_id(event_id)
        # One round trip decides: already published (duplicate), being worked on elsewhere
        # (wait), or ours to do under a lease.
        if not self._lease(event_id):
            return Outcome("duplicate")
        marked: list[bool] = []
        try:
            record = enrich_event(event_id, self._store, max_depth=self._max_depth)
            self._publisher.publish(
                record, on_sent=lambda: marked.append(self._mark_sent(record.event_id))
            )
        except PublishError as exc:
            # Alive to see it fail: not confirmed means it goes back to the queue (a record the
            # broker did take anyway becomes a duplicate, never a loss).
            self._release_quietly(event_id)
            raise NotPublished(exc) from exc
        except BaseException:
            self._release_quietly(event_id)
            raise
        if not all(marked):
            self._complete(record.event_id)  # the sent mark did not land: the done mark must
        if self._on_published is not None:
            self._on_published(record)
        return Outcome("published", record)

    def _mark_sent(self, event_id: str) -> bool:
        """The sent mark already means "published" to every reader: once it landed, no further
        write is needed after the confirm."""
        try:
            self._dedupe.mark_sent(event_id)
        except Exception as exc:  # noqa: BLE001 - _complete retries and decides
            log.warning("dedupe.mark_sent_failed", event_id=event_id, error=type(exc).__name__)
            return False
        return True

    def _complete(self, event_id: str) -> None:
        """The record is confirmed: the done mark must land, or the redelivery republishes."""
        for attempt in range(1, COMPLETE_ATTEMPTS + 1):
            try:
                self._dedupe.complete(event_id)
                return
            except Exception as exc:
                if attempt == COMPLETE_ATTEMPTS:
                    raise DedupeUnavailable(exc) from exc
                self._sleep(0.5 * attempt)

    def _lease(self, event_id: str) -> bool:
        started = time.monotonic()
        while True:
            claim = self._dedupe_call(self._dedupe.claim, event_id)
            if claim is Claim.ACQUIRED:
                return True
            if claim is Claim.DONE:
                return False
            waited = time.monotonic() - started
            if waited >= self._lease_wait:
                raise LeaseBusy(event_id, waited)
            self._sleep(LEASE_POLL_SECONDS)

    def _dedupe_call(self, fn: Callable[[str], object], event_id: str) -> object:
        try:
            return fn(event_id)
        except TransientError:
            raise
        except Exception as exc:
            # Without the dedupe store no publish is safe from duplicates: retry later instead.
            raise DedupeUnavailable(exc) from exc

    def _release_quietly(self, event_id: str) -> None:
        try:
            self._dedupe.release(event_id)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself
            log.warning("dedupe.release_failed", event_id=event_id, error=type(exc).__name__)
