"""Hostile hierarchies (simulator ``--dataset hostile``): a 10,000-event chain, a 2-cycle, a
self-parent and a parent in another workspace. Each still yields one record, marked incomplete
with the right reason, for a bounded number of API calls and bounded memory, without recursion."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from devkit import RedisServer, TreeSampler, WorkerProcess, drain, producer, send, tree_rss
from tests.faults import faultkit
from tests.faults.faultkit import AMQP_URL, Tally, record_diff
from tests.integration.harness import ALL_RECORDS

MAX_DEPTH = 100
# GET of the event, one GET per ancestor up to the cap, one children listing; "a few" more for
# pages or the odd retry.
CALL_BUDGET = MAX_DEPTH + 5
RSS_GROWTH_LIMIT = 150 * 2**20


def _pick(data: dict[str, Any]) -> dict[str, str]:
    events = data["events"]
    chain = [e for e in events if "chain_10000" in e["tags"]]
    has_child = {e["parent_id"] for e in chain}
    deepest = [e["id"] for e in chain if e["id"] not in has_child]
    assert len(chain) == 10_000 and len(deepest) == 1
    other = set(data["other_workspace_event_ids"])
    return {
        "deepest_of_10000_chain": deepest[0],
        "two_cycle_member": next(e["id"] for e in events if "cycle_2" in e["tags"]),
        "self_parent": next(e["id"] for e in events if "self_parent" in e["tags"]),
        "cross_workspace_parent": next(
            e["id"]
            for e in events
            if "cross_workspace_parent" in e["tags"] and e["parent_id"] in other
        ),
    }


WANT_REASON = {
    "deepest_of_10000_chain": "max_depth",
    "two_cycle_member": "cycle",
    "self_parent": "cycle",
    "cross_workspace_parent": "parent_not_found",
}


def _calls_logged(worker: WorkerProcess, event_id: str) -> list[int]:
    return [
        int(r.get("api_calls", -1))
        for r in worker.log_records()
        if r.get("event") == "enrich.finished" and r.get("event_id") == event_id
    ]


@pytest.mark.parametrize(
    "extra_chain_events",
    [
        # Chain events enriched after the four named ones (random members, each a capped walk),
        # to load memory, the cache and the connection pool.
        pytest.param(10, id="fast", marks=pytest.mark.faults),
        pytest.param(300, id="full", marks=[pytest.mark.slow_faults, pytest.mark.timeout(900)]),
    ],
)
def test_hostile_hierarchies(
    extra_chain_events: int,
    amqp: str,
    own_redis: RedisServer,
    make_sim: Any,
    spawn_worker: Any,
    tmp_path: Path,
    fault_seed: int,
) -> None:
    sim = make_sim("--dataset", "hostile")
    listing = sim.admin("/_sim/dataset?expected=0")
    picks = _pick(listing)
    rng = random.Random(fault_seed)
    chain_ids = [
        e["id"]
        for e in listing["events"]
        if "chain_10000" in e["tags"] and e["id"] not in picks.values()
    ]
    extra = rng.sample(chain_ids, extra_chain_events)
    wanted = [*picks.values(), *extra]
    expected: dict[str, Any] = {}
    for chunk in range(0, len(wanted), 50):  # the query string stays under aiohttp's line limit
        query = "&".join(f"id={i}" for i in wanted[chunk : chunk + 50])
        expected.update(
            (e["id"], e["expected"]) for e in sim.admin(f"/_sim/dataset?{query}")["events"]
        )

    env = faultkit.fault_worker_env(
        sim.url,
        own_redis.url,
        tmp_path,
        ENRICH_MAX_DEPTH=str(MAX_DEPTH),
        NOT_FOUND_WAIT_SECONDS="2",
    )
    worker = spawn_worker(env)
    started = time.monotonic()
    time.sleep(0.5)
    baseline = tree_rss(worker.pid)
    sampler = TreeSampler([worker.pid])
    sampler.start()
    app = producer(AMQP_URL, confirm=True)
    try:
        # The deep one alone, on a cold cache: its API calls are its own.
        sim.admin("/_sim/stats/reset", {})
        send(app, picks["deepest_of_10000_chain"])
        first = drain(AMQP_URL, ALL_RECORDS, expect=1, timeout=60)
        deep_requests = sim.stats()["requests_total"]
        deep_seconds = time.monotonic() - started
        for name in ("two_cycle_member", "self_parent", "cross_workspace_parent"):
            send(app, picks[name])
        for event_id in extra:
            send(app, event_id)
        faultkit.wait_quiescent(90 + extra_chain_events, stable_polls=2, interval=1.0)
    finally:
        peak = sampler.stop()
    tally = Tally.collect()
    for message in first:  # drained above to time the deep one; count it too
        tally.records[message.properties["message_id"]] += 1
        tally.record_bodies[message.properties["message_id"]].append(message.payload)
        tally.routing_keys[message.properties["message_id"]] = message.delivery_info["routing_key"]
    log = worker.log_text()
    alive = worker.alive()
    worker.stop(timeout=30)

    by_name = {}
    for name, event_id in picks.items():
        bodies = tally.record_bodies.get(event_id, [])
        by_name[name] = bodies[0]["hierarchy"] if len(bodies) == 1 else None
    deep_calls = _calls_logged(worker, picks["deepest_of_10000_chain"])
    extra_calls = [c for i in extra for c in _calls_logged(worker, i)]
    summary = (
        f"hostile hierarchies [{'fast' if extra_chain_events <= 10 else 'full'}] "
        f"seed={fault_seed}: "
        + ", ".join(
            f"{n}={h['incomplete_reason'] if h else 'NO SINGLE RECORD'}"
            f"(depth {h['depth'] if h else '-'})"
            for n, h in by_name.items()
        )
        + f"; deep event API calls: simulator {deep_requests}, worker log {deep_calls}"
        + f"; {extra_chain_events} more chain events, max calls {max(extra_calls, default=0)}"
        + f"; RSS baseline {baseline / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB"
        + f"; deep event {deep_seconds:.1f}s, duration={time.monotonic() - started:.1f}s"
    )
    faultkit.SUMMARIES.append(summary)
    print(summary)

    for name, hierarchy in by_name.items():
        assert hierarchy is not None, (name, tally.records.get(picks[name]))
        assert hierarchy["complete"] is False, name
        assert hierarchy["incomplete_reason"] == WANT_REASON[name], (name, hierarchy)
    deepest = by_name["deepest_of_10000_chain"]
    assert deepest is not None
    assert deepest["depth"] == MAX_DEPTH
    assert len(deepest["ancestors"]) == MAX_DEPTH
    for event_id, bodies in tally.record_bodies.items():
        assert len(bodies) == 1, (event_id, len(bodies))
        assert record_diff(bodies[0], expected[event_id], tally.routing_keys[event_id]) == ""
    assert set(tally.records) == {*picks.values(), *extra}
    assert tally.dead == {}
    assert deep_requests <= CALL_BUDGET, deep_requests
    assert deep_calls and max(deep_calls) <= CALL_BUDGET, deep_calls
    assert len(extra_calls) == extra_chain_events and max(extra_calls) <= CALL_BUDGET
    assert peak - baseline < RSS_GROWTH_LIMIT, summary
    assert "RecursionError" not in log and "maximum recursion depth" not in log
    assert alive
    assert faultkit.token_leaks(worker) == []
