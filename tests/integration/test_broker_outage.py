"""Readiness follows the broker: a real Redis broker of the test's own is stopped and restarted."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from devkit import VENV_BIN, RedisServer, SimulatorProcess, drain, producer, send
from tests.integration.harness import ALL_RECORDS, purge


def health(worker: Any, what: str) -> int:
    return subprocess.run(
        [f"{VENV_BIN}/rapidly-worker", "health", what, "--dir", worker.env["HEALTH_DIR"]],
        capture_output=True,
    ).returncode


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server binary not installed"
)
def test_readiness_follows_the_broker(
    sim: SimulatorProcess, tmp_path: Path, start_worker: Any
) -> None:
    own = RedisServer(tmp_path / "redis")
    own.start()
    url = own.url
    try:
        purge(url)
        worker = start_worker(url, redis_url=None)
        assert wait_for(lambda: health(worker, "ready") == 0, 15), "ready while the broker is up"
        own.stop()
        assert wait_for(lambda: health(worker, "ready") == 1, 40), "not ready while it is down"
        assert health(worker, "live") == 0, "still live: restarting would not bring the broker back"
        own.start()
        assert wait_for(lambda: health(worker, "ready") == 0, 60), "ready again after it returns"
        purge(url)
        event_id = next(e["id"] for e in sim.dataset()["events"] if "customer_created" in e["tags"])
        send(producer(url), event_id)
        records = drain(url, ALL_RECORDS, expect=1, timeout=30)
        assert [m.properties["message_id"] for m in records] == [event_id]
    finally:
        own.stop()
