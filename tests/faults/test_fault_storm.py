"""Kills, connection closes, Redis restarts, a 401 window and a faulty API while events flow:
every valid event still ends as exactly one record, every bad ID as exactly one dead letter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devkit import RedisServer
from tests.faults import faultkit
from tests.faults.storm import FAST, FULL, SIM_FAULTS, StormPlan, explain, run_storm


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(FAST, id="fast", marks=pytest.mark.faults),
        pytest.param(FULL, id="full", marks=[pytest.mark.slow_faults, pytest.mark.timeout(1500)]),
    ],
)
def test_fault_storm(
    plan: StormPlan,
    amqp: str,
    own_redis: RedisServer,
    make_sim: Any,
    spawn_worker: Any,
    fault_seed: int,
    tmp_path: Path,
) -> None:
    sim = make_sim("--dataset", "bench", "--bench-size", str(plan.bench_size), *SIM_FAULTS)
    result = run_storm(
        plan, fault_seed, tmp=tmp_path, sim=sim, own_redis=own_redis, spawn_worker=spawn_worker
    )
    faultkit.SUMMARIES.append(result.summary_line())
    report = explain(result)
    print(report)
    (tmp_path / "report.txt").write_text(report + "\n")

    # The storm really happened.
    assert result.kills == plan.kills
    assert result.connection_closes == plan.connection_closes
    assert result.redis_restarts == plan.redis_restarts
    assert result.sim_stats["faults"]["error"] > 0 and result.sim_stats["lagged"] > 0
    assert result.sim_stats["by_token_status"].get("invalid", 0) > 0, "no 401 was served"
    assert result.sim_stats["rate_limited"] > 0, "no 429 was served"

    assert result.quiescent, report
    # One record per valid event: nothing lost, nothing wrong, and no duplicate but the documented
    # kinds (a connection closed between a record's write and its confirm, or a kill between the
    # write and the sent mark: published again).
    explained = {*result.confirm_lost, *result.kill_gap}
    unexplained = {k: n for k, n in result.duplicated.items() if k not in explained}
    assert (len(result.lost), unexplained) == (0, {}), report
    assert result.wrong == {}, report
    # Every invalid or unknown ID dead-lettered exactly once, with its reason; nothing else.
    assert result.dead_mismatch == {}, report
    assert result.worker_alive and result.self_exits == 0, report
    assert result.token_leaks == [], result.token_leaks
