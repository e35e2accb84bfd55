"""One unit of work: an event ID in, a confirmed record out (at least once).

    lease the ID       -> "duplicate" if it was published already (the message is acknowledged)
    enrich (API)       -> EnrichedRecord, or a typed error for the task layer to map
    publish            -> marked "sent" when written, then the broker's confirm (basic.ack)

Publishing is last and only on success; the caller acknowledges the input after this returns.
Only a confirm makes a record published: a nack, a channel the broker closed, a lost connection or
a confirm that never came undoes the sent mark and the input goes back to the queue (NotPublished).
A record that cannot be published as it is raises Unpublishable (dead-lettered).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

import structlog

from worker.dedupe import Claim, DedupeStore, Lease
from worker.enrichment import EnrichedRecord, enrich_event
from worker.errors import (
    DedupeUnavailable,
    InvalidMessage,
    LeaseBusy,
    NotPublished,
    PublishError,
    TransientError,
    Unpublishable,
)
from worker.publishing import RecordPublisher
from worker.rapidly import EventStore, count_calls, validate_customer_id, validate_event_id
from worker.rapidly._retry import event_deadline

log = structlog.get_logger()

T = TypeVar("T")

LEASE_POLL_SECONDS = 1.0
# A record is in the broker but its mark is not in Redis: until the mark lands, a redelivery would
# publish it again. Holding the (unacknowledged) message and retrying is cheap in a greenlet, so
# ride out a Redis restart or failover rather than give up after a second or two.
COMPLETE_WAIT_SECONDS = 60.0
COMPLETE_POLL_SECONDS = 0.02
# The webhook types whose system event the ingress asks for (CONTRACT.md section 6).
CUSTOMER_EVENT_NAMES = frozenset({"customer.created", "customer.updated", "customer.deleted"})


class OutcomeKind(StrEnum):
    """What became of an event; the strings are those of the logs and metrics."""

    PUBLISHED = "published"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Outcome:
    PUBLISHED: ClassVar[OutcomeKind] = OutcomeKind.PUBLISHED
    DUPLICATE: ClassVar[OutcomeKind] = OutcomeKind.DUPLICATE

    outcome: OutcomeKind
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
        deadline_seconds: float | None = None,
    ) -> None:
        self._deadline = deadline_seconds
        self._store = store
        self._publisher = publisher
        self._dedupe = dedupe
        self._max_depth = max_depth
        self._lease_wait = lease_wait_seconds
        self._sleep = sleep
        self._on_published = on_published

    def process(self, event_id: str) -> Outcome:
        with self._unit_of_work():
            return self._process(event_id)

    def _process(self, event_id: str) -> Outcome:
        event_id = validate_event_id(event_id)
        # EVENT_DEADLINE_SECONDS bounds the waiting before the publish (API retries, 429s,
        # replica lag, another worker's lease); the publish and the marks after it are bounded by
        # their own timeouts, since cutting them short would requeue a record already out.
        event_deadline.set(None if self._deadline is None else time.monotonic() + self._deadline)
        # One round trip decides: already published (duplicate), being worked on by another
        # claim (wait), or ours to do under a lease.
        lease = self._lease(event_id)
        if lease is None:
            return Outcome(Outcome.DUPLICATE)
        try:
            record = enrich_event(event_id, self._store, max_depth=self._max_depth)
            # Still ours, and the store reachable, right before the broker sees the record: a
            # lease that lapsed during a long enrichment, or a store that is down, must not lead
            # to a record nobody can mark.
            if not self._dedupe_call(self._dedupe.confirm, lease):
                if self._dedupe_call(self._dedupe.is_done, event_id):
                    return Outcome(Outcome.DUPLICATE, record)
                raise LeaseBusy(event_id, 0.0)
            # The sent mark is written right after the record, by the publisher.
            marked = self._publisher.publish(record, mark=lease)
        except PublishError as exc:
            # Published means confirmed (basic.ack). Anything else (nacked, channel closed by the
            # broker, connection lost, confirm timed out) undoes the sent mark, so that the
            # redelivery publishes again; a duplicate is then possible only if the broker routed
            # a record whose confirm was lost, and consumers dedupe it by message_id.
            self._release_reliably(lease)
            if exc.unpublishable:
                raise Unpublishable(event_id, exc) from exc
            raise NotPublished(exc) from exc
        except BaseException:
            self._release_quietly(lease)
            raise
        if not marked:
            self._complete(lease)  # the sent mark did not land: the done mark must
        if self._on_published is not None:
            self._on_published(record)
        return Outcome(Outcome.PUBLISHED, record)

    def process_customer_event(self, name: str, customer_id: str) -> Outcome:
        """A webhook's work: the customer's newest system event ``name``, then exactly what
        ``process`` does with its id (same dedupe, same record). The list call that finds it
        primes the store, so the enrichment repeats no call."""
        with self._unit_of_work():
            return self._process_customer_event(name, customer_id)

    @contextmanager
    def _unit_of_work(self) -> Iterator[None]:
        """Counts the API calls made for one event; the summary line (enrich.finished) logs
        them, whatever the outcome."""
        with count_calls() as usage:
            try:
                yield
            finally:
                structlog.contextvars.bind_contextvars(api_calls=usage.calls)

    def _process_customer_event(self, name: str, customer_id: str) -> Outcome:
        if not isinstance(name, str) or name not in CUSTOMER_EVENT_NAMES:
            raise InvalidMessage(
                "invalid_arguments",
                f"event name {str(name)[:64]!r} is not one of {sorted(CUSTOMER_EVENT_NAMES)}",
            )
        customer_id = validate_customer_id(customer_id)
        event = self._store.system_event(name, customer_id)
        # The summary line (enrich.finished) then names the event as well as the customer.
        structlog.contextvars.bind_contextvars(event_id=event.id)
        return self.process(event.id)

    def _complete(self, lease: Lease) -> None:
        """The record is confirmed: the done mark must land, or a redelivery republishes."""
        error = self._until_stored(self._dedupe.complete, lease)
        if error is not None:
            raise DedupeUnavailable(error) from error

    def _claim_reading(self, event_id: str) -> Lease | Claim:
        """The claim, and in the same round trip the event's shared cached copy when both live
        in one Redis and the store would read it next."""
        claim_reading: Any = getattr(self._dedupe, "claim_reading", None)
        redis = getattr(self._store, "redis", None)
        key = None
        if claim_reading is not None and redis is not None and redis is self._dedupe_redis():
            key = self._store.shared_key(event_id)
        if key is None:
            return self._dedupe.claim(event_id)
        claim, raw = claim_reading(event_id, key)
        self._store.accept_shared(raw, event_id)
        return claim  # type: ignore[no-any-return]

    def _dedupe_redis(self) -> Any:
        return getattr(self._dedupe, "redis", None)

    def _lease(self, event_id: str) -> Lease | None:
        started = time.monotonic()
        claim_fn: Callable[[str], Lease | Claim] = self._claim_reading
        while True:
            claim = self._dedupe_call(claim_fn, event_id)
            claim_fn = self._dedupe.claim
            if isinstance(claim, Lease):
                return claim
            if claim is Claim.DONE:
                return None
            waited = time.monotonic() - started
            deadline = event_deadline.get()
            if waited >= self._lease_wait or (
                deadline is not None and time.monotonic() + LEASE_POLL_SECONDS > deadline
            ):
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

    def _release_reliably(self, lease: Lease) -> None:
        """The sent mark must go, or the redelivery would take an unconfirmed record for a
        published one; past ``COMPLETE_WAIT_SECONDS`` logged loudly (the record may then be lost
        if the broker never routed it)."""
        error = self._until_stored(self._dedupe.release, lease)
        if error is not None:
            log.error("dedupe.release_failed", event_id=lease.key, error=type(error).__name__)

    def _until_stored(self, write: Callable[[Lease], None], lease: Lease) -> Exception | None:
        """Retries ``write`` for up to ``COMPLETE_WAIT_SECONDS``; the last error if it never
        landed. Polled often: while the store is down each attempt fails at once (connection
        refused), and the moment it is back the write should land before anything else can
        happen to this process (a kill in that gap means a second record)."""
        started = time.monotonic()
        while True:
            try:
                write(lease)
                return None
            except Exception as exc:  # noqa: BLE001 - retried, then handed to the caller
                if time.monotonic() - started >= COMPLETE_WAIT_SECONDS:
                    return exc
                self._sleep(COMPLETE_POLL_SECONDS)

    def _release_quietly(self, lease: Lease) -> None:
        try:
            self._dedupe.release(lease)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself
            log.warning("dedupe.release_failed", event_id=lease.key, error=type(exc).__name__)
