"""The aiohttp server imitating the Rapidly Events API (see /work/shared/RAPIDLY_API.md)."""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import email.utils
import json
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from ._config import DATASET_FIELDS, STARTUP_ONLY, ConfigError, SimulatorConfig, parse_rate_limit
from ._dataset import (
    SYSTEM_LABELS,
    Dataset,
    build_dataset,
    classify_uuid4,
    format_timestamp,
    normalize_uuid,
    timestamp_to_us,
)

MAX_LIMIT = 100
MAX_DEPTH_PARAM = 5

_JSON = "application/json"
_DUMPS_KW: dict[str, Any] = {"ensure_ascii": False, "separators": (",", ":")}

_INVALID_TOKEN = json.dumps(
    {
        "error": "invalid_token",
        "error_description": "The access token provided is expired, revoked, malformed, "
        "or invalid for other reasons.",
    }
).encode()
_UNAUTHORIZED = json.dumps({"error": "Unauthorized", "detail": "Unauthorized"}).encode()
_INSUFFICIENT_SCOPE = json.dumps(
    {
        "error": "insufficient_scope",
        "error_description": "The request requires higher privileges than provided by the "
        "access token. Required scopes: events:read events:write",
    }
).encode()
_NOT_FOUND = json.dumps({"error": "ResourceNotFound", "detail": "Not found"}).encode()
_ROUTE_NOT_FOUND = json.dumps({"detail": "Not Found"}).encode()
_METHOD_NOT_ALLOWED = json.dumps({"detail": "Method Not Allowed"}).encode()
_GARBAGE = (
    ("text/html; charset=utf-8", b"<html><body><h1>oops</h1></body></html>"),
    (_JSON, b"<html>oops"),
    (_JSON, b'{"id": "'),
)
_METADATA_PARAM = re.compile(r"metadata\[([^\]]+)\]")
_INT = re.compile(r"^\s*[+-]?\d+\s*$")
_NUMBER = re.compile(r"^\s*[+-]?\d+(?:\.\d+)?\s*$")


# --------------------------------------------------------------------------------------
# Bookkeeping
# --------------------------------------------------------------------------------------


class Stats:
    """Counters over every /api and /v1 request (admin requests are never counted)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests_total = 0
        self.by_status: dict[str, int] = {}
        self.by_kind: dict[str, int] = {}
        self.by_token_status: dict[str, int] = {}
        self.rate_limited = 0
        self.faults = {"error": 0, "garbage": 0, "timeout": 0}
        self.lagged = 0
        self.redirected = 0
        self.in_flight = 0
        self.since = time.time()

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "by_status": dict(sorted(self.by_status.items())),
            "by_kind": dict(sorted(self.by_kind.items())),
            "rate_limited": self.rate_limited,
            "by_token_status": dict(sorted(self.by_token_status.items())),
            "faults": dict(self.faults),
            "lagged": self.lagged,
            "redirected": self.redirected,
            "in_flight": self.in_flight,
            "since": self.since,
        }


class TokenBucket:
    """Capacity = the per-second rate rounded up (at least 1), refilled at the rate."""

    def __init__(self, rate_per_second: float) -> None:
        self.rate = rate_per_second
        self.capacity = max(1, math.ceil(rate_per_second))
        self.tokens = float(self.capacity)
        self.stamp = time.monotonic()

    def take(self) -> float | None:
        """None when a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.rate


class _Index:
    """Prebuilt response bodies and lookup tables over a dataset."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        ws = dataset.workspace_id
        self.get_body: dict[str, bytes] = {}
        self.list_body: dict[str, bytes] = {}
        self.by_name: dict[str, list[str]] = {}
        self.by_customer: dict[str, list[str]] = {}
        self.by_external: dict[str, list[str]] = {}
        for event_id, event in dataset.all_events.items():
            self.get_body[event_id] = json.dumps(event, **_DUMPS_KW).encode()
            listed = {**event, "child_count": dataset.list_child_count[event_id]}
            self.list_body[event_id] = json.dumps(listed, **_DUMPS_KW).encode()
            self.by_name.setdefault(event["name"], []).append(event_id)
            if event["customer_id"] is not None:
                self.by_customer.setdefault(event["customer_id"], []).append(event_id)
            if event["external_customer_id"] is not None:
                self.by_external.setdefault(event["external_customer_id"], []).append(event_id)
        ts = dataset.timestamp_us
        self.sorted_ws = sorted((k for k in dataset.events), key=ts.__getitem__)
        self.roots_ws = [k for k in self.sorted_ws if dataset.parent_of[k] is None]
        # The roots' timestamps in roots_ws order (ascending): a window of roots by time is a
        # bisection, as a real API answers it from an index, not a scan of every root (which
        # made the simulator the bottleneck of a 200,000-event run).
        self.root_stamps = [ts[k] for k in self.roots_ws]
        self.visible = dict.fromkeys(dataset.events, True)
        self.workspace_id = ws
        # The customers table (hard-deleted customers are gone from it).
        self.customer_external = {c["id"]: c["external_id"] for c in dataset.customers.values()}
        self.external_customers: dict[str, list[str]] = {}
        for c in dataset.customers.values():
            if c["external_id"] is not None:
                self.external_customers.setdefault(c["external_id"], []).append(c["id"])

    def roots_between(self, start_us: int | None, end_us: int | None) -> list[str]:
        """The roots with ``start_us < timestamp < end_us`` (either bound optional), ascending."""
        stamps = self.root_stamps
        lo = 0 if start_us is None else bisect.bisect_right(stamps, start_us)
        hi = len(stamps) if end_us is None else bisect.bisect_left(stamps, end_us)
        return self.roots_ws[lo:hi]

    def descendants(self, starts: Iterable[str], depth: int) -> list[str]:
        """Breadth-first, down to ``depth`` levels, each node once, starts excluded."""
        children = self.dataset.children
        frontier = list(starts)
        seen = set(frontier)
        found: list[str] = []
        for _ in range(depth):
            nxt: list[str] = []
            for node in frontier:
                for child in children.get(node, ()):
                    if child not in seen:
                        seen.add(child)
                        nxt.append(child)
            if not nxt:
                break
            found.extend(nxt)
            frontier = nxt
        return found


class _ListQuery:
    """Validated list parameters (FastAPI would have produced the same 422s)."""

    def __init__(self) -> None:
        self.page = 1
        self.limit = 10
        self.descending = True
        self.depth: int | None = None
        self.parent_id: str | None = None
        self.workspace_id: list[str] | None = None
        self.customer_id: list[str] | None = None
        self.external_customer_id: list[str] | None = None
        self.name: list[str] | None = None
        self.source: list[str] | None = None
        self.start_us: int | None = None
        self.end_us: int | None = None
        self.metadata: dict[str, list[str]] = {}


def _uuid_error(raw: str, loc: list[Any]) -> dict[str, Any] | None:
    kind = classify_uuid4(raw)
    if kind is None:
        return None
    if kind == "uuid_version":
        return {
            "type": "uuid_version",
            "loc": loc,
            "msg": "UUID version 4 expected",
            "input": raw,
            "ctx": {"expected_version": 4},
        }
    if re.fullmatch(r"[0-9a-fA-F-]*", raw):
        reason = f"invalid length: found {len(raw)}" if "-" not in raw else "invalid group count"
    else:
        bad = next((i for i, ch in enumerate(raw) if ch not in "0123456789abcdefABCDEF-"), 0)
        reason = f"invalid character: found `{raw[bad]}` at {bad}"
    return {
        "type": "uuid_parsing",
        "loc": loc,
        "msg": f"Input should be a valid UUID, {reason}",
        "input": raw,
        "ctx": {"error": reason},
    }


def _metadata_text(value: Any) -> str | None:
    """What Postgres ``metadata->>'key'`` gives for a JSON value."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _parse_datetime(raw: str, name: str) -> tuple[int | None, dict[str, Any] | None]:
    loc = ["query", name]
    text = raw.strip()
    if _NUMBER.match(text):
        seconds = float(text)
        if abs(seconds) > 2e10:  # pydantic treats big numbers as milliseconds
            seconds /= 1000
        return timestamp_to_us(datetime.fromtimestamp(seconds, UTC)), None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None, {
            "type": "datetime_from_date_parsing",
            "loc": loc,
            "msg": "Input should be a valid datetime or date, invalid character in year",
            "input": raw,
            "ctx": {"error": "invalid character in year"},
        }
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None, {
            "type": "timezone_aware",
            "loc": loc,
            "msg": "Input should have timezone info",
            "input": raw,
        }
    return timestamp_to_us(parsed), None


def _int_param(
    query: Any,
    name: str,
    errors: list[dict[str, Any]],
    *,
    gt: int | None = None,
    ge: int | None = None,
    le: int | None = None,
) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    loc = ["query", name]
    if not _INT.match(raw):
        errors.append(
            {
                "type": "int_parsing",
                "loc": loc,
                "msg": "Input should be a valid integer, unable to parse string as an integer",
                "input": raw,
            }
        )
        return None
    value = int(raw)
    if gt is not None and value <= gt:
        errors.append(
            {
                "type": "greater_than",
                "loc": loc,
                "msg": f"Input should be greater than {gt}",
                "input": raw,
                "ctx": {"gt": gt},
            }
        )
        return None
    if ge is not None and value < ge:
        errors.append(
            {
                "type": "greater_than_equal",
                "loc": loc,
                "msg": f"Input should be greater than or equal to {ge}",
                "input": raw,
                "ctx": {"ge": ge},
            }
        )
        return None
    if le is not None and value > le:
        errors.append(
            {
                "type": "less_than_equal",
                "loc": loc,
                "msg": f"Input should be less than or equal to {le}",
                "input": raw,
                "ctx": {"le": le},
            }
        )
        return None
    return value


def parse_list_query(query: Any) -> tuple[_ListQuery, list[dict[str, Any]]]:
    """Parse and validate the list endpoint's query string (a MultiDict)."""
    q = _ListQuery()
    errors: list[dict[str, Any]] = []
    page = _int_param(query, "page", errors, gt=0)
    if page is not None:
        q.page = page
    limit = _int_param(query, "limit", errors, gt=0)
    if limit is not None:
        q.limit = min(MAX_LIMIT, limit)
    sortings = query.getall("sorting", [])
    for i, criterion in enumerate(sortings):
        if criterion not in ("timestamp", "-timestamp"):
            errors.append(
                {
                    "type": "enum",
                    "loc": ["query", "sorting", i],
                    "msg": "Input should be 'timestamp' or '-timestamp'",
                    "input": criterion,
                    "ctx": {"expected": "'timestamp' or '-timestamp'"},
                }
            )
    if sortings and not errors:
        q.descending = sortings[0].startswith("-")
    q.depth = _int_param(query, "depth", errors, ge=0, le=MAX_DEPTH_PARAM)
    parent = query.get("parent_id")
    if parent is not None:
        err = _uuid_error(parent, ["query", "parent_id"])
        if err:
            errors.append(err)
        else:
            q.parent_id = normalize_uuid(parent)
    for name in ("workspace_id", "customer_id"):
        values = query.getall(name, [])
        if values:
            good = []
            for i, raw in enumerate(values):
                err = _uuid_error(raw, ["query", name, i] if len(values) > 1 else ["query", name])
                if err:
                    errors.append(err)
                else:
                    good.append(normalize_uuid(raw))
            setattr(q, name, good)
    for name in ("external_customer_id", "name"):
        values = query.getall(name, [])
        if values:
            setattr(q, name, list(values))
    sources = query.getall("source", [])
    if sources:
        for raw in sources:
            if raw not in ("system", "user"):
                errors.append(
                    {
                        "type": "enum",
                        "loc": ["query", "source"],
                        "msg": "Input should be 'system' or 'user'",
                        "input": raw,
                        "ctx": {"expected": "'system' or 'user'"},
                    }
                )
        q.source = list(sources)
    for name in ("start_timestamp", "end_timestamp"):
        raw = query.get(name)
        if raw is not None:
            value, err = _parse_datetime(raw, name)
            if err:
                errors.append(err)
            elif name == "start_timestamp":
                q.start_us = value
            else:
                q.end_us = value
    for key, value in query.items():
        match = _METADATA_PARAM.match(key)
        if match is not None:
            q.metadata.setdefault(match.group(1), []).append(value)
    return q, errors


# --------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------


class Simulator:
    """One simulated Rapidly API: dataset, knobs, counters and the aiohttp application."""

    def __init__(self, config: SimulatorConfig | None = None, dataset: Dataset | None = None):
        self.config = config or SimulatorConfig()
        self.dataset = dataset or build_dataset(
            self.config.dataset, self.config.seed, self.config.bench_size
        )
        self._index = _Index(self.dataset)
        self.stats = Stats()
        self._log: collections.deque[dict[str, Any]] = collections.deque(maxlen=2000)
        self._reset_runtime()
        self._runner: web.AppRunner | None = None
        self.url: str | None = None
        self.port: int | None = None
        self._dataset_cache: dict[str, bytes] = {}
        # Answers served as given, ahead of the dataset (``POST /_sim/overrides``): an event the
        # dataset lacks (a routing key over 255 bytes) or a wrong answer (another event's id, a
        # child of another parent, a huge or deeply nested body).
        self._override_get: dict[str, bytes] = {}
        self._override_children: dict[str, bytes] = {}

    # -- lifecycle ----------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def start(self) -> str:
        runner = web.AppRunner(
            self.make_app(), access_log=None, shutdown_timeout=0.25, handler_cancellation=True
        )
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        self._runner = runner
        port = runner.addresses[0][1]
        self.port = int(port)
        wildcard = ("0.0.0.0", "::", "")  # noqa: S104 - a comparison, not a bind
        shown = self.config.host if self.config.host not in wildcard else "127.0.0.1"
        if ":" in shown:
            shown = f"[{shown}]"
        self.url = f"http://{shown}:{self.port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- knobs --------------------------------------------------------------------------

    def _reset_runtime(self) -> None:
        self._fault_rng = random.Random(self.config.seed)
        self._latency_rng = random.Random(f"latency:{self.config.seed}")
        self._rate = parse_rate_limit(self.config.rate_limit) if self.config.rate_limit else None
        self._buckets: dict[str, TokenBucket] = {}
        self._lag_counts: dict[str, int] = {}

    def update_config(self, changes: dict[str, Any]) -> SimulatorConfig:
        """Apply a partial update (validated as a whole; nothing changes on error)."""
        if not isinstance(changes, dict):
            raise ConfigError("the body must be a JSON object")
        new = self.config.with_changes(changes)
        for name in STARTUP_ONLY:
            if getattr(new, name) != getattr(self.config, name):
                raise ConfigError(f"{name} cannot change while the server runs")
        old = self.config
        self.config = new
        if any(getattr(new, f) != getattr(old, f) for f in DATASET_FIELDS):
            self.dataset = build_dataset(new.dataset, new.seed, new.bench_size)
            self._index = _Index(self.dataset)
            self._dataset_cache.clear()
            self._reset_runtime()
        else:
            if new.rate_limit != old.rate_limit:
                self._rate = parse_rate_limit(new.rate_limit) if new.rate_limit else None
                self._buckets.clear()
            if new.lag_reads != old.lag_reads:
                self._lag_counts.clear()
        return new

    def reset(self) -> None:
        """Counters, lag counts, rate-limit buckets and fault RNG back to their start."""
        self.stats.reset()
        self._log.clear()
        self._reset_runtime()

    def add_system_event(self, name: str, customer_id: str) -> dict[str, Any]:
        """A system event ``name`` of the customer, timestamped now, visible from now on (the
        customer is created if unknown): what Rapidly's background job does after a webhook was
        sent, for tests of a system event that lands after its webhook."""
        if name not in ("customer.created", "customer.updated", "customer.deleted"):
            raise ValueError(f"name must be a customer.* event, not {name!r}")
        customer_id = str(uuid.UUID(str(customer_id)))
        dataset, index = self.dataset, self._index
        now_us = timestamp_to_us(datetime.now(UTC))
        customer = dataset.customers.get(customer_id)
        if customer is None:
            customer = {
                "id": customer_id,
                "created_at": format_timestamp(now_us),
                "modified_at": None,
                "metadata": {},
                "external_id": None,
                "email": f"late-{customer_id[:8]}@example.com",
                "email_verified": False,
                "type": "individual",
                "name": None,
                "billing_address": None,
                "workspace_id": dataset.workspace_id,
                "deleted_at": None,
                "avatar_url": None,
            }
            dataset.customers[customer_id] = customer
            index.customer_external[customer_id] = None
        event_id = str(uuid.uuid4())
        event = {
            "id": event_id,
            "timestamp": format_timestamp(now_us),
            "workspace_id": dataset.workspace_id,
            "customer_id": customer_id,
            "customer": dict(customer),
            "external_customer_id": None,
            "member_id": None,
            "external_member_id": None,
            "child_count": 0,
            "parent_id": None,
            "label": SYSTEM_LABELS.get(name, name),
            "source": "system",
            "name": name,
            "metadata": {
                "customer_id": customer_id,
                "customer_email": customer["email"],
                "customer_name": customer["name"],
                "customer_external_id": customer["external_id"],
            },
        }
        for table in (dataset.all_events, dataset.events):
            table[event_id] = event
        dataset.parent_of[event_id] = None
        dataset.timestamp_us[event_id] = now_us
        dataset.list_child_count[event_id] = 0
        dataset.tags[event_id] = ["late"]
        body = json.dumps(event, **_DUMPS_KW).encode()
        index.get_body[event_id] = index.list_body[event_id] = body
        index.by_name.setdefault(name, []).append(event_id)
        index.by_customer.setdefault(customer_id, []).append(event_id)
        index.sorted_ws.append(event_id)  # the newest: the order stays sorted
        # After every root stamped before it (all of them, unless the dataset has future events).
        at = bisect.bisect_right(index.root_stamps, now_us)
        index.roots_ws.insert(at, event_id)
        index.root_stamps.insert(at, now_us)
        index.visible[event_id] = True
        self._dataset_cache.clear()
        return event

    def stats_snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot()

    def recent_requests(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._log)[-limit:] if limit > 0 else []

    # -- dispatch -----------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if path == "/_sim" or path.startswith("/_sim/"):
            return await self._admin(request, path)
        deprecated = False
        if path == "/v1" or path.startswith("/v1/"):
            path = "/api" + path[3:]
            deprecated = True
        if path == "/api" or path.startswith("/api/"):
            return await self._api_entry(request, path, deprecated)
        return self._respond(404, _ROUTE_NOT_FOUND, _JSON)

    def _caller(self, request: web.Request) -> str:
        header = request.headers.get("Authorization")
        if not header:
            return "missing"
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "missing"
        config = self.config
        if token == config.token:
            return "valid" if config.token_valid else "invalid"
        if token == config.noscope_token:
            return "noscope"
        return "invalid"

    @staticmethod
    def _kind(path: str) -> tuple[str, str | None]:
        if path == "/api/events":
            return "redirect", None
        if path == "/api/events/":
            return "list", None
        if path.startswith("/api/events/"):
            rest = path[len("/api/events/") :]
            if "/" not in rest:
                return "get", unquote(rest)
            if rest.endswith("/") and "/" not in rest[:-1]:
                return "redirect_slash", None
        return "other", None

    @staticmethod
    def _respond(
        status: int,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        response = web.Response(status=status, body=body, headers=headers)
        if content_type is not None:
            response.headers["Content-Type"] = content_type
        return response

    async def _api_entry(
        self, request: web.Request, path: str, deprecated: bool
    ) -> web.StreamResponse:
        stats = self.stats
        kind, raw_id = self._kind(path)
        caller = self._caller(request)
        stats.requests_total += 1
        stats.by_kind[kind] = stats.by_kind.get(kind, 0) + 1
        stats.by_token_status[caller] = stats.by_token_status.get(caller, 0) + 1
        stats.in_flight += 1
        try:
            config = self.config
            if config.latency_ms > 0 or config.latency_jitter_ms > 0:
                jitter = config.latency_jitter_ms
                delay = config.latency_ms + (
                    self._latency_rng.uniform(-jitter, jitter) if jitter else 0.0
                )
                if delay > 0:
                    await asyncio.sleep(delay / 1000.0)
            response, wait_after = self._api(request, path, kind, raw_id, caller)
            request_id = str(uuid.uuid4())
            headers = response.headers
            headers["X-Request-ID"] = request_id
            headers["X-RateLimit-Limit"] = "0"
            headers["X-RateLimit-Remaining"] = "0"
            headers["X-RateLimit-Reset"] = "0"
            if deprecated:
                headers["Deprecation"] = "true"
            status = str(response.status)
            stats.by_status[status] = stats.by_status.get(status, 0) + 1
            self._log.append(
                {
                    "time": time.time(),
                    "method": request.method,
                    "path": request.rel_url.raw_path,
                    "query": request.rel_url.raw_query_string,
                    "kind": kind,
                    "token": caller,
                    "status": response.status,
                    "request_id": request_id,
                }
            )
            if wait_after > 0:
                await asyncio.sleep(wait_after)
            return response
        finally:
            stats.in_flight -= 1

    def _api(
        self, request: web.Request, path: str, kind: str, raw_id: str | None, caller: str
    ) -> tuple[web.Response, float]:
        config = self.config
        if kind == "other":
            return self._respond(404, _ROUTE_NOT_FOUND, _JSON), 0.0
        if kind in ("redirect", "redirect_slash"):
            target = "/api/events/" if kind == "redirect" else path.rstrip("/")
            qs = request.rel_url.raw_query_string
            location = f"{request.scheme}://{request.host}{target}" + (f"?{qs}" if qs else "")
            return self._respond(307, b"", None, {"Location": location}), 0.0
        if request.method not in ("GET", "HEAD"):
            return self._respond(405, _METHOD_NOT_ALLOWED, _JSON, {"Allow": "GET"}), 0.0

        # Authentication and scope, in the server's order.
        if caller == "invalid":
            return self._respond(
                401, _INVALID_TOKEN, _JSON, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            ), 0.0
        if caller == "missing":
            return self._respond(401, _UNAUTHORIZED, _JSON), 0.0
        if caller == "noscope":
            return self._respond(
                403,
                _INSUFFICIENT_SCOPE,
                _JSON,
                {"WWW-Authenticate": 'Bearer error="insufficient_scope"'},
            ), 0.0

        # Faults: the rate limit first, then one draw for error / garbage / timeout.
        if self._rate is not None:
            bucket = self._buckets.get(config.token)
            if bucket is None:
                bucket = self._buckets[config.token] = TokenBucket(self._rate)
            wait = bucket.take()
            if wait is not None:
                self.stats.rate_limited += 1
                seconds = max(1, math.ceil(wait))
                if config.retry_after_http_date:
                    # Round up to the next whole second: the date must not be too early.
                    retry = email.utils.formatdate(math.ceil(time.time() + seconds), usegmt=True)
                else:
                    retry = str(seconds)
                return self._respond(429, b"", None, {"Retry-After": retry}), 0.0
        draw = self._fault_rng.random()
        wait_after = 0.0
        if draw < config.error_rate:
            self.stats.faults["error"] += 1
            return self._respond(500, b"Internal Server Error", "text/plain; charset=utf-8"), 0.0
        if draw < config.error_rate + config.garbage_rate:
            self.stats.faults["garbage"] += 1
            content_type, body = _GARBAGE[self._fault_rng.randrange(len(_GARBAGE))]
            return self._respond(200, body, content_type), 0.0
        if draw < config.error_rate + config.garbage_rate + config.timeout_rate:
            self.stats.faults["timeout"] += 1
            wait_after = config.timeout_seconds

        if kind == "get":
            assert raw_id is not None
            return self._get(raw_id), wait_after
        return self._list(request), wait_after

    def _get(self, raw_id: str) -> web.Response:
        override = self._override_get.get(raw_id.lower())
        if override is not None:
            return self._respond(200, override, _JSON)
        config = self.config
        if config.redirect_to:
            self.stats.redirected += 1
            location = f"{config.redirect_to}/api/events/{raw_id}"
            return self._respond(307, b"", None, {"Location": location})
        index = self._index
        if raw_id in index.visible:  # fast path: the canonical spelling of a known id
            event_id = raw_id
        else:
            error = _uuid_error(raw_id, ["path", "id"])
            if error is not None:
                return self._respond(
                    422,
                    json.dumps(
                        {"error": "RequestValidationError", "detail": [error]}, **_DUMPS_KW
                    ).encode(),
                    _JSON,
                )
            event_id = normalize_uuid(raw_id)
        if event_id not in index.visible:
            return self._respond(404, _NOT_FOUND, _JSON)
        if config.lag_reads > 0:
            seen = self._lag_counts.get(event_id, 0) + 1
            self._lag_counts[event_id] = seen
            if seen <= config.lag_reads:
                self.stats.lagged += 1
                return self._respond(404, _NOT_FOUND, _JSON)
        return self._respond(200, index.get_body[event_id], _JSON)

    def _list(self, request: web.Request) -> web.Response:
        parent = request.rel_url.query.get("parent_id")
        override = self._override_children.get(parent.lower()) if parent else None
        if override is not None:
            return self._respond(200, override, _JSON)
        q, errors = parse_list_query(request.rel_url.query)
        if errors:
            return self._respond(
                422,
                json.dumps(
                    {"error": "RequestValidationError", "detail": errors}, **_DUMPS_KW
                ).encode(),
                _JSON,
            )
        ids = self.run_list_query(q)
        offset = (q.page - 1) * q.limit
        page_ids = ids[offset : offset + q.limit]
        total = len(ids) if page_ids else 0
        meta = {
            "total": total,
            "page": q.page,
            "per_page": q.limit,
            "pages": math.ceil(total / q.limit),
        }
        body = b"".join(
            (
                b'{"data":[',
                b",".join(self._index.list_body[i] for i in page_ids),
                b'],"meta":',
                json.dumps(meta).encode(),
                b"}",
            )
        )
        return self._respond(200, body, _JSON)

    def run_list_query(self, q: _ListQuery) -> list[str]:
        """Every matching id in the requested order (before pagination)."""
        index = self._index
        dataset = index.dataset
        events = dataset.all_events
        ts = dataset.timestamp_us
        ws = index.workspace_id

        # The narrowest index that every match must be in.
        base: list[str] | None = None

        def narrow(candidates: list[str]) -> None:
            nonlocal base
            if base is None or len(candidates) < len(base):
                base = candidates

        customer_ids: set[str] | None = None
        customer_externals: set[str] = set()
        if q.customer_id is not None:
            customer_ids = set(q.customer_id)
            for cid in q.customer_id:
                ext = index.customer_external.get(cid)
                if ext is not None:
                    customer_externals.add(ext)
            found: list[str] = []
            for cid in q.customer_id:
                found.extend(index.by_customer.get(cid, ()))
            for ext in customer_externals:
                found.extend(index.by_external.get(ext, ()))
            narrow(list(dict.fromkeys(found)))
        external_ids: set[str] | None = None
        external_customers: set[str] = set()
        if q.external_customer_id is not None:
            external_ids = set(q.external_customer_id)
            for ext in q.external_customer_id:
                external_customers.update(index.external_customers.get(ext, ()))
            found = []
            for ext in q.external_customer_id:
                found.extend(index.by_external.get(ext, ()))
            for cid in external_customers:
                found.extend(index.by_customer.get(cid, ()))
            narrow(list(dict.fromkeys(found)))
        names = set(q.name) if q.name is not None else None
        if q.name is not None:
            found = []
            for name in dict.fromkeys(q.name):
                found.extend(index.by_name.get(name, ()))
            narrow(found)
        sources = set(q.source) if q.source is not None else None
        workspaces = set(q.workspace_id) if q.workspace_id is not None else None
        start, end, metadata = q.start_us, q.end_us, q.metadata

        def match(event_id: str) -> bool:
            ev = events[event_id]
            if ev["workspace_id"] != ws:
                return False
            if workspaces is not None and ev["workspace_id"] not in workspaces:
                return False
            if customer_ids is not None and not (
                ev["customer_id"] in customer_ids
                or ev["external_customer_id"] in customer_externals
            ):
                return False
            if external_ids is not None and not (
                ev["external_customer_id"] in external_ids
                or ev["customer_id"] in external_customers
            ):
                return False
            if names is not None and ev["name"] not in names:
                return False
            if sources is not None and ev["source"] not in sources:
                return False
            stamp = ts[event_id]
            if start is not None and not stamp > start:
                return False
            if end is not None and not stamp < end:
                return False
            for key, wanted in metadata.items():
                if _metadata_text(ev["metadata"].get(key)) not in wanted:
                    return False
            return True

        if q.depth is not None:
            if q.parent_id is not None:
                if q.depth == 0 or q.parent_id not in events:
                    return []
                ids = [i for i in index.descendants([q.parent_id], q.depth) if match(i)]
            else:
                source = base if base is not None else index.roots_between(start, end)
                anchors = [i for i in source if dataset.parent_of[i] is None and match(i)]
                ids = anchors + [i for i in index.descendants(anchors, q.depth) if match(i)]
        elif base is None:
            ordered = index.sorted_ws
            if q.descending:
                ordered = ordered[::-1]
            return [i for i in ordered if match(i)]
        else:
            ids = [i for i in base if match(i)]
        ids.sort(key=ts.__getitem__, reverse=q.descending)
        return ids

    # -- admin --------------------------------------------------------------------------

    async def _admin(self, request: web.Request, path: str) -> web.StreamResponse:
        method = request.method
        route = path.rstrip("/")
        if route == "/_sim/health" and method == "GET":
            return web.json_response({"status": "ok", "dataset": self.dataset.name})
        if route == "/_sim/stats" and method == "GET":
            return web.json_response(self.stats_snapshot())
        if route == "/_sim/stats/reset" and method == "POST":
            self.stats.reset()
            return web.json_response(self.stats_snapshot())
        if route == "/_sim/reset" and method == "POST":
            self.reset()
            return web.json_response(self.stats_snapshot())
        if route == "/_sim/config" and method == "GET":
            return web.json_response(self.config.to_dict())
        if route == "/_sim/config" and method == "POST":
            try:
                changes = await request.json()
            except ValueError:
                return web.json_response({"error": "the body must be a JSON object"}, status=400)
            try:
                new = self.update_config(changes)
            except ConfigError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response(new.to_dict())
        if route == "/_sim/system_events" and method == "POST":
            try:
                wanted = await request.json()
                event = self.add_system_event(wanted["name"], wanted["customer_id"])
            except (ValueError, KeyError, TypeError) as exc:
                return web.json_response({"error": f"bad system event: {exc}"}, status=400)
            return web.json_response({"event": event})
        if route == "/_sim/dataset" and method == "GET":
            return self._dataset_response(request)
        if route == "/_sim/events" and method == "POST":
            try:
                body = await request.json()
                created = self.add_events(body["events"])
            except (ValueError, KeyError, TypeError) as exc:
                return web.json_response({"error": f"bad event spec: {exc}"}, status=400)
            return web.json_response({"events": created})
        if route == "/_sim/overrides" and method == "POST":
            return await self._set_overrides(request)
        if route == "/_sim/requests" and method == "GET":
            try:
                limit = int(request.query.get("limit", "100"))
            except ValueError:
                return web.json_response({"error": "limit must be an integer"}, status=400)
            return web.json_response(self.recent_requests(limit))
        return web.json_response({"error": "unknown admin endpoint"}, status=404)

    def add_events(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert events into the token's workspace, as an ingest would (admin only).

        Each spec needs ``name``; ``id`` (default: a new UUID v4), ``timestamp`` (RFC 3339,
        default: now; several may share one), ``source`` (``user``), ``parent_id``, ``label``,
        ``customer_id`` and ``metadata`` are optional. Returns the events as GET answers them.
        """
        if not isinstance(specs, list):
            raise TypeError("events must be a list")
        old = self.dataset
        added: dict[str, dict[str, Any]] = {}
        for spec in specs:
            event_id = str(spec.get("id") or uuid.uuid4())
            if classify_uuid4(event_id) is not None or event_id in old.all_events:
                raise ValueError(f"id {event_id!r} is not a new UUID v4")
            stamp = spec.get("timestamp")
            moment = datetime.fromisoformat(stamp) if stamp else datetime.now(UTC)
            if moment.tzinfo is None:
                raise ValueError(f"timestamp {stamp!r} has no timezone")
            name = str(spec["name"])
            added[event_id] = {
                "id": event_id,
                "timestamp": format_timestamp(timestamp_to_us(moment.astimezone(UTC))),
                "workspace_id": old.workspace_id,
                "customer_id": spec.get("customer_id"),
                "customer": None,
                "external_customer_id": None,
                "member_id": None,
                "external_member_id": None,
                "child_count": 0,
                "parent_id": spec.get("parent_id"),
                "label": spec.get("label") or name,
                "source": spec.get("source", "user"),
                "name": name,
                "metadata": dict(spec.get("metadata") or {}),
            }
        self.dataset = Dataset(
            name=old.name,
            seed=old.seed,
            workspace_id=old.workspace_id,
            other_workspace_id=old.other_workspace_id,
            all_events={**old.all_events, **added},
            tags={**old.tags, **{event_id: ["added"] for event_id in added}},
            customers=old.customers,
            invalid_ids=old.invalid_ids,
            unknown_ids=[u for u in old.unknown_ids if u["id"] not in added],
            order_seed=old._order_seed,
        )
        self._index = _Index(self.dataset)
        self._dataset_cache.clear()
        return [self.dataset.get_event(event_id) for event_id in added]

    async def _set_overrides(self, request: web.Request) -> web.Response:
        """``{"get": {id: body}, "children": {parent_id: body}, "clear": bool}``; a body is JSON
        (served as its encoding) or a string (served as its UTF-8 bytes, for bodies that are
        not valid JSON or too deep to build as objects)."""
        try:
            changes = await request.json()
        except ValueError:
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        if not isinstance(changes, dict):
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        if changes.get("clear"):
            self._override_get.clear()
            self._override_children.clear()
        for key, table in (("get", self._override_get), ("children", self._override_children)):
            for event_id, body in (changes.get(key) or {}).items():
                raw = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
                table[str(event_id).lower()] = raw.encode()
        return web.json_response(
            {"get": len(self._override_get), "children": len(self._override_children)}
        )

    def _dataset_response(self, request: web.Request) -> web.Response:
        key = request.rel_url.raw_query_string
        body = self._dataset_cache.get(key)
        if body is None:
            query = request.query
            try:
                max_depth = int(query.get("max_depth", "100"))
            except ValueError:
                return web.json_response({"error": "max_depth must be an integer"}, status=400)
            tags = query.getall("tag", []) or None
            ids = query.getall("id", []) or None
            with_expected = query.get("expected", "1").lower() not in ("0", "false", "no")
            summary = self.dataset.summary(
                max_depth=max_depth, tags=tags, ids=ids, with_expected=with_expected
            )
            body = json.dumps(summary, ensure_ascii=False).encode()
            if len(self._dataset_cache) > 16:
                self._dataset_cache.clear()
            self._dataset_cache[key] = body
        return web.Response(body=body, content_type=_JSON)


# --------------------------------------------------------------------------------------
# Running in a thread
# --------------------------------------------------------------------------------------


class SimulatorHandle:
    """A simulator serving from its own event loop in a daemon thread."""

    def __init__(
        self, simulator: Simulator, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        self.simulator = simulator
        self._loop = loop
        self._thread = thread
        self._stopped = False

    @property
    def url(self) -> str:
        assert self.simulator.url is not None
        return self.simulator.url

    @property
    def port(self) -> int:
        assert self.simulator.port is not None
        return self.simulator.port

    @property
    def config(self) -> SimulatorConfig:
        return self.simulator.config

    @property
    def dataset(self) -> Dataset:
        return self.simulator.dataset

    def _call(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        async def runner() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(runner(), self._loop).result(timeout)

    def stats(self) -> dict[str, Any]:
        return self._call(self.simulator.stats_snapshot)  # type: ignore[no-any-return]

    def reset_stats(self) -> None:
        self._call(self.simulator.stats.reset)

    def reset(self) -> None:
        """Stats, lag counts, rate-limit buckets and fault RNG back to their start."""
        self._call(self.simulator.reset)

    def recent_requests(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._call(lambda: self.simulator.recent_requests(limit))  # type: ignore[no-any-return]

    def update(self, **knobs: Any) -> SimulatorConfig:
        """Change knobs at runtime (same rules as ``POST /_sim/config``)."""
        return self._call(lambda: self.simulator.update_config(knobs))  # type: ignore[no-any-return]

    def add_system_event(self, name: str, customer_id: str) -> dict[str, Any]:
        """A system event of the customer from now on (``POST /_sim/system_events``)."""
        return self._call(lambda: self.simulator.add_system_event(name, customer_id))  # type: ignore[no-any-return]

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(
    config: SimulatorConfig | None = None, *, dataset: Dataset | None = None, **knobs: Any
) -> SimulatorHandle:
    """Start a simulator on its own event loop in a daemon thread; returns once it listens.

    ``knobs`` override fields of ``config`` (``start_in_thread(port=0, error_rate=0.1)``).
    """
    config = config or SimulatorConfig()
    if knobs:
        config = config.with_changes(knobs)
    simulator = Simulator(config, dataset)
    ready = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(simulator.start())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            box["error"] = exc
            ready.set()
            loop.close()
            return
        box["loop"] = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(simulator.stop())
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=serve, name="rapidly-simulator", daemon=True)
    thread.start()
    if not ready.wait(60):
        raise RuntimeError("the simulator did not start within 60 s")
    if "error" in box:
        raise box["error"]
    return SimulatorHandle(simulator, box["loop"], thread)
