"""``python -m bench.fastsim [simulator options]``: the project's API simulator with one indexed
fast path, for the memory test's 200,000-event dataset only.

Why: the worker asks for windows of root events
(``GET /api/events/?depth=0&sorting=timestamp&start_timestamp=T&limit=100``). The simulator answers
that by testing every root event of the workspace against the filters, so one call costs
O(roots): ~145,000 tests at 200k events, which made the simulator, not the worker, the bottleneck
(about 15 events/s, 100% of a core). A real API answers from a timestamp index.

What changes: only queries with ``depth=0``, no ``parent_id``, ascending ``timestamp`` sorting
and no filter other than ``start_timestamp``/``end_timestamp`` are answered by bisecting the
roots' sorted timestamps; everything else, and every other behaviour (auth, faults, latency,
stats, pagination, bodies) is the unchanged simulator. Before it reports ready, the fast path is
checked against the original on 40 windows (random and edge starts, pages 1-2, limits 1/100) and
the process exits non-zero on any difference.
"""

from __future__ import annotations

import bisect
import random
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from multidict import MultiDict

from simulator import __main__ as simulator_main
from simulator import _server

_original_run_list_query = _server.Simulator.run_list_query
_original_start = _server.Simulator.start


def _fast_path_applies(q: Any) -> bool:
    return (
        q.depth == 0
        and q.parent_id is None
        and not q.descending
        and q.customer_id is None
        and q.external_customer_id is None
        and q.name is None
        and q.source is None
        and q.workspace_id is None
        and not q.metadata
    )


def _root_stamps(index: Any) -> list[int]:
    stamps = getattr(index, "_bench_root_stamps", None)
    if stamps is None:
        ts = index.dataset.timestamp_us
        stamps = [ts[i] for i in index.roots_ws]
        index._bench_root_stamps = stamps
    return stamps


def run_list_query(self: Any, q: Any) -> list[str]:
    if not _fast_path_applies(q):
        return _original_run_list_query(self, q)
    index = self._index
    stamps = _root_stamps(index)
    # The original keeps a root when start < stamp < end (both strict), in roots_ws order,
    # which is already ascending by timestamp (ties in the same stable order).
    lo = 0 if q.start_us is None else bisect.bisect_right(stamps, q.start_us)
    hi = len(stamps) if q.end_us is None else bisect.bisect_left(stamps, q.end_us)
    return index.roots_ws[lo:hi] if lo < hi else []


def _iso(us: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    return moment.isoformat().replace("+00:00", "Z")


def self_check(simulator: Any, samples: int = 40) -> None:
    index = simulator._index
    stamps = _root_stamps(index)
    if not stamps:
        return
    rng = random.Random(7)
    picks = [stamps[0] - 1, stamps[-1], stamps[-1] + 1, stamps[len(stamps) // 2] - 1]
    while len(picks) < samples:
        base = rng.choice(stamps)
        picks.append(base + rng.choice([-1, 0, 1, -1_000_000]))
    for n, start in enumerate(picks):
        params = MultiDict(
            depth="0",
            sorting="timestamp",
            start_timestamp=_iso(start),
            limit="100" if n % 3 else "1",
            page="1" if n % 5 else "2",
        )
        if n % 7 == 0:
            params["end_timestamp"] = _iso(start + 5_000_000)
        q, errors = _server.parse_list_query(params)
        if errors or not _fast_path_applies(q):
            raise SystemExit(f"bench.fastsim: self-check built a bad query: {errors}")
        fast = run_list_query(simulator, q)
        slow = _original_run_list_query(simulator, q)
        if fast != slow:
            raise SystemExit(f"bench.fastsim: fast path differs from the simulator for {params}")


async def start(self: Any) -> str:
    self_check(self)
    return await _original_start(self)


def main(argv: list[str] | None = None) -> int:
    _server.Simulator.run_list_query = run_list_query  # type: ignore[method-assign]
    _server.Simulator.start = start  # type: ignore[method-assign]
    return simulator_main.main(argv)


if __name__ == "__main__":
    sys.exit(main())
