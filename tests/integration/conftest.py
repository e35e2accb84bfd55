from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devkit import SimulatorProcess, WorkerGroup, WorkerProcess, reachable
from tests.integration.harness import AMQP_URL, REDIS_BROKER_URL, REDIS_STORE_URL, purge, worker_env

START = {
    "amqp": "RabbitMQ is not reachable at 127.0.0.1:5672; start it with: rabbitmq-server -detached",
    "redis": "Redis is not reachable at 127.0.0.1:6379; start it with: redis-server --daemonize yes "
    "--bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no",
}


def require(kind: str) -> None:
    url = AMQP_URL if kind == "amqp" else REDIS_BROKER_URL
    if reachable(url):
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and a broker is missing: {START[kind]}")
    pytest.skip(START[kind])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorProcess]:
    process = SimulatorProcess("--seed", "42")
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def _reset_sim(request: pytest.FixtureRequest) -> None:
    if "sim" in request.fixturenames:
        sim = request.getfixturevalue("sim")
        sim.configure(
            token_valid=True,
            error_rate=0.0,
            garbage_rate=0.0,
            timeout_rate=0.0,
            lag_reads=0,
            rate_limit=None,
            latency_ms=0.0,
        )
        sim.admin("/_sim/stats/reset", {})


@pytest.fixture(params=["amqp", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    require(request.param)
    require("redis")  # the dedupe store and cache are Redis in both variants
    url = AMQP_URL if request.param == "amqp" else REDIS_BROKER_URL
    if request.param == "redis":
        redis.Redis.from_url(url).flushdb()
    purge(url)
    return url


@pytest.fixture
def amqp_url() -> str:
    require("amqp")
    require("redis")
    purge(AMQP_URL)
    return AMQP_URL


@pytest.fixture
def redis_url() -> str:
    require("redis")
    redis.Redis.from_url(REDIS_STORE_URL).flushdb()
    return REDIS_STORE_URL


@pytest.fixture
def start_worker(tmp_path: Path, sim: SimulatorProcess) -> Iterator:
    group = WorkerGroup(tmp_path)
    if reachable(REDIS_STORE_URL):
        redis.Redis.from_url(REDIS_STORE_URL).flushdb()  # dedupe marks of earlier tests

    def start(
        broker: str,
        *,
        redis_url: str | None = REDIS_STORE_URL,
        wrapper: tuple[str, ...] = (),
        **extra: str,
    ) -> WorkerProcess:
        env = worker_env(
            api_url=sim.url,
            broker_url=broker,
            tmp=tmp_path / f"w{len(group.processes)}",
            redis_url=redis_url,
            **extra,
        )
        return group.start(env, wrapper=wrapper)

    yield start
    group.stop_all(timeout=30)
