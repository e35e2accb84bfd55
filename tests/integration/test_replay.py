"""``rapidly-worker replay`` (CONTRACT.md section 8) with a real worker, simulator and broker:
dead letters go back to rapidly.events in order, unchanged but for their headers, a --dry-run
moves nothing, --reason and --limit choose, and a replay that fails again is a dead letter again
(with x-replays) instead of vanishing as a duplicate."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from kombu import Connection

from devkit import DEAD_QUEUE, SimulatorProcess, drain, producer, send
from tests.integration.backfill_kit import (
    add_events,
    cli,
    env_for,
    own_sim,
    record_ids,
    worker_on,
)
from tests.integration.harness import ALL_RECORDS

__all__ = ["env_for", "own_sim", "worker_on"]  # fixtures


def dead_count(url: str) -> int:
    with Connection(url) as conn:
        declared: Any = DEAD_QUEUE.bind(conn.default_channel).queue_declare()
        return int(declared.message_count)


def wait_dead(url: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while dead_count(url) != count:
        assert time.monotonic() < deadline, f"dead queue holds {dead_count(url)}, not {count}"
        time.sleep(0.2)


def listing(env: dict[str, str], tmp: Path) -> list[list[str]]:
    """The dry run's lines: reason, task id, args, replays; in queue order."""
    done = cli(env, "replay", "--dry-run", cwd=tmp, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line.split("\t") for line in done.stdout.splitlines() if "\ttask " in line]


def test_replay_round_trip(
    own_sim: SimulatorProcess, broker_url: str, env_for: Any, worker_on: Any, tmp_path: Path
) -> None:
    env = env_for(broker_url)
    worker_on(env)
    app = producer(broker_url)
    missing = [str(uuid.uuid4()), str(uuid.uuid4())]
    for n, event_id in enumerate(["not-a-uuid", *missing], start=1):
        send(app, event_id)  # one at a time: the dead queue's order is the sending order
        wait_dead(broker_url, n)

    before = listing(env, tmp_path)
    assert [line[0] for line in before] == [
        "invalid_event_id",
        "event_not_found",
        "event_not_found",
    ]
    assert [missing[0] in line[3] for line in before] == [False, True, False]
    assert all(line[4] == "replays 0" for line in before)
    assert dead_count(broker_url) == 3, "a dry run moves nothing"
    assert listing(env, tmp_path) == before, "and leaves the order as it was"

    # Only the oldest event_not_found; it is still 404, so it fails again and must come back.
    done = cli(env, "replay", "--reason", "event_not_found", "--limit", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "replayed 1 dead letter(s) (event_not_found: 1); 1 left" in done.stdout
    wait_dead(broker_url, 3)
    after = listing(env, tmp_path)
    assert [line[3] for line in after] == [before[0][3], before[2][3], before[1][3]]
    assert after[2][1] == before[1][1], "the same task: its headers are unchanged"
    assert after[2][4] == "replays 1"

    # The cause is fixed (the events exist now): replayed again, they are enriched.
    add_events(own_sim, [{"id": event_id, "name": "late.event"} for event_id in missing])
    done = cli(env, "replay", "--reason", "event_not_found", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "replayed 2 dead letter(s) (event_not_found: 2); 1 left" in done.stdout
    records = drain(broker_url, ALL_RECORDS, expect=2, timeout=60, settle=1.0)
    assert sorted(record_ids(records)) == sorted(missing)
    rest = drain(broker_url, DEAD_QUEUE, expect=1, timeout=10, settle=2.0)
    assert [m.headers["x-death-reason"] for m in rest] == ["invalid_event_id"]
    assert "x-replays" not in rest[0].headers


def test_replay_of_an_empty_dead_queue(
    own_sim: SimulatorProcess, amqp_url: str, env_for: Any, tmp_path: Path
) -> None:
    done = cli(env_for(amqp_url), "replay", cwd=tmp_path, timeout=60)
    assert done.returncode == 0
    assert "replayed 0 dead letter(s); 0 left in the dead queue" in done.stdout
