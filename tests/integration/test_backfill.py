"""``rapidly-worker backfill`` (CONTRACT.md section 7) as a user runs it, with a real worker from
the Procfile line, a real simulator and real brokers: every event of the window becomes exactly
one record, with few API calls, across tied timestamps, a SIGKILL and a re-run, and --follow."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devkit import SimulatorProcess, drain
from tests.integration.backfill_kit import (
    add_events,
    checkpoint_count,
    cli,
    cli_process,
    env_for,
    expected_of,
    own_sim,
    record_ids,
    worker_on,
)
from tests.integration.harness import ALL_RECORDS
from tests.integration.test_end_to_end import check_record

__all__ = ["env_for", "own_sim", "worker_on"]  # fixtures


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def test_backfill_of_the_whole_dataset_gives_each_event_one_record(
    own_sim: SimulatorProcess, broker_url: str, env_for: Any, worker_on: Any, tmp_path: Path
) -> None:
    env = env_for(broker_url)
    worker_on(env)
    data = own_sim.dataset()
    window = [e["id"] for e in data["events"] if "added" not in e["tags"]]  # all in 2025-03
    expected = expected_of(own_sim, window)
    done = cli(
        env,
        "backfill",
        "--since",
        "2025-03-01T00:00:00Z",
        "--until",
        "2025-04-01T00:00:00Z",
        "--checkpoint",
        str(tmp_path / "cp.json"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = drain(broker_url, ALL_RECORDS, expect=len(expected), timeout=120, settle=2.0)
    counts = Counter(record_ids(records))
    assert set(counts) == set(expected), "one record per event of the window"
    assert max(counts.values()) == 1, "no duplicates"
    for message in records:
        check_record(message, expected[message.properties["message_id"]])
    calls = own_sim.stats()["requests_total"]
    # The default dataset is the nasty one (cycles, parents in another workspace, a 120-event
    # chain): the worker still GETs what no page held. Producer-sent IDs cost ~1.1 calls each.
    assert calls / len(expected) < 0.5, calls
    assert "handed over" in done.stderr and "%" in done.stderr  # summary and progress bar


def test_backfill_across_tied_timestamps(
    own_sim: SimulatorProcess, amqp_url: str, env_for: Any, worker_on: Any, tmp_path: Path
) -> None:
    env = env_for(amqp_url)
    worker_on(env)
    base = datetime(2020, 1, 1, tzinfo=UTC)
    parent = add_events(own_sim, [{"name": "batch.started", "timestamp": _iso(base)}])[0]
    tied = _iso(base + timedelta(seconds=1, microseconds=7))
    kids = add_events(
        own_sim,
        [{"name": "batch.item", "timestamp": tied, "parent_id": parent["id"]} for _ in range(250)],
    )
    # A second tie that straddles a page boundary: 60 + 60 events on two microseconds.
    pairs = add_events(
        own_sim,
        [
            {
                "name": "pair.item",
                "timestamp": _iso(base + timedelta(seconds=2, microseconds=n % 2)),
            }
            for n in range(120)
        ],
    )
    ids = [parent["id"]] + [e["id"] for e in kids + pairs]
    expected = expected_of(own_sim, ids)
    assert expected[parent["id"]]["hierarchy"]["child_count"] == 250
    done = cli(
        env,
        "backfill",
        "--since",
        _iso(base),
        "--until",
        _iso(base + timedelta(days=1)),
        "--checkpoint",
        str(tmp_path / "cp.json"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = drain(amqp_url, ALL_RECORDS, expect=len(ids), timeout=120, settle=2.0)
    counts = Counter(record_ids(records))
    assert set(counts) == set(ids) and max(counts.values()) == 1
    for message in records:
        check_record(message, expected[message.properties["message_id"]])
    calls = own_sim.stats()["requests_total"]
    assert calls <= 12, "\n".join(
        r["query"][:300] for r in own_sim.admin("/_sim/requests?limit=60")
    )  # pages, not one call per event


def test_backfill_killed_then_run_again_hands_over_the_rest_once(
    own_sim: SimulatorProcess, amqp_url: str, env_for: Any, worker_on: Any, tmp_path: Path
) -> None:
    env = env_for(amqp_url)
    worker_on(env)
    base = datetime(2021, 1, 1, tzinfo=UTC)
    created = add_events(
        own_sim,
        [{"name": "load.item", "timestamp": _iso(base + timedelta(seconds=n))} for n in range(900)],
    )
    ids = [e["id"] for e in created]
    own_sim.configure(latency_ms=400.0)  # slow pages, so the kill lands mid-run
    checkpoint = tmp_path / "cp.json"
    args = (
        "backfill",
        "--since",
        _iso(base),
        "--until",
        _iso(base + timedelta(days=1)),
        "--checkpoint",
        str(checkpoint),
    )
    first = cli_process(env, *args, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while checkpoint_count(checkpoint) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    at_kill = checkpoint_count(checkpoint)
    assert 200 <= at_kill < len(ids), "killed mid-run"
    own_sim.configure(latency_ms=0.0)
    second = cli(env, *args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"{len(ids) - at_kill} event(s) handed over in this run" in second.stderr
    assert json.loads(checkpoint.read_text())["count"] == len(ids)
    records = drain(amqp_url, ALL_RECORDS, expect=len(ids), timeout=120, settle=3.0)
    counts = Counter(record_ids(records))
    assert set(counts) == set(ids), "every event has its record"
    assert max(counts.values()) == 1, "none published twice"
    third = cli(env, *args, cwd=tmp_path)  # done already: nothing to hand over
    assert third.returncode == 0 and "0 event(s) handed over in this run" in third.stderr


def test_follow_hands_over_new_events_as_they_appear(
    own_sim: SimulatorProcess, amqp_url: str, env_for: Any, worker_on: Any, tmp_path: Path
) -> None:
    env = env_for(amqp_url)
    worker_on(env)
    checkpoint = tmp_path / "cp.json"
    since = datetime.now(UTC) - timedelta(seconds=5)
    follow = cli_process(
        env,
        "backfill",
        "--since",
        _iso(since),
        "--follow",
        "--poll-interval",
        "1",
        "--margin",
        "4",
        "--checkpoint",
        str(checkpoint),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while not checkpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert checkpoint.exists(), "the window before now was handed over"
        fresh = add_events(own_sim, [{"name": "live.event"}])[0]
        # Listed late: its timestamp is older than the newest event already handed over.
        add_events(own_sim, [{"name": "live.later", "timestamp": _iso(datetime.now(UTC))}])
        late = add_events(
            own_sim,
            [{"name": "live.late", "timestamp": _iso(datetime.now(UTC) - timedelta(seconds=2))}],
        )[0]
        started = time.monotonic()
        records = drain(amqp_url, ALL_RECORDS, expect=3, timeout=20, settle=3.0)
        assert time.monotonic() - started < 1 + 4 + 10  # poll interval + margin + slack
        counts = Counter(record_ids(records))
        assert {fresh["id"], late["id"]} <= set(counts) and len(counts) == 3
        assert max(counts.values()) == 1
    finally:
        follow.send_signal(signal.SIGTERM)
        _, err = follow.communicate(timeout=30)
    assert follow.returncode == 0, err[-2000:]
    assert json.loads(checkpoint.read_text())["count"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--since"),
        (("--since", "yesterday"), "RFC 3339"),
        (("--since", "2025-03-01T00:00:00"), "RFC 3339"),
        (("--since", "2025-03-02T00:00:00Z", "--until", "2025-03-01T00:00:00Z"), "later"),
        (("--since", "2025-03-01T00:00:00Z", "--poll-interval", "0"), "positive"),
    ],
)
def test_wrong_arguments_are_one_line_and_exit_2(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    done = cli({}, "backfill", *args, cwd=tmp_path, timeout=30)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
