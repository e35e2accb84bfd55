"""Simulator configuration: the knobs, their validation and the rate-limit parser."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, fields
from typing import Any

DATASETS = ("default", "bench", "hostile", "fanout")

# Fields that cannot change once the server listens.
STARTUP_ONLY = frozenset({"host", "port"})
# Fields whose change rebuilds the dataset.
DATASET_FIELDS = frozenset({"seed", "dataset", "bench_size"})


class ConfigError(ValueError):
    """A knob was given a value it cannot take (or does not exist)."""


@dataclass
class SimulatorConfig:
    """Every knob of the simulator. Each is also a CLI flag (``--kebab-case``) and can be
    changed at runtime with ``POST /_sim/config`` (except ``host`` and ``port``)."""

    host: str = "127.0.0.1"
    port: int = 0
    token: str = "sim_oat_valid_token_0123456789"  # noqa: S105 - a fake, public test token
    token_valid: bool = True
    noscope_token: str = "sim_oat_noscope_token"  # noqa: S105 - a fake, public test token
    seed: int = 42
    dataset: str = "default"
    bench_size: int = 2000
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    garbage_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_seconds: float = 30.0
    lag_reads: int = 0
    rate_limit: str | None = None
    retry_after_http_date: bool = False
    redirect_to: str | None = None

    def __post_init__(self) -> None:
        # Validate everything the same way a runtime update is validated.
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name)))
        _check_rates(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_changes(self, changes: dict[str, Any]) -> SimulatorConfig:
        """A validated copy with ``changes`` applied; raises ConfigError on any bad field."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        values = self.to_dict()
        for name, value in changes.items():
            values[name] = _coerce(name, value)
        return SimulatorConfig(**values)


_FIELD_TYPES: dict[str, str] = {
    "host": "str",
    "port": "int",
    "token": "str",
    "token_valid": "bool",
    "noscope_token": "str",
    "seed": "int",
    "dataset": "str",
    "bench_size": "int",
    "latency_ms": "float",
    "latency_jitter_ms": "float",
    "error_rate": "float",
    "garbage_rate": "float",
    "timeout_rate": "float",
    "timeout_seconds": "float",
    "lag_reads": "int",
    "rate_limit": "optstr",
    "retry_after_http_date": "bool",
    "redirect_to": "optstr",
}


def field_kind(name: str) -> str:
    return _FIELD_TYPES[name]


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELD_TYPES[name]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be a boolean")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer")
        if name == "port" and not 0 <= value <= 65535:
            raise ConfigError("port must be within 0..65535")
        if name in ("lag_reads", "bench_size") and value < 0:
            raise ConfigError(f"{name} must be >= 0")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number")
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be a finite number >= 0")
        if name.endswith("_rate") and value > 1:
            raise ConfigError(f"{name} must be within 0..1")
        return value
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a non-empty string")
        if name == "dataset" and value not in DATASETS:
            raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}")
        return value
    # optional string
    if value is None or value == "" or (isinstance(value, str) and value.lower() == "none"):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string or null")
    if name == "rate_limit":
        parse_rate_limit(value)
    if name == "redirect_to":
        if not re.match(r"^https?://[^/\s]+", value):
            raise ConfigError("redirect_to must be an http(s) base URL")
        value = value.rstrip("/")
    return value


def _check_rates(config: SimulatorConfig) -> None:
    total = config.error_rate + config.garbage_rate + config.timeout_rate
    if total > 1.0 + 1e-9:
        raise ConfigError("error_rate + garbage_rate + timeout_rate must not exceed 1")


_RATE_RE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hr|hour)s?\s*$", re.IGNORECASE
)
_UNIT_SECONDS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
}


def parse_rate_limit(text: str) -> float:
    """``"30/s"`` → 30.0, ``"500/min"`` → 8.33…: requests per second (must be > 0)."""
    match = _RATE_RE.match(text)
    if match is None:
        raise ConfigError(f"rate_limit {text!r} is not like '30/s' or '500/min'")
    amount = float(match.group(1))
    if amount <= 0:
        raise ConfigError("rate_limit must be > 0")
    return amount / _UNIT_SECONDS[match.group(2).lower()]
