"""The Rapidly API client: one HTTP call per method, every response class mapped to one error.

It knows nothing of brokers, caches or retries (see ``_store`` for those). One instance per
process, created at boot and closed at shutdown; it is safe to share between threads/greenlets.

    200 + JSON object      -> a typed model, once it answers what was asked: a GET's ``id`` is
                              the requested id, a child listing's children name the parent,
                              ``meta`` counts are sane; anything else -> ApiUnavailable
    200 + anything else    -> ApiUnavailable (transient: seen from proxies and during deploys);
                              so is a body over ``max_body_bytes`` or nested too deep to parse
    3xx                    -> followed once if it stays on the same origin, else ConfigurationError
                              (the token is never sent to another host)
    401 / 403              -> ConfigurationError (the deployment's fault, not the event's)
    404 on GET             -> EventNotYetVisible (transient for a bounded time: replica lag)
    404 on list            -> ConfigurationError (the list endpoint always exists: a wrong URL)
    422                    -> InvalidEventId on GET, UnexpectedResponse on list
    429                    -> RateLimited(retry_after) (empty body; seconds or an HTTP date)
    5xx, timeout, network  -> ApiUnavailable
    anything else          -> UnexpectedResponse
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import structlog
from pydantic import SecretStr, ValidationError

from worker.errors import (
    ApiUnavailable,
    ConfigurationError,
    EventNotYetVisible,
    InvalidCustomerId,
    InvalidEventId,
    RateLimited,
    UnexpectedResponse,
)
from worker.rapidly._models import Event, EventPage
from worker.rapidly._ratelimit import DispatchingLimiter

log = structlog.get_logger()

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 50
# Retry-After is seconds in practice; an absurd value must not park a worker for hours.
MAX_RETRY_AFTER = 300.0
LIST_PAGE_SIZE = 100  # the server clamps larger values to 100
# A page of 100 events is tens of KiB; far more is a proxy's error page or a hostile answer, and
# must not be read into memory whole.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
USER_AGENT = "rapidly-enrichment-worker/0.1"

# Called after every HTTP exchange with (kind, status or error class, seconds); metrics hang here.
Observer = Callable[[str, str, float], None]


# The canonical 36-character hyphenated form only, any case, version 4, RFC 4122 variant.
# uuid.UUID() also takes "urn:uuid:", braces and undashed hex, none of which is an event id.
_UUID4_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.IGNORECASE
)


def is_event_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == 36 and _UUID4_RE.match(value) is not None


def validate_event_id(value: object) -> str:
    """The lower-case form of a UUID version 4, or InvalidEventId; never calls the API."""
    if not is_event_id(value):
        raise InvalidEventId(value)
    assert isinstance(value, str)
    return value.lower()


_UUID_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE
)


def validate_customer_id(value: object) -> str:
    """The lower-case canonical form of a customer's UUID (any version), or InvalidCustomerId."""
    if not isinstance(value, str) or len(value) != 36 or not _UUID_RE.match(value):
        raise InvalidCustomerId(value)
    return value.lower()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); 1 s when unusable."""
    if not value:
        return 1.0
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 1.0
        seconds = parsed.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class RapidlyClient:
    def __init__(
        self,
        base_url: str,
        token: SecretStr,
        *,
        limiter: DispatchingLimiter | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        transport: httpx.BaseTransport | None = None,
        observer: Observer | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._max_body = max_body_bytes
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        self._token = token
        self._limiter = limiter
        self._observer = observer
        # Requests are built by the client (base URL, default headers, timeouts) and sent
        # straight through its transport: the client's send adds an auth flow, redirect
        # following, a cookie jar and event hooks, none of which this client uses (it sends its
        # own Authorization header and follows same-origin redirects itself), and costs a fifth
        # of each request's CPU on top of the transport.
        self._transport = transport or httpx.HTTPTransport(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
        )
        self._http = httpx.Client(
            base_url=self._base,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=False,
            transport=self._transport,
        )
        self._urls: dict[str, httpx.URL] = {}  # the list path's URL, joined once

    def __repr__(self) -> str:  # the token stays out of every repr
        return f"RapidlyClient(base_url={str(self._base)!r})"

    def close(self) -> None:
        self._http.close()

    # --- endpoints

    def get_event(self, event_id: str) -> Event:
        event_id = validate_event_id(event_id)
        body = self._request("get", f"api/events/{event_id}", None, event_id=event_id)
        try:
            event = Event.from_api(body)
        except ValidationError as exc:
            raise ApiUnavailable(
                f"GET event {event_id}: body is not an event ({exc.error_count()} errors)"
            ) from None
        if event.id.lower() != event_id:
            raise ApiUnavailable(f"GET event {event_id}: the body is another event's")
        return event

    def list_events(self, params: dict[str, Any]) -> EventPage:
        body = self._request("list", "api/events/", params, event_id=None)
        try:
            return EventPage.from_api(body)
        except (ValidationError, ValueError, TypeError) as exc:
            raise ApiUnavailable(
                f"list events: body is not an event list ({type(exc).__name__})"
            ) from None

    def list_children(self, parent_id: str, *, page: int = 1) -> EventPage:
        """Direct children of ``parent_id``: ``depth=1``, since without a depth the server
        ignores parent_id."""
        result = self.list_events(
            {"parent_id": parent_id, "depth": 1, "limit": LIST_PAGE_SIZE, "page": page}
        )
        wanted = parent_id.lower()
        if any((child.parent_id or "").lower() != wanted for child in result.events):
            raise ApiUnavailable(f"list children of {parent_id}: a child of another parent")
        return result

    def newest_system_event(self, name: str, customer_id: str) -> EventPage:
        """The customer's newest root system event named ``name``, with its descendant count
        (``child_count`` of a list result): one call, no GET needed afterwards."""
        return self.list_events(
            {
                "name": name,
                "source": "system",
                "customer_id": customer_id,
                "depth": 0,
                "sorting": "-timestamp",
                "limit": 1,
            }
        )

    def check_token(self) -> None:
        """One cheap authenticated call; raises ConfigurationError if the token is rejected."""
        self._request("list", "api/events/", {"limit": 1}, event_id=None)

    # --- one exchange

    def _request(
        self,
        kind: str,
        path: str,
        params: dict[str, Any] | None,
        *,
        event_id: str | None,
    ) -> dict[str, Any]:
        if self._limiter is not None:
            # List calls go first: each answers many GETs.
            self._limiter.acquire(priority=kind == "list")
        url = self._urls.get(path)
        if url is None:
            url = self._base.join(path)
            if kind == "list":
                self._urls[path] = url
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        started = time.monotonic()
        try:
            response, content = self._send(url, params, headers)
            if response.is_redirect:
                response, content = self._follow_same_origin(response, headers)
        except httpx.TimeoutException:
            self._observe(kind, "timeout", started)
            raise ApiUnavailable(f"{kind} {path}: timed out") from None
        except httpx.TransportError as exc:
            self._observe(kind, "network", started)
            raise ApiUnavailable(f"{kind} {path}: {type(exc).__name__}") from None
        self._observe(kind, str(response.status_code), started)
        if content is None:
            raise ApiUnavailable(
                f"{kind} {path}: body over {self._max_body} bytes",
                status=response.status_code,
                request_id=response.headers.get("x-request-id"),
            )
        return self._interpret(kind, path, response, content, event_id=event_id)

    def _send(
        self, url: httpx.URL, params: dict[str, Any] | None, headers: dict[str, str]
    ) -> tuple[httpx.Response, bytes | None]:
        """The response and its body, or None for a body over the cap (not read further)."""
        request = self._http.build_request("GET", url, params=params, headers=headers)
        response = self._transport.handle_request(request)
        response.request = request
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_body:
                return response, None
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self._max_body:
                    return response, None
                chunks.append(chunk)
            return response, b"".join(chunks)
        finally:
            response.close()

    def _follow_same_origin(
        self, response: httpx.Response, headers: dict[str, str]
    ) -> tuple[httpx.Response, bytes | None]:
        location = response.headers.get("location", "")
        target = response.url.join(location)
        if (target.scheme, target.host, target.port) != (
            self._base.scheme,
            self._base.host,
            self._base.port,
        ):
            raise ConfigurationError(
                f"API redirected to another origin ({target.scheme}://{target.host}); "
                "not following with the token: check RAPIDLY_API_URL",
                status=response.status_code,
                request_id=response.headers.get("x-request-id"),
            )
        return self._send(target, None, headers)

    def _interpret(
        self,
        kind: str,
        path: str,
        response: httpx.Response,
        content: bytes,
        *,
        event_id: str | None,
    ) -> dict[str, Any]:
        status = response.status_code
        request_id = response.headers.get("x-request-id")
        what = f"{kind} {path}"
        if status == 200:
            try:
                body = json.loads(content)
            except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
                body = None
            if not isinstance(body, dict):
                log.warning(
                    "api.bad_body",
                    kind=kind,
                    request_id=request_id,
                    content_type=response.headers.get("content-type"),
                )
                raise ApiUnavailable(
                    f"{what}: 200 with a body that is not a JSON object",
                    status=200,
                    request_id=request_id,
                )
            log.debug("api.ok", kind=kind, request_id=request_id)
            return body
        log.info("api.error_status", kind=kind, status=status, request_id=request_id)
        if status in (401, 403):
            detail = _error_code(content)
            raise ConfigurationError(
                f"API rejected the token ({detail}): check RAPIDLY_API_TOKEN and its scopes",
                status=status,
                request_id=request_id,
            )
        if status == 404 and event_id is not None:
            raise EventNotYetVisible(event_id, request_id=request_id)
        if status == 404:
            # The list endpoint exists whatever the query: a 404 there means the base URL is
            # wrong, and every GET's 404 would be taken for a missing event and dead-lettered.
            raise ConfigurationError(
                f"API answered 404 to {what}: check RAPIDLY_API_URL (the client calls "
                f"{{RAPIDLY_API_URL}}/api/events/)",
                status=status,
                request_id=request_id,
            )
        if status == 422 and event_id is not None:
            raise InvalidEventId(event_id)
        if status == 429:
            raise RateLimited(
                parse_retry_after(response.headers.get("retry-after")), request_id=request_id
            )
        if status >= 500 or status in (408, 425):
            raise ApiUnavailable(what, status=status, request_id=request_id)
        if 300 <= status < 400:
            raise ConfigurationError(
                f"API redirected {what} more than once", status=status, request_id=request_id
            )
        raise UnexpectedResponse(what, status=status, request_id=request_id)

    def _observe(self, kind: str, status: str, started: float) -> None:
        if self._observer is not None:
            self._observer(kind, status, time.monotonic() - started)


def _error_code(content: bytes) -> str:
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return "no error code"
    if isinstance(body, dict):
        return str(body.get("error") or "no error code")[:64]
    return "no error code"
