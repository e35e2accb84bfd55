"""Shared by the backfill and replay tests: a simulator of their own (they add events to it),
a worker from the Procfile line pointed at it, and the CLI run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devkit import VENV_BIN, SimulatorProcess, WorkerGroup, WorkerProcess
from tests.integration.harness import REDIS_STORE_URL, worker_env


@pytest.fixture(scope="module")
def own_sim() -> Iterator[SimulatorProcess]:
    process = SimulatorProcess("--seed", "42")
    yield process
    process.stop()


@pytest.fixture
def env_for(tmp_path: Path, own_sim: SimulatorProcess) -> Any:
    def make(broker: str, **extra: str) -> dict[str, str]:
        return worker_env(
            api_url=own_sim.url,
            broker_url=broker,
            tmp=tmp_path,
            redis_url=REDIS_STORE_URL,
            **extra,
        )

    own_sim.configure(latency_ms=0.0, error_rate=0.0, rate_limit=None)
    own_sim.reset_stats()
    redis.Redis.from_url(REDIS_STORE_URL).flushdb()
    return make


@pytest.fixture
def worker_on(tmp_path: Path) -> Iterator[Any]:
    group = WorkerGroup(tmp_path)

    def start(env: dict[str, str]) -> WorkerProcess:
        return group.start(env)

    yield start
    group.stop_all(timeout=30)


def cli(
    env: dict[str, str], *args: str, cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [f"{VENV_BIN}/rapidly-worker", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_process(env: dict[str, str], *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [f"{VENV_BIN}/rapidly-worker", *args],
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def add_events(sim: SimulatorProcess, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    created: list[dict[str, Any]] = sim.admin("/_sim/events", {"events": specs})["events"]
    return created


def record_ids(messages: list[Any]) -> list[str]:
    return [m.properties["message_id"] for m in messages]


def expected_of(sim: SimulatorProcess, ids: list[str]) -> dict[str, dict[str, Any]]:
    wanted = set(ids)
    return {e["id"]: e["expected"] for e in sim.dataset()["events"] if e["id"] in wanted}


def checkpoint_count(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["count"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0
