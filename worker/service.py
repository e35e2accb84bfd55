"""One unit of work: an event ID in, at most one confirmed record out.

    lease the ID       -> "duplicate" if it was published already (the message is acknowledged)
    enrich (API)       -> EnrichedRecord, or a typed error for the task layer to map
    publish            -> marked "sent" when written, then the broker's confirm

Publishing is last and only on success; the caller acknowledges the input after this returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from worker.dedupe import Claim, DedupeStore, Lease
from worker.enrichment import EnrichedRecord, enrich_event
from worker.errors import TransientError
from worker.publishing import PublishError, RecordPublisher
from worker.rapidly import EventStore, validate_event_id

log = structlog.get_logger()

T = TypeVar("T")

LEASE_POLL_SECONDS = 1.0
# A record is in the broker but its mark is not in Redis: until the mark lands, a redelivery would
# publish it again. Holding the (unacknowledged) message and retrying is cheap in a greenlet, so
# ride out a Redis restart or failover rather than give up after a second or two.
COMPLETE_WAIT_SECONDS = 60.0


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
        unconfirmed_is_published: bool = True,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._dedupe = dedupe
        self._max_depth = max_depth
        self._lease_wait = lease_wait_seconds
        self._sleep = sleep
        self._on_published = on_published
        # False (PUBLISH_UNCONFIRMED=retry): a record written but never confirmed goes back to
        # the queue like an unwritten one. On a cluster a killed node loses what it had taken
        # but not yet replicated, so there a second record (deduped by message_id downstream)
        # is the price of losing none.
        self._unconfirmed_is_published = unconfirmed_is_published

    def process(self, event_id: str) -> Outcome:
        event_id = validate_event_id(event_id)
        # One round trip decides: already published (duplicate), being worked on by another
        # claim (wait), or ours to do under a lease.
        lease = self._lease(event_id)
        if lease is None:
            return Outcome("duplicate")
        marked: list[bool] = []
        try:
            record = enrich_event(event_id, self._store, max_depth=self._max_depth)
            # Still ours, and the store reachable, right before the broker sees the record: a
            # lease that lapsed during a long enrichment, or a store that is down, must not lead
            # to a record nobody can mark.
            if not self._dedupe_call(self._dedupe.confirm, lease):
                if self._dedupe_call(self._dedupe.is_done, event_id):
                    return Outcome("duplicate", record)
                raise LeaseBusy(event_id, 0.0)
            with ExitStack() as stack:
                mark = self._dedupe_call(stack.enter_context, self._dedupe.sent_marker(lease))
                self._publisher.publish(
                    record, on_sent=lambda: marked.append(self._mark_sent(mark, lease))
                )
        except PublishError as exc:
            if (
                self._unconfirmed_is_published
                and exc.sent
                and not exc.nacked
                and marked
                and all(marked)
            ):
                # The record was written whole and marked; only its confirm is missing (the
                # connection dropped while waiting). Publishing again would break the contract's
                # at-most-once promise, so it counts as published; logged for the operator.
                log.warning("publish.unconfirmed", event_id=event_id, error=str(exc))
                return Outcome("published", record)
            # Not written, refused (nacked), or unconfirmed with PUBLISH_UNCONFIRMED=retry: it
            # goes back to the queue, and the lease or sent mark of this claim is released.
            self._release_quietly(lease)
            raise NotPublished(exc) from exc
        except BaseException:
            self._release_quietly(lease)
            raise
        if not all(marked):
            self._complete(lease)  # the sent mark did not land: the done mark must
        if self._on_published is not None:
            self._on_published(record)
        return Outcome("published", record)

    def _mark_sent(self, mark: Callable[[], None], lease: Lease) -> bool:
        """The sent mark already means "published" to every reader: once it landed, no further
        write is needed after the confirm."""
        try:
            mark()
        except Exception as exc:  # noqa: BLE001 - _complete retries and decides
            log.warning("dedupe.mark_sent_failed", event_id=lease.key, error=type(exc).__name__)
            return False
        return True

    def _complete(self, lease: Lease) -> None:
        """The record is confirmed: the done mark must land, or the redelivery republishes."""
        waited, attempt = 0.0, 0
        while True:
            attempt += 1
            try:
                self._dedupe.complete(lease)
                return
            except Exception as exc:
                if waited >= COMPLETE_WAIT_SECONDS:
                    raise DedupeUnavailable(exc) from exc
                delay = min(1.0, 0.1 * attempt)
                self._sleep(delay)
                waited += delay

    def _lease(self, event_id: str) -> Lease | None:
        started = time.monotonic()
        while True:
            claim = self._dedupe_call(self._dedupe.claim, event_id)
            if isinstance(claim, Lease):
                return claim
            if claim is Claim.DONE:
                return None
            waited = time.monotonic() - started
            if waited >= self._lease_wait:
                raise LeaseBusy(event_id, waited)
            self._sleep(LEASE_POLL_SECONDS)

    def _dedupe_call(self, fn: Callable[[Any], T], arg: Any) -> T:
        try:
            return fn(arg)
        except TransientError:
            raise
        except Exception as exc:
            # Without the dedupe store no publish is safe from duplicates: retry later instead.
            raise DedupeUnavailable(exc) from exc

    def _release_quietly(self, lease: Lease) -> None:
        try:
            self._dedupe.release(lease)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself
            log.warning("dedupe.release_failed", event_id=lease.key, error=type(exc).__name__)
