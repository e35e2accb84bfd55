"""``python -m simulator [options]``: serve until SIGTERM/SIGINT.

On ready, prints exactly one JSON line to stdout: ``{"url": "http://127.0.0.1:PORT",
"port": PORT}``. Every field of :class:`SimulatorConfig` is a ``--kebab-case`` flag.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from dataclasses import fields
from typing import Any

from ._config import ConfigError, SimulatorConfig, field_kind
from ._server import Simulator

_HELP = {
    "host": "interface to listen on",
    "port": "port to listen on (0 picks a free one)",
    "token": "the valid workspace token (full scope)",
    "token_valid": "whether --token is accepted (--no-token-valid: it answers 401 invalid_token)",
    "noscope_token": "a token that answers 403 insufficient_scope",
    "seed": "seed of the dataset and of the fault draws",
    "dataset": "default | bench | hostile | fanout",
    "bench_size": "number of events of the bench dataset (fanout: children of the wide parent)",
    "latency_ms": "latency added to every /api request",
    "latency_jitter_ms": "uniform jitter (+/-) around --latency-ms",
    "error_rate": "fraction of /api requests answering 500",
    "garbage_rate": "fraction of /api requests answering 200 with a non-JSON body",
    "timeout_rate": "fraction of /api requests that stall --timeout-seconds first",
    "timeout_seconds": "how long a timeout fault stalls",
    "lag_reads": "GET /api/events/{id} answers 404 for the first K reads of each id",
    "rate_limit": "token bucket per token, e.g. 30/s or 500/min (none: off)",
    "retry_after_http_date": "send Retry-After as an HTTP date instead of seconds",
    "redirect_to": "answer every GET /api/events/{id} with a 307 to this base URL",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator", description="Serve a simulated Rapidly Events API."
    )
    defaults = SimulatorConfig()
    for f in fields(SimulatorConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = field_kind(f.name)
        default = getattr(defaults, f.name)
        help_text = f"{_HELP.get(f.name, '')} (default: {default})"
        if kind == "bool":
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
        elif kind == "int":
            parser.add_argument(flag, dest=f.name, type=int, default=default, help=help_text)
        elif kind == "float":
            parser.add_argument(flag, dest=f.name, type=float, default=default, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=str, default=default, help=help_text)
    return parser


async def _serve(config: SimulatorConfig) -> None:
    simulator = Simulator(config)
    url = await simulator.start()
    sys.stdout.write(json.dumps({"url": url, "port": simulator.port}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await simulator.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(SimulatorConfig)}
    try:
        config = SimulatorConfig(**values)
    except ConfigError as exc:
        sys.stderr.write(f"simulator: {exc}\n")
        return 2
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
