"""Every exception the worker defines, in one tree.

    WorkerError                      root: everything the worker raises on purpose
    ├── TransientError               worth retrying: the message goes back to the queue
    │   ├── ApiUnavailable           5xx, timeout, connection error, a body that is not JSON
    │   ├── RateLimited              429; carries the server's Retry-After in seconds
    │   ├── EventNotYetVisible       404 for an event that may still be replicating
    │   ├── RateLimitWaitTooLong     429s kept coming past the event's deadline
    │   ├── EventDeadlineExceeded    EVENT_DEADLINE_SECONDS used up waiting on the API
    │   ├── DedupeUnavailable        the dedupe store (Redis) did not answer
    │   ├── LeaseBusy                another worker holds the event's lease past the wait
    │   └── NotPublished             the broker did not confirm the record (wraps PublishError)
    ├── PermanentError               retrying cannot help: the event is dead-lettered
    │   ├── InvalidEventId           not a UUID version 4: rejected before any API call
    │   ├── EventNotFound            still 404 after the bounded wait for replica lag
    │   │   └── CustomerEventNotFound    a webhook's system event still not listed after it
    │   ├── InvalidCustomerId        a webhook task's customer id is not a UUID
    │   ├── RetriesExhausted         a transient error outlived the retry budget
    │   ├── RedeliveriesExhausted    the message kept coming back without an outcome (crashes)
    │   ├── InvalidMessage           a task message that cannot be executed as sent
    │   ├── UnexpectedResponse       the API answered something no retry will change (e.g. 422)
    │   └── Unpublishable            the record cannot be published as it is (no retry helps)
    ├── ConfigurationError           the deployment is wrong (401/403, bad setting): the event is
    │                                neither retried nor dead-lettered; it goes back to the queue
    ├── SettingsError                a setting is wrong at start: one line naming the variable
    ├── PublishError                 a publish the broker did not confirm; the service maps it to
    │                                NotPublished or Unpublishable, the CLI tools report it
    ├── DeadLetter                   the task layer's verdict: dead-letter this message
    ├── NoLongerNeeded               a request answered from the cache while it waited for a slot
    ├── BackfillError                the backfill cannot go on (checkpoint, broker refusing)
    └── webhook ingress (answered as an HTTP status, never raised out of the server)
        ├── Unauthorized             missing or bad signature, stale timestamp: 401
        ├── NotAWebhook              authentic, but not a webhook body: 400
        └── BrokerUnavailable        the task message was not confirmed in time: 503

Each leaf keeps its identifiers as attributes and builds its message in ``__init__``, so a message
never has to be parsed and never contains a secret.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Root of every error the worker raises on purpose."""


class TransientError(WorkerError):
    """A failure that may go away if the same call is tried again later."""


class ApiUnavailable(TransientError):
    def __init__(self, what: str, *, status: int | None = None, request_id: str | None = None):
        self.what = what
        self.status = status
        self.request_id = request_id
        detail = f"API unavailable: {what}"
        if status is not None:
            detail += f" (HTTP {status})"
        if request_id:
            detail += f" [request {request_id}]"
        super().__init__(detail)


class RateLimited(TransientError):
    def __init__(self, retry_after: float, *, request_id: str | None = None):
        self.retry_after = retry_after
        self.request_id = request_id
        super().__init__(f"API rate limit hit; retry after {retry_after:.1f}s")


class EventNotYetVisible(TransientError):
    def __init__(self, event_id: str, *, request_id: str | None = None):
        self.event_id = event_id
        self.request_id = request_id
        super().__init__(f"event {event_id} answered 404 (may still be replicating)")


class RateLimitWaitTooLong(TransientError):
    """429s kept coming past the event's deadline: the message goes back to the queue."""

    def __init__(self, waited: float):
        self.waited = waited
        super().__init__(f"still rate limited after waiting {waited:.0f}s")


class EventDeadlineExceeded(TransientError):
    """The event used up EVENT_DEADLINE_SECONDS waiting on the API: requeued."""

    def __init__(self, waited_for: str):
        self.waited_for = waited_for
        super().__init__(f"event deadline reached while waiting ({waited_for})")


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


class PermanentError(WorkerError):
    """Retrying cannot help: the input message is dead-lettered with ``reason``."""

    reason = "permanent_error"


class InvalidEventId(PermanentError):
    reason = "invalid_event_id"

    def __init__(self, value: object):
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        self.value = value
        super().__init__(f"event id {shown} is not a UUID version 4")


class EventNotFound(PermanentError):
    reason = "event_not_found"

    def __init__(self, event_id: str, *, waited: float, attempts: int):
        self.event_id = event_id
        self.waited = waited
        self.attempts = attempts
        super().__init__(
            f"event {event_id} still answered 404 after {attempts} attempts over {waited:.1f}s"
        )


class CustomerEventNotFound(EventNotFound):
    """No system event ``name`` of the customer listed yet, after the same bounded wait."""

    def __init__(self, name: str, customer_id: str, *, waited: float, attempts: int):
        self.name = name
        self.customer_id = customer_id
        self.waited = waited
        self.attempts = attempts
        self.event_id = f"{name} of customer {customer_id}"
        PermanentError.__init__(
            self,
            f"no system {name} event of customer {customer_id} after {attempts} list calls "
            f"over {waited:.1f}s",
        )


class InvalidCustomerId(PermanentError):
    reason = "invalid_customer_id"

    def __init__(self, value: object):
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        self.value = value
        super().__init__(f"customer id {shown} is not a UUID")


class RetriesExhausted(PermanentError):
    reason = "exhausted_retries"

    def __init__(self, last_error: BaseException, *, attempts: int, elapsed: float):
        self.last_error = last_error
        self.attempts = attempts
        self.elapsed = elapsed
        super().__init__(
            f"gave up after {attempts} attempts over {elapsed:.1f}s; last error: {last_error}"
        )


class RedeliveriesExhausted(PermanentError):
    reason = "exhausted_retries"

    def __init__(self, event_id: str, *, deliveries: int):
        self.event_id = event_id
        self.attempts = deliveries
        super().__init__(
            f"event {event_id} was delivered {deliveries} times without an outcome "
            "(worker crashed or was killed while processing it)"
        )


class InvalidMessage(PermanentError):
    """A task message that cannot be run as sent (wrong arguments, content type, shape)."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


class UnexpectedResponse(PermanentError):
    reason = "unexpected_response"

    def __init__(self, what: str, *, status: int, request_id: str | None = None):
        self.what = what
        self.status = status
        self.request_id = request_id
        detail = f"API answered HTTP {status} to {what}"
        if request_id:
            detail += f" [request {request_id}]"
        super().__init__(detail)


class ConfigurationError(WorkerError):
    """The deployment is wrong, not the event: never dead-letter or drop the message for it."""

    def __init__(self, what: str, *, status: int | None = None, request_id: str | None = None):
        self.what = what
        self.status = status
        self.request_id = request_id
        detail = what if status is None else f"{what} (HTTP {status})"
        if request_id:
            detail += f" [request {request_id}]"
        super().__init__(detail)


class Unpublishable(PermanentError):
    """The record itself cannot be published as it is (it failed before the broker saw a byte,
    for a reason no retry changes): dead-lettered instead of cycling through the queue."""

    reason = "unpublishable"

    def __init__(self, event_id: str, error: PublishError):
        self.event_id = event_id
        self.error = error
        super().__init__(f"record of event {event_id} cannot be published: {error}")


class SettingsError(WorkerError):
    """A setting is wrong; the message is one line naming the variable, never its secret value."""


class PublishError(WorkerError):
    """The broker did not confirm: the input must not be acknowledged.

    ``sent`` tells whether the message had already been written to the broker (the confirm then
    failed or timed out, so the broker may or may not hold it); ``nacked``, that it refused it;
    ``refused``, that the broker closed the channel or connection over it (AccessRefused,
    NotFound, PreconditionFailed...: the deployment's fault, reported as not ready);
    ``unpublishable``, that the message failed before a byte was written for a reason of its own
    (it cannot be encoded as an AMQP frame, say): retrying it cannot help.
    """

    def __init__(
        self,
        detail: str,
        *,
        sent: bool,
        nacked: bool = False,
        refused: bool = False,
        unpublishable: bool = False,
    ):
        self.sent = sent
        self.nacked = nacked
        self.refused = refused
        self.unpublishable = unpublishable
        super().__init__(detail)


class DeadLetter(WorkerError):
    """Raised by the task layer once it decided the message is dead-lettered: the request then
    publishes the original message to the dead-letter queue with ``reason`` before acking."""

    def __init__(self, reason: str, detail: str, attempts: int):
        self.reason = reason
        self.detail = detail
        self.attempts = attempts
        super().__init__(reason, detail, attempts)


class NoLongerNeeded(WorkerError):
    """The request was answered from the cache while it waited for its slot: do not send it."""


class BackfillError(WorkerError):
    """The backfill cannot go on (checkpoint of another window, broker refusing); one line."""


class Unauthorized(WorkerError):
    """Missing or bad signature, or a timestamp outside the tolerance: 401."""


class NotAWebhook(WorkerError):
    """Authentic, but not a webhook body (not JSON, no type or data, a bad customer id): 400."""


class BrokerUnavailable(WorkerError):
    """The task message was not confirmed within the deadline: 503, the sender retries."""
