"""The fault storm: one implementation, sized by a ``StormPlan`` (fast tier and full tier).

While a paced producer sends every ID of a simulator dataset (plus its invalid and unknown IDs),
the storm, at moments drawn from ``random.Random(seed)``:

- SIGKILLs the worker's whole process group and restarts it from the Procfile line,
- closes every connection of the vhost (``rabbitmqctl close_all_connections --vhost faults``),
- kills the suite's redis-server and restarts it on the same port,
- makes the simulator reject the token (401) for a window, then accept it again,
- drops the simulator's budget to 5/s for a window (429s with Retry-After in seconds, then as an
  HTTP date);

and the simulator serves 20% 5xx, 2% non-JSON 200s, 1% 5 s stalls and replica lag (two 404s per
new ID) throughout. Windows last until they served at least one 401 / 429 (overlapping faults can
keep the worker off the API). A worker that exits without our SIGKILL is counted and restarted.
Then, once ``rapidly.events`` is empty with nothing unacknowledged, every record and dead letter
is counted by event ID.
"""

from __future__ import annotations

import heapq
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devkit import RedisServer, SimulatorProcess, WorkerProcess
from tests.faults import faultkit

SIM_FAULTS = (
    "--error-rate",
    "0.2",
    "--garbage-rate",
    "0.02",
    "--timeout-rate",
    "0.01",
    "--timeout-seconds",
    "5",
    "--lag-reads",
    "2",
    "--rate-limit",
    "200/s",
)


@dataclass(frozen=True)
class StormPlan:
    tier: str
    bench_size: int  # events of the bench dataset, all sent
    send_seconds: float  # the producer spreads the IDs over this long; faults happen inside it
    kills: int
    connection_closes: int
    redis_restarts: int
    auth_window_seconds: float
    # Windows in which the simulator's budget drops from 200/s to THROTTLED_RATE, so that 429s
    # with Retry-After really come (the worker alone stays under 200/s); the second and later
    # windows send Retry-After as an HTTP date.
    throttle_windows: int
    throttle_seconds: float
    quiet_timeout: float  # after the last send, how long the queue may take to empty


# 1/s (a bucket of one request): any two requests within a second draw a 429. At 5/s a window
# that fell on a kill and the 401 window saw the worker send fewer than 5/s and no 429 at all
# (seed 976721631): the worker needs few calls per event, so only a budget this low is sure to bind.
THROTTLED_RATE = "1/s"
FAST = StormPlan(
    "fast",
    600,
    25.0,
    kills=2,
    connection_closes=1,
    redis_restarts=1,
    auth_window_seconds=5.0,
    throttle_windows=1,
    throttle_seconds=4.0,
    quiet_timeout=90.0,
)
FULL = StormPlan(
    "full",
    5000,
    150.0,
    kills=6,
    connection_closes=3,
    redis_restarts=2,
    auth_window_seconds=10.0,
    throttle_windows=2,
    throttle_seconds=8.0,
    quiet_timeout=300.0,
)


@dataclass
class StormResult:
    plan: StormPlan
    seed: int
    events_sent: int = 0
    valid: int = 0
    bad: int = 0
    resends: int = 0
    self_exits: int = 0  # the worker found dead without our SIGKILL (restarted, like a supervisor)
    connection_closes: int = 0
    consumer_reconnects: int = 0  # "Connection to broker lost" lines of the worker's consumer
    redis_restarts: int = 0
    auth_window: float = 0.0
    throttle_windows: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    # Duplicates of the one documented kind (docs/guarantees.md): the connection dropped while the
    # worker waited for a record's confirm, so it could not know the record was routed, and
    # published again. Any other duplicate fails the storm.
    confirm_lost: list[str] = field(default_factory=list)
    # ... and the other documented kind: a SIGKILL between a record's write to the broker and its
    # sent mark's write to Redis.
    kill_gap: list[str] = field(default_factory=list)
    kill_times: list[datetime] = field(default_factory=list)  # one per SIGKILL we sent
    wrong: dict[str, str] = field(default_factory=dict)
    dead_by_reason: dict[str, int] = field(default_factory=dict)
    dead_mismatch: dict[str, Any] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    sim_stats: dict[str, Any] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)
    token_leaks: list[str] = field(default_factory=list)
    worker_alive: bool = False
    duration: float = 0.0
    quiescent: bool = False
    log_path: str = ""
    worker: WorkerProcess | None = None
    tally: faultkit.Tally | None = None

    @property
    def kills(self) -> int:
        return len(self.kill_times)

    def summary_line(self) -> str:
        faults = self.sim_stats.get("faults", {})
        unauthorized = self.sim_stats.get("by_token_status", {}).get("invalid", 0)
        return (
            f"fault storm [{self.plan.tier}] seed={self.seed}: events_sent={self.events_sent} "
            f"(valid {self.valid}, invalid/unknown {self.bad}, producer resends {self.resends}) "
            f"kills={self.kills} connection_closes={self.connection_closes} "
            f"(consumer reconnects {self.consumer_reconnects}) "
            f"redis_restarts={self.redis_restarts} 401_window={self.auth_window:.0f}s "
            f"429_windows={self.throttle_windows} "
            f"lost={len(self.lost)} duplicated={sum(self.duplicated.values())} "
            f"(confirm lost with the connection: {len(self.confirm_lost)}, "
            f"kill between the write and the sent mark: {len(self.kill_gap)}) "
            f"wrong_records={len(self.wrong)} "
            f"api_faults=5xx:{faults.get('error', 0)}/non-json:{faults.get('garbage', 0)}/"
            f"stalls:{faults.get('timeout', 0)}/lag-404:{self.sim_stats.get('lagged', 0)}/"
            f"429:{self.sim_stats.get('rate_limited', 0)}/401:{unauthorized} "
            f"dead_letters={json.dumps(self.dead_by_reason, sort_keys=True)} "
            f"worker_self_exits={self.self_exits} worker_alive={self.worker_alive} "
            f"duration={self.duration:.1f}s"
        )

    def details(self) -> str:
        sim = self.sim_stats
        return "\n".join(
            [
                self.summary_line(),
                f"  worker outcomes (enrich.finished lines): {self.outcomes}",
                f"  simulator: requests={sim.get('requests_total')} "
                f"by_status={sim.get('by_status')} faults={sim.get('faults')} "
                f"lagged={sim.get('lagged')} rate_limited={sim.get('rate_limited')}",
                "  fault timeline (UTC):",
                *[f"    {line}" for line in self.timeline],
                f"  worker log: {self.log_path}",
            ]
        )


def _schedule(plan: StormPlan, rng: random.Random) -> list[tuple[float, str]]:
    """(seconds after the first send, action), sorted. Kept inside the sending window so that
    every fault lands while messages flow."""

    def at() -> float:
        return round(rng.uniform(0.08, 0.92) * plan.send_seconds, 2)

    actions = [(at(), "kill") for _ in range(plan.kills)]
    actions += [(at(), "close_connections") for _ in range(plan.connection_closes)]
    actions += [(at(), "restart_redis") for _ in range(plan.redis_restarts)]
    if plan.auth_window_seconds > 0:
        actions.append((round(rng.uniform(0.1, 0.7) * plan.send_seconds, 2), "token_invalid"))
    for _ in range(plan.throttle_windows):
        actions.append((round(rng.uniform(0.1, 0.8) * plan.send_seconds, 2), "throttle"))
    return sorted(actions)


def _served(sim: SimulatorProcess, status: str) -> int:
    stats = sim.stats()
    if status == "429":
        return int(stats["rate_limited"])
    return int(stats["by_token_status"].get("invalid", 0))


def run_storm(
    plan: StormPlan,
    seed: int,
    *,
    tmp: Path,
    sim: SimulatorProcess,
    own_redis: RedisServer,
    spawn_worker: Callable[[dict[str, str]], WorkerProcess],
) -> StormResult:
    rng = random.Random(seed)
    result = StormResult(plan, seed, log_path=str(tmp / "worker.log"))
    data = sim.dataset()
    expected = {e["id"]: e["expected"] for e in data["events"]}
    bad = {x["id"]: x["reason"] for x in data["invalid_ids"] + data["unknown_ids"]}
    ids: list[Any] = [*expected, *bad]
    rng.shuffle(ids)
    result.valid, result.bad = len(expected), len(bad)

    env = faultkit.fault_worker_env(sim.url, own_redis.url, tmp)
    worker = spawn_worker(env)
    schedule = _schedule(plan, rng)

    def note(text: str) -> None:
        result.timeline.append(f"{faultkit.now_iso()} {text}")

    started = time.monotonic()
    sender = faultkit.PacedSender(ids, plan.send_seconds)
    sender.start()
    note(f"sending {len(ids)} ids over {plan.send_seconds:.0f}s")

    def supervise() -> None:
        """A worker that exited without our SIGKILL is a finding: count it, then restart it as
        Kubernetes would, so that the rest of the run still measures losses and duplicates."""
        if worker.alive():
            return
        assert worker.proc is not None
        result.self_exits += 1
        note(f"WORKER EXITED ON ITS OWN (code {worker.proc.returncode}); restarting it")
        worker.start()
        worker.wait_ready()

    window_start = throttle_start = 0.0
    served_before = limited_before = 0
    pending = list(schedule)
    heapq.heapify(pending)
    try:
        while pending:
            offset, action = heapq.heappop(pending)
            delay = started + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            supervise()
            # A window ends a fixed time after it really began (a kill's restart may have
            # delayed its start), so it is never shortened.
            elapsed = time.monotonic() - started
            if action == "kill":
                worker.kill()
                result.kill_times.append(datetime.now(UTC))
                down = round(rng.uniform(0.0, 2.0), 2)
                note(f"SIGKILL worker process group #{result.kills} (restart in {down}s)")
                time.sleep(down)
                worker.start()
                worker.wait_ready()
                note(f"worker restarted and consuming (start #{worker.starts})")
            elif action == "close_connections":
                faultkit.close_connections()
                result.connection_closes += 1
                note(f"close_all_connections --vhost {faultkit.VHOST} #{result.connection_closes}")
            elif action == "restart_redis":
                down = round(rng.uniform(1.0, 4.0), 2)
                note(f"redis SIGKILL #{own_redis.restarts + 1} (down {down}s)")
                own_redis.restart(down)
                result.redis_restarts = own_redis.restarts
                note("redis back")
            elif action == "token_invalid":
                sim.configure(token_valid=False)
                window_start, served_before = elapsed, _served(sim, "401")
                heapq.heappush(pending, (elapsed + plan.auth_window_seconds, "token_valid"))
                note("simulator rejects the token (401)")
            elif action == "token_valid":
                # Overlapping faults (a Redis restart, a kill) can keep the worker off the API
                # for the whole window: it lasts until it served a 401, up to three times longer.
                if _served(sim, "401") == served_before and (
                    elapsed - window_start < 3 * plan.auth_window_seconds
                ):
                    heapq.heappush(pending, (elapsed + 1.0, "token_valid"))
                    continue
                sim.configure(token_valid=True)
                result.auth_window += elapsed - window_start
                note("simulator accepts the token again")
            elif action == "throttle":
                http_date = result.throttle_windows >= 1
                sim.configure(rate_limit=THROTTLED_RATE, retry_after_http_date=http_date)
                throttle_start, limited_before = elapsed, _served(sim, "429")
                heapq.heappush(pending, (elapsed + plan.throttle_seconds, "unthrottle"))
                result.throttle_windows += 1
                note(
                    f"simulator budget {THROTTLED_RATE} (429s, Retry-After as "
                    f"{'an HTTP date' if http_date else 'seconds'})"
                )
            elif action == "unthrottle":
                if _served(sim, "429") == limited_before and (
                    elapsed - throttle_start < 3 * plan.throttle_seconds
                ):
                    heapq.heappush(pending, (elapsed + 1.0, "unthrottle"))
                    continue
                sim.configure(rate_limit="200/s", retry_after_http_date=False)
                note("simulator budget back to 200/s")
        sender.join(plan.send_seconds + 120)
        note(f"producer done: {sender.sent} sends, {sender.resends} resends")
        result.events_sent = sender.sent
        result.resends = sender.resends
        try:
            waited = faultkit.wait_quiescent(plan.quiet_timeout, tick=supervise)
            result.quiescent = True
            note(f"rapidly.events empty, nothing unacknowledged (waited {waited:.0f}s)")
        except TimeoutError as exc:
            note(str(exc))
            note(faultkit.broker_view().replace("\n", " | "))
            note("worker health: " + faultkit.worker_health(worker))
    finally:
        sim.configure(token_valid=True, rate_limit="200/s", retry_after_http_date=False)
        result.duration = time.monotonic() - started
        result.worker_alive = worker.alive()
        tally = faultkit.Tally.collect()
        result.outcomes = faultkit.outcome_counts(worker)
        result.sim_stats = sim.stats()
        result.token_leaks = faultkit.token_leaks(worker)
        result.consumer_reconnects = worker.log_text().count("Connection to broker lost")
        worker.stop(timeout=30)

    result.lost = tally.lost(expected)
    result.duplicated = tally.duplicated()
    result.confirm_lost = faultkit.confirm_lost(worker, result.duplicated)
    result.kill_gap = faultkit.kill_gap(
        worker, result.duplicated, tally.record_bodies, result.kill_times
    )
    result.wrong = tally.wrong_records(expected)
    result.dead_by_reason = tally.dead_by_reason()
    for event_id, reason in bad.items():
        got = tally.dead.get(event_id, [])
        if got != [reason]:
            result.dead_mismatch[event_id] = {
                "want": reason,
                "got": got,
                "task_ids": tally.dead_task_ids.get(event_id, []),
            }
    for event_id, got in tally.dead.items():
        if event_id not in bad:
            result.dead_mismatch[event_id] = {
                "want": None,
                "got": got,
                "task_ids": tally.dead_task_ids[event_id],
            }
    result.worker = worker
    result.tally = tally
    return result


def explain(result: StormResult) -> str:
    """What the worker logged about every lost, duplicated, wrong or mis-dead-lettered ID."""
    worker = result.worker
    assert worker is not None
    parts = [result.details()]
    for title, ids in (
        ("lost", result.lost),
        ("duplicated", list(result.duplicated)),
        ("wrong records", list(result.wrong)),
        ("dead-letter mismatches", list(result.dead_mismatch)),
    ):
        if not ids:
            continue
        parts.append(f"--- {title}: {len(ids)}")
        for event_id in ids[:10]:
            extra = (
                result.wrong.get(event_id)
                or result.dead_mismatch.get(event_id)
                or result.duplicated.get(event_id, "")
            )
            parts.append(f"{event_id} {extra}")
            if result.tally is not None and event_id in result.tally.record_bodies:
                stamps = [b["enriched_at"] for b in result.tally.record_bodies[event_id]]
                parts.append(f"records' enriched_at: {stamps}")
            parts.append(faultkit.log_story(worker, [event_id]))
    return "\n".join(parts)
