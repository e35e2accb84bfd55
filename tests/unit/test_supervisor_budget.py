"""Several worker processes without Redis split the fleet's budget instead of multiplying it."""

from __future__ import annotations

import pytest

from worker.settings import RateLimit, load_settings
from worker.supervisor import Supervisor


def test_without_redis_each_process_gets_its_share_of_the_budget() -> None:
    settings = load_settings(
        require_token=False, worker_processes=2, rapidly_rate_limit="500/min", redis_url=None
    )
    env = Supervisor(settings)._env(0)
    share = RateLimit.parse(env["RAPIDLY_RATE_LIMIT"])
    assert share.per_second * 2 == pytest.approx(settings.rate_limit.per_second)


def test_with_redis_the_children_share_one_budget() -> None:
    settings = load_settings(
        require_token=False,
        worker_processes=3,
        rapidly_rate_limit="20/s",
        redis_url="redis://127.0.0.1:6379/0",
    )
    supervisor = Supervisor(settings)
    assert supervisor.budget_share() is None
    assert supervisor._env(1).get("RAPIDLY_RATE_LIMIT") in (None, "20/s")


def test_one_process_keeps_the_budget() -> None:
    settings = load_settings(require_token=False, worker_processes=1, rapidly_rate_limit="7/s")
    assert Supervisor(settings).budget_share() is None
