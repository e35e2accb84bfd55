"""Fixtures: one simulator per test module, reset to default knobs around every test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from simulator import SimulatorConfig, SimulatorHandle, start_in_thread

TOKEN = SimulatorConfig().token
NOSCOPE = SimulatorConfig().noscope_token
_RUNTIME_DEFAULTS = {
    k: v
    for k, v in SimulatorConfig().to_dict().items()
    if k not in ("host", "port", "seed", "dataset", "bench_size")
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    handle = start_in_thread(SimulatorConfig())
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(autouse=True)
def _fresh_knobs(request: pytest.FixtureRequest) -> Iterator[None]:
    if "sim" not in request.fixturenames:
        yield
        return
    handle: SimulatorHandle = request.getfixturevalue("sim")
    handle.update(**_RUNTIME_DEFAULTS)
    handle.reset()
    yield
    handle.update(**_RUNTIME_DEFAULTS)
    handle.reset()


@pytest.fixture
def client(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sim.url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10.0,
        follow_redirects=False,
    ) as c:
        yield c


@pytest.fixture
def anon(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10.0, follow_redirects=False) as c:
        yield c
