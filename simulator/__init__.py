"""Rapidly API simulator: a real HTTP server imitating the Rapidly Events API.

It serves ``GET /api/events/{id}`` and ``GET /api/events/`` over a deterministic dataset,
with the real server's error bodies, quirks and injectable faults (latency, 5xx, garbage
bodies, timeouts, replica lag, 429 with ``Retry-After``, cross-host redirects), plus
``/_sim/...`` admin endpoints. Nothing in the product imports it; tests and the benchmark
start it with :func:`start_in_thread` or ``python -m simulator``.
"""

from ._config import ConfigError, SimulatorConfig, parse_rate_limit
from ._dataset import Dataset, build_dataset, classify_uuid4, format_timestamp
from ._server import Simulator, SimulatorHandle, start_in_thread

__all__ = [
    "ConfigError",
    "Dataset",
    "Simulator",
    "SimulatorConfig",
    "SimulatorHandle",
    "build_dataset",
    "classify_uuid4",
    "format_timestamp",
    "parse_rate_limit",
    "start_in_thread",
]
