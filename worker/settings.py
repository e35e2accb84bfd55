"""Settings: read once from the environment at start-up and passed down.

Every field has a default except the token. A wrong value stops the process at start-up with one
line naming the variable (see ``load_settings``); nothing else in the worker reads the environment.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Literal

import httpx
from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.cpus import CpuChoice, choose_processes
from worker.errors import SettingsError

DEFAULT_API_URL = "https://api.rapidly.tech"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.I)
_PER_SECONDS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A request budget: ``count`` requests every ``per_seconds``."""

    count: float
    per_seconds: float
    text: str

    @property
    def per_second(self) -> float:
        return self.count / self.per_seconds

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        match = _RATE_RE.match(text)
        if not match:
            raise ValueError(f"expected '<n>/s', '<n>/min' or '<n>/h', got {text!r}")
        count = float(match.group(1))
        if count <= 0:
            raise ValueError(f"the budget must be positive, got {text!r}")
        return cls(count=count, per_seconds=_PER_SECONDS[match.group(2).lower()], text=text.strip())


def _broker_url(value: str) -> str:
    # Several URLs separated by ";" are kombu's failover list (the nodes of a RabbitMQ cluster):
    # every one of them must be a broker URL.
    for url in value.split(";"):
        url = url.strip()
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in {"amqp", "amqps", "pyamqp", "redis", "rediss", "memory"}:
            raise ValueError(
                "expected an amqp://, amqps://, redis:// or rediss:// URL "
                "(several separated by ';' for failover)"
            )
    return value


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("expected an http:// or https:// URL")
    return value.rstrip("/")


BrokerUrl = Annotated[str, AfterValidator(_broker_url)]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything the worker can be told. Names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(extra="forbid", case_sensitive=False, frozen=True)

    # --- the contract's variables (CONTRACT.md section 4)
    rapidly_api_url: Annotated[str, AfterValidator(_http_url)] = DEFAULT_API_URL
    rapidly_api_token: SecretStr = Field(default=SecretStr(""))
    broker_url: BrokerUrl = DEFAULT_BROKER_URL
    downstream_broker_url: BrokerUrl | None = None
    redis_url: str | None = None
    rapidly_rate_limit: str = "500/min"

    # --- the worker's own knobs (README: Configuration)
    worker_concurrency: int = Field(default=100, ge=1, le=2000)
    # None: one process per CPU this process may use (worker.cpus.choose_processes)
    worker_processes: int | None = Field(default=None, ge=1, le=64)
    worker_prefetch_multiplier: int = Field(default=1, ge=1, le=16)
    enrich_max_depth: int = Field(default=100, ge=1, le=100_000)
    api_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    api_max_connections: int | None = Field(default=None, ge=1, le=2000)
    # A response body past this is an invalid response (retried), never read whole.
    api_max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=1024**3)
    not_found_wait_seconds: float = Field(default=30.0, ge=0, le=3600)
    retry_budget_seconds: float = Field(default=45.0, ge=0, le=3600)
    retry_max_attempts: int = Field(default=8, ge=1, le=100)
    event_deadline_seconds: float = Field(default=60.0, gt=0, le=3600)
    auth_retry_seconds: float = Field(default=15.0, gt=0, le=3600)
    cache_max_events: int = Field(default=10_000, ge=0, le=10_000_000)
    cache_ttl_seconds: int = Field(default=86_400, ge=1)
    counts_max_age_seconds: float = Field(default=60.0, ge=0, le=86_400)
    event_max_age_seconds: float = Field(default=300.0, ge=0, le=86_400)
    dedupe_ttl_seconds: int = Field(default=7 * 86_400, ge=60)
    dedupe_lease_seconds: int = Field(default=120, ge=5, le=3600)
    broker_visibility_timeout: int = Field(default=900, ge=60)
    publish_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Deliveries of one event that ended without an outcome (crash, kill, OOM) before it is
    # dead-lettered exhausted_retries instead of cycling through the queue.
    event_max_redeliveries: int = Field(default=10, ge=1, le=1000)
    # Redis keys (dedupe marks, cache, the fleet's budget) live under rapidly:<namespace>:. Not
    # derived from the token, so rotating the token keeps every dedupe mark; one per workspace
    # when several workspaces' workers share one Redis.
    redis_namespace: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # http:// to a host other than loopback sends the token in clear: refused unless this is set
    # (the compose stack's simulator, say).
    allow_insecure_api_url: bool = False
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_port: int = Field(default=9808, ge=0, le=65535)
    # quorum: rapidly.events, rapidly.events.dead and rapidly.customer_created as replicated
    # RabbitMQ quorum queues (docs/cluster.md); producers must then declare them as quorum too.
    rabbitmq_queue_type: Literal["classic", "quorum"] = "classic"
    health_dir: str = "/tmp/rapidly-worker"  # noqa: S108 - a per-pod emptyDir in Kubernetes
    # --- rapidly-worker backfill (docs/backfill.md)
    backfill_poll_seconds: float = Field(default=5.0, gt=0, le=3600)
    backfill_margin_seconds: float = Field(default=30.0, ge=0, le=86_400)
    backfill_max_backlog: int = Field(default=1000, ge=1, le=10_000_000)

    @field_validator("rapidly_rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        RateLimit.parse(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("rapidly_api_token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        # A newline from `echo token > file` or a pasted space would make every call a 401.
        token = value.get_secret_value().strip()
        if any(ch.isspace() for ch in token):
            raise ValueError("contains whitespace inside the token")
        return SecretStr(token)

    @model_validator(mode="after")
    def _api_url_in_clear(self) -> Settings:
        url = httpx.URL(self.rapidly_api_url)
        if url.scheme == "http" and not self.allow_insecure_api_url and not _loopback(url.host):
            raise ValueError(
                "RAPIDLY_API_URL: http:// to a non-loopback host would send the token in clear; "
                "use https:// (or set ALLOW_INSECURE_API_URL=true for a test stack)"
            )
        return self

    @field_validator("worker_processes", mode="before")
    @classmethod
    def _processes(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("rabbitmq_queue_type", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip().lower() or None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def rate_limit(self) -> RateLimit:
        return RateLimit.parse(self.rapidly_rate_limit)

    @property
    def processes(self) -> CpuChoice:
        """How many worker processes, and why: ``WORKER_PROCESSES``, else the CPUs allowed."""
        return choose_processes(self.worker_processes)

    @property
    def http_connections(self) -> int:
        """Default 16: httpcore checks every pooled connection's socket on every request, so an
        oversized pool costs CPU per request; 16 x 50 ms calls is already 320 calls/s, far over
        any budget the API grants."""
        return self.api_max_connections or min(16, self.worker_concurrency)

    @property
    def downstream_url(self) -> str:
        return self.downstream_broker_url or self.broker_url


def load_settings(*, require_token: bool = True, **overrides: object) -> Settings:
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:  # a rule across fields: its message names the variable
            raise SettingsError(f"invalid configuration: {message}") from None
        variable = str(first["loc"][0]).upper()
        raise SettingsError(f"invalid configuration: {variable}: {message}") from None
    if require_token and not settings.rapidly_api_token.get_secret_value():
        raise SettingsError("invalid configuration: RAPIDLY_API_TOKEN: required, not set")
    return settings
