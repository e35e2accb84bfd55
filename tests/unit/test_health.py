"""Health files: one worker process, or a supervisor's children (WORKER_PROCESSES > 1)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from worker import metrics
from worker.health import PROCESSES_FILE, HealthState, check


def test_single_process_live_and_ready(tmp_path: Path) -> None:
    state = HealthState(str(tmp_path))
    assert check(str(tmp_path), "live") == (False, f"no heartbeat in {tmp_path}")
    state.beat(broker_connected=True)
    assert check(str(tmp_path), "live")[0]
    assert check(str(tmp_path), "ready") == (True, "ready")
    state.api_rejected("401")
    assert check(str(tmp_path), "ready") == (False, "API rejects the token: 401")
    assert check(str(tmp_path), "live")[0]  # not ready, still live


def test_supervisor_is_healthy_only_if_every_child_is(tmp_path: Path) -> None:
    (tmp_path / PROCESSES_FILE).write_text(json.dumps({"processes": 2, "pid": 1}))
    first = HealthState(str(tmp_path / "0"))
    second = HealthState(str(tmp_path / "1"))
    first.beat(broker_connected=True)
    ok, reason = check(str(tmp_path), "live")
    assert not ok and reason.startswith("process 1 of 2: no heartbeat")
    second.beat(broker_connected=False)
    assert check(str(tmp_path), "live") == (True, "2 processes live")
    assert check(str(tmp_path), "ready") == (False, "process 1 of 2: broker unreachable")
    second.beat(broker_connected=True)
    assert check(str(tmp_path), "ready") == (True, "2 processes ready")
    (tmp_path / "0" / "heartbeat").write_text(f"{time.time() - 120:.3f}\n")
    ok, reason = check(str(tmp_path), "live")
    assert not ok and reason.startswith("process 0 of 2: heartbeat is 120s old")


def test_the_ready_gauge_is_written_only_when_it_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[float] = []
    monkeypatch.setattr(metrics, "_ready_shown", [])
    monkeypatch.setattr(metrics.READY, "set", written.append)
    for ready in (True, True, True, False, False, True):
        metrics.show_ready(ready)
    assert written == [1, 0, 1]
