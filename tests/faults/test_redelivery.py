"""Redelivery without duplicates: the event ID, not the message, is the unit of work.

The same ID sent 20 times at once; IDs sent 20 times each with the worker SIGKILLed while they
are in flight, then sent 20 times again; and everything re-sent after one more kill once it was
published. Each ID ends as exactly one record; the one duplicate allowed is the documented kind,
a kill that fell between a record's write to the broker and its sent mark (``faultkit.kill_gap``)."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devkit import RedisServer
from tests.faults import faultkit
from tests.faults.faultkit import Tally, record_diff, send_concurrently

COPIES = 20


@pytest.mark.faults
def test_same_id_concurrently_and_across_kills(
    amqp: str,
    own_redis: RedisServer,
    make_sim: Any,
    spawn_worker: Any,
    tmp_path: Path,
    fault_seed: int,
) -> None:
    rng = random.Random(fault_seed)
    # 150 ms per API call: an event with a few ancestors is in flight for most of a second.
    sim = make_sim("--latency-ms", "150")
    events = sim.dataset()["events"]
    deep = [
        e
        for e in events
        if e["expected"]["hierarchy"]["complete"] and 2 <= e["expected"]["hierarchy"]["depth"] <= 5
    ]
    chosen = rng.sample(deep, 5)
    expected = {e["id"]: e["expected"] for e in chosen}
    alone, *killed = list(expected)

    # The shortest lease the worker accepts: a lease left by a killed worker expires sooner.
    env = faultkit.fault_worker_env(sim.url, own_redis.url, tmp_path, DEDUPE_LEASE_SECONDS="5")
    worker = spawn_worker(env)
    started = time.monotonic()
    timeline: list[str] = []
    kills: list[datetime] = []
    try:
        # 1. One ID, 20 copies at once.
        send_concurrently([alone] * COPIES)
        faultkit.wait_quiescent(30, stable_polls=1, interval=0.5)
        # 2. Four IDs, 20 copies each at once, and a SIGKILL while they are in flight.
        send_concurrently([i for i in killed for _ in range(COPIES)])
        in_flight = round(rng.uniform(0.2, 1.2), 2)
        time.sleep(in_flight)
        worker.kill()
        kills.append(datetime.now(UTC))
        timeline.append(f"{faultkit.now_iso()} SIGKILL {in_flight}s after sending")
        worker.start()
        worker.wait_ready()
        send_concurrently([i for i in killed for _ in range(COPIES)])
        faultkit.wait_quiescent(60, stable_polls=2, interval=1.0)
        # 3. Everything published by now: one more kill, then all five re-sent.
        worker.kill()
        kills.append(datetime.now(UTC))
        timeline.append(f"{faultkit.now_iso()} SIGKILL after quiescence")
        worker.start()
        worker.wait_ready()
        send_concurrently([i for i in expected for _ in range(4)])
        faultkit.wait_quiescent(60, stable_polls=2, interval=1.0)
    finally:
        alive = worker.alive()
        tally = Tally.collect()
        outcomes = faultkit.outcome_counts(worker)
        worker.stop(timeout=30)

    sends = COPIES + 2 * COPIES * len(killed) + 4 * len(expected)
    duplicated = tally.duplicated()
    explained = faultkit.kill_gap(worker, duplicated, tally.record_bodies, kills)
    summary = (
        f"redelivery seed={fault_seed}: {len(expected)} ids, {sends} sends, kills=2, "
        f"records={sum(tally.records.values())} "
        f"lost={len(tally.lost(expected))} duplicated={sum(duplicated.values())} "
        f"(kill between the write and the sent mark: {len(explained)}) "
        f"dead_letters={tally.dead_by_reason()} outcomes={outcomes} "
        f"duration={time.monotonic() - started:.1f}s"
    )
    faultkit.SUMMARIES.append(summary)
    story = "\n".join([summary, *timeline, faultkit.log_story(worker, expected, limit=200)])
    print(story)

    assert set(tally.records) == set(expected) and not tally.lost(expected), story
    assert set(duplicated) <= set(explained), story
    for event_id, bodies in tally.record_bodies.items():
        assert record_diff(bodies[0], expected[event_id], tally.routing_keys[event_id]) == ""
    assert tally.dead == {}, story
    assert outcomes.get("published") == len(expected), story
    assert alive
    assert faultkit.token_leaks(worker) == []
