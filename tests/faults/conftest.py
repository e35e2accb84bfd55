"""Fault-injection suite: two tiers of one implementation.

- ``faults``: the fast subset, run by ``make test`` and CI (about two minutes).
- ``slow_faults``: thousands of events and more kills; skipped unless ``--run-slow-faults``
  (``make faults``).

Everything runs on the RabbitMQ vhost ``faults`` (created here if missing) and on a redis-server
of the suite's own, so other test runs sharing the broker are not disturbed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit import RedisServer, SimulatorProcess, WorkerGroup, WorkerProcess
from tests.faults import faultkit


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults", "fault-injection suite")
    group.addoption(
        "--run-slow-faults",
        action="store_true",
        default=False,
        help="also run the full fault-injection suite (tests marked slow_faults)",
    )
    group.addoption(
        "--fault-seed",
        type=int,
        default=None,
        help="seed of the fault schedule (default: $FAULT_SEED or a fresh random one, printed)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fast subset of the fault-injection suite")
    config.addinivalue_line(
        "markers", "slow_faults: the full fault-injection suite (needs --run-slow-faults)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow-faults", default=False):
        return
    skip = pytest.mark.skip(reason="the full fault suite runs with --run-slow-faults (make faults)")
    for item in items:
        if "slow_faults" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if faultkit.SUMMARIES:
        terminalreporter.write_sep("=", "fault-injection summary")
        for line in faultkit.SUMMARIES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def fault_seed(request: pytest.FixtureRequest) -> int:
    seed = request.config.getoption("--fault-seed", default=None)
    if seed is None and os.environ.get("FAULT_SEED"):
        seed = int(os.environ["FAULT_SEED"])
    if seed is None:
        seed = random.SystemRandom().randrange(1, 2**31)
    print(f"fault seed: {seed} (replay with --fault-seed {seed})")
    return int(seed)


@pytest.fixture(scope="session")
def faults_vhost() -> Iterator[str]:
    problem = faultkit.infrastructure_problem()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the fault suite cannot run: {problem}")
        pytest.skip(problem)
    faultkit.ensure_vhost()
    with faultkit.vhost_lock(timeout=240):
        yield faultkit.AMQP_URL


@pytest.fixture
def amqp(faults_vhost: str) -> str:
    faultkit.reset_queues(faults_vhost)
    faultkit.require_no_consumers()
    return faults_vhost


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Any]:
    """Starts the worker from the Procfile line; every worker started is stopped at teardown,
    whatever the test did (a stray worker would consume the next test's messages)."""
    group = WorkerGroup(tmp_path)

    def spawn(env: dict[str, str], name: str = "worker") -> WorkerProcess:
        return group.start(env, log_name=f"{name}.log")

    yield spawn
    group.stop_all(timeout=30)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_sim() -> Iterator[Any]:
    sims: list[SimulatorProcess] = []

    def make(*args: str) -> SimulatorProcess:
        sim = SimulatorProcess("--seed", "42", *args)
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        sim.stop()
