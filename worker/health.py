"""Liveness and readiness as files, so the probes are cheap local reads.

The consumer loop itself refreshes ``heartbeat`` (liveness), so a consumer that is wedged (the
loop no longer turns, the broker connection up) goes stale and the liveness probe restarts it; a
side thread only keeps it fresh while Celery is reconnecting to the broker (the loop is then
legitimately stopped, and a restart would not help). ``state.json`` says whether the
broker connection is up and whether the API accepts the token (readiness). ``rapidly-worker
health live|ready`` reads them; nothing calls ``celery inspect ping``.

Here: the files (``HealthState``), the probes (``check``), and the consumer loop's tick
(``consumer_loop``, turned by ``worker.deadletter.DeadLetteringConsumer``) with the side thread
that reads it (``heartbeat_forever``, started by ``worker.app`` at boot).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker import metrics

if TYPE_CHECKING:  # the runtime holds a HealthState: importing it here would be a cycle
    from worker.runtime import Runtime

HEARTBEAT_INTERVAL_SECONDS = 5.0
# Written by the supervisor (WORKER_PROCESSES > 1): the pod's health is that of every child.
PROCESSES_FILE = "processes.json"
LIVE_STALE_SECONDS = 30.0
# The consumer loop drains every 2 s at most; older than this means it is not consuming.
LOOP_STALE_SECONDS = 10.0


class HealthState:
    def __init__(self, directory: str):
        self._dir = Path(directory)
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {
            "broker": False,
            "api": None,
            "reason": "starting",
            "downstream": None,
            "downstream_reason": "",
        }
        self._dir.mkdir(parents=True, exist_ok=True)
        self._write()

    @property
    def ready(self) -> bool:
        return (
            bool(self._state["broker"])
            and self._state["api"] is not False
            and self._state["downstream"] is not False
        )

    @property
    def api_ok(self) -> bool | None:
        """False once the API rejected the token or the URL; None before the first answer."""
        value = self._state["api"]
        return None if value is None else bool(value)

    def beat(self, *, broker_connected: bool) -> None:
        self.update(broker=broker_connected)
        self.touch()

    def touch(self) -> None:
        """Liveness: written by the consumer loop itself, so a wedged loop stops it."""
        (self._dir / "heartbeat").write_text(f"{time.time():.3f}\n")

    def update(self, **changes: Any) -> None:
        with self._lock:
            if all(self._state.get(k) == v for k, v in changes.items()):
                return
            self._state.update(changes)
            self._write()

    def api_rejected(self, reason: str) -> None:
        self.update(api=False, reason=reason)

    def api_accepted(self) -> None:
        if self._state["api"] is not True:
            self.update(api=True, reason="")

    def downstream_failed(self, reason: str) -> None:
        """The downstream broker refused or did not confirm a record: not ready until one is."""
        self.update(downstream=False, downstream_reason=reason[:300])

    def downstream_confirmed(self) -> None:
        if self._state["downstream"] is not True:
            self.update(downstream=True, downstream_reason="")

    def _write(self) -> None:
        payload = {**self._state, "ready": self.ready, "updated": time.time(), "pid": os.getpid()}
        tmp = self._dir / f".state.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(payload))
        tmp.replace(self._dir / "state.json")

    def clear(self) -> None:
        for name in ("heartbeat", "state.json"):
            (self._dir / name).unlink(missing_ok=True)


def children_health(directory: str) -> list[str] | None:
    """The child health directories when ``directory`` belongs to a supervisor, else None."""
    base = Path(directory)
    try:
        data: Any = json.loads((base / PROCESSES_FILE).read_text())
        count = int(data["processes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(base / str(i)) for i in range(count)]


def check(
    directory: str, what: str, *, stale_after: float = LIVE_STALE_SECONDS
) -> tuple[bool, str]:
    """(ok, one-line reason) for ``live`` or ``ready``; with a supervisor, every child must be."""
    children = children_health(directory)
    if children is not None:
        for index, child in enumerate(children):
            ok, reason = _check_one(child, what, stale_after)
            if not ok:
                return False, f"process {index} of {len(children)}: {reason}"
        return True, f"{len(children)} processes {'live' if what == 'live' else 'ready'}"
    return _check_one(directory, what, stale_after)


def _check_one(directory: str, what: str, stale_after: float) -> tuple[bool, str]:
    base = Path(directory)
    try:
        beat = float((base / "heartbeat").read_text().strip())
    except (OSError, ValueError):
        return False, f"no heartbeat in {base}"
    age = time.time() - beat
    if age > stale_after:
        return False, f"heartbeat is {age:.0f}s old"
    if what == "live":
        return True, f"heartbeat {age:.1f}s ago"
    try:
        state = json.loads((base / "state.json").read_text())
    except (OSError, ValueError):
        return False, "no readable state.json"
    if not state.get("broker"):
        return False, "broker unreachable"
    if state.get("api") is False:
        return False, f"API rejects the token: {state.get('reason', '')}"
    if state.get("downstream") is False:
        reason = state.get("downstream_reason", "")
        return False, f"downstream broker does not confirm records: {reason}"
    return True, "ready"


class LoopTick:
    """When the consumer loop last turned, and whether Celery is reconnecting it."""

    def __init__(self) -> None:
        self.last = 0.0
        self.last_beat = 0.0
        self.reconnecting = False

    def tick(self) -> bool:
        """True when the loop's heartbeat is due (every HEARTBEAT_INTERVAL_SECONDS)."""
        now = self.last = time.monotonic()
        if now - self.last_beat < HEARTBEAT_INTERVAL_SECONDS:
            return False
        self.last_beat = now
        return True

    def alive(self) -> bool:
        return time.monotonic() - self.last < LOOP_STALE_SECONDS


consumer_loop = LoopTick()


def heartbeat_forever(rt: Runtime, stop: threading.Event, loop: LoopTick = consumer_loop) -> None:
    """Readiness (is the loop consuming?) and, only while Celery reconnects, liveness."""
    while not stop.wait(HEARTBEAT_INTERVAL_SECONDS):
        side_beat(rt, loop)


def side_beat(rt: Runtime, loop: LoopTick) -> None:
    rt.health.update(broker=loop.alive())
    if loop.reconnecting:
        rt.health.touch()
    metrics.show_ready(rt.health.ready)
