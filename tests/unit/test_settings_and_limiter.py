from __future__ import annotations

import time

import pytest

from worker.errors import SettingsError
from worker.rapidly import LocalRateLimiter
from worker.settings import RateLimit, load_settings


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("RAPIDLY_RATE_LIMIT", "fast", "RAPIDLY_RATE_LIMIT"),
        ("RAPIDLY_RATE_LIMIT", "0/s", "RAPIDLY_RATE_LIMIT"),
        ("BROKER_URL", "http://nope", "BROKER_URL"),
        ("REDIS_URL", "mysql://x", "REDIS_URL"),
        ("WORKER_CONCURRENCY", "many", "WORKER_CONCURRENCY"),
        ("RAPIDLY_API_URL", "ftp://x", "RAPIDLY_API_URL"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str
) -> None:
    monkeypatch.setenv("RAPIDLY_API_TOKEN", "secret-token-value")
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert needle in text
    assert "\n" not in text
    assert "secret-token-value" not in text


def test_missing_token_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAPIDLY_API_TOKEN", raising=False)
    with pytest.raises(SettingsError, match="RAPIDLY_API_TOKEN"):
        load_settings()


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "BROKER_URL",
        "DOWNSTREAM_BROKER_URL",
        "REDIS_URL",
        "RAPIDLY_RATE_LIMIT",
        "RAPIDLY_API_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAPIDLY_API_TOKEN", "t0ken-value")
    s = load_settings()
    assert s.rapidly_api_url == "https://api.rapidly.tech"
    assert s.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert s.downstream_url == s.broker_url
    assert s.redis_url is None
    assert s.rate_limit.per_second == pytest.approx(500 / 60)
    assert "t0ken-value" not in repr(s)


@pytest.mark.parametrize(
    ("text", "per_second"), [("500/min", 500 / 60), ("20/s", 20), ("3600/h", 1), ("30 / sec", 30)]
)
def test_rate_parse(text: str, per_second: float) -> None:
    assert RateLimit.parse(text).per_second == pytest.approx(per_second)


def test_local_limiter_spaces_requests() -> None:
    limiter = LocalRateLimiter(RateLimit.parse("50/s"))
    started = time.monotonic()
    for _ in range(26):
        limiter.acquire()
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.0  # 25 intervals of 20 ms


def test_penalize_pushes_everyone_back() -> None:
    limiter = LocalRateLimiter(RateLimit.parse("1000/s"))
    limiter.penalize(0.3)
    started = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - started >= 0.28
