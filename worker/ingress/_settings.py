"""The web process's settings: its own small model, so that it needs no API token.

A wrong value stops the process at start-up with one line naming the variable (the same rule as
``worker.settings.load_settings``); the secret is never part of that line.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import SettingsError
from worker.settings import DEFAULT_BROKER_URL, BrokerUrl

# The sender retries for about 34 minutes (10 attempts, exponential from 2 s); a day covers
# that and an operator's manual redelivery from Rapidly's dashboard.
DEFAULT_DEDUPE_TTL_SECONDS = 86_400


def _secrets(value: SecretStr) -> SecretStr:
    parts = value.get_secret_value().split()
    if not parts:
        raise ValueError("required, not set")
    for part in parts:
        if len(part) < 8:
            raise ValueError("each secret must be at least 8 characters")
    return value


class IngressSettings(BaseSettings):
    """What ``rapidly-worker web`` can be told. Names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(extra="forbid", case_sensitive=False, frozen=True)

    rapidly_webhook_secret: Annotated[SecretStr, AfterValidator(_secrets)] = Field(
        default=SecretStr("")
    )
    port: int = Field(default=8000, ge=1, le=65535)
    broker_url: BrokerUrl = DEFAULT_BROKER_URL
    redis_url: str | None = None
    webhook_dedupe_ttl_seconds: int = Field(default=DEFAULT_DEDUPE_TTL_SECONDS, ge=60)
    webhook_max_in_flight: int = Field(default=256, ge=1, le=10_000)
    webhook_publishers: int = Field(default=8, ge=1, le=64)
    # The workers' RABBITMQ_QUEUE_TYPE: rapidly.events is declared the same way on both sides.
    rabbitmq_queue_type: Literal["classic", "quorum"] = "classic"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def secrets(self) -> list[str]:
        """Every accepted secret: during a rotation, the old and the new one."""
        return self.rapidly_webhook_secret.get_secret_value().split()


def load_ingress_settings(**overrides: object) -> IngressSettings:
    try:
        return IngressSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = str(first["loc"][0]).upper() if first["loc"] else "?"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"invalid configuration: {variable}: {message}") from None
