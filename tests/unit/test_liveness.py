"""Liveness comes from the consumer loop: a wedged loop goes stale, a reconnecting one does not."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from worker.health import HealthState, LoopTick, check, side_beat


def age_heartbeat(directory: Path, seconds: float) -> None:
    beat = directory / "heartbeat"
    beat.write_text(f"{time.time() - seconds:.3f}\n")


def test_side_thread_does_not_keep_a_wedged_loop_alive(tmp_path: Path) -> None:
    health = HealthState(str(tmp_path))
    loop = LoopTick()
    loop.tick()
    health.touch()
    age_heartbeat(tmp_path, 60)  # the loop stopped turning a minute ago
    loop.last -= 60
    side_beat(SimpleNamespace(health=health), loop)  # type: ignore[arg-type]
    ok, reason = check(str(tmp_path), "live")
    assert not ok, reason
    assert not check(str(tmp_path), "ready")[0]


def test_side_thread_keeps_liveness_while_reconnecting(tmp_path: Path) -> None:
    health = HealthState(str(tmp_path))
    loop = LoopTick()
    age_heartbeat(tmp_path, 60)
    loop.reconnecting = True
    side_beat(SimpleNamespace(health=health), loop)  # type: ignore[arg-type]
    assert check(str(tmp_path), "live")[0]
    assert not check(str(tmp_path), "ready")[0]  # but not ready: the broker is away


def test_loop_tick_asks_for_a_heartbeat_every_interval() -> None:
    loop = LoopTick()
    assert loop.tick()  # the first turn beats
    assert not loop.tick()  # the next turns within the interval do not write a file each
    loop.last_beat -= 10
    assert loop.tick()
    assert loop.alive()


def test_downstream_refusal_is_not_ready(tmp_path: Path) -> None:
    health = HealthState(str(tmp_path))
    health.beat(broker_connected=True)
    health.api_accepted()
    assert check(str(tmp_path), "ready")[0]
    health.downstream_failed("AccessRefused: 403 ACCESS_REFUSED")
    ok, reason = check(str(tmp_path), "ready")
    assert not ok and "AccessRefused" in reason
    assert check(str(tmp_path), "live")[0]  # a restart would not help
    health.downstream_confirmed()
    assert check(str(tmp_path), "ready")[0]
    assert os.path.exists(tmp_path / "state.json")
