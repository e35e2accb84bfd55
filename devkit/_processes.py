"""The API simulator as a child process, and the Procfile's command lines."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
# The simulator's valid token (see simulator/): what the worker under test sends.
TOKEN = "sim_oat_valid_token_0123456789"


def procfile_command(kind: str = "worker") -> str:
    """The command of the Procfile's ``kind:`` line, unchanged: tests and the benchmark run it
    under ``bash -c``, as tests from outside the project do."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return line.split(":", 1)[1].strip()
    raise LookupError(f"Procfile has no {kind}: line")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimulatorProcess:
    """``python -m simulator --port 0 ARGS`` (or another ``module`` with the same command line)
    in its own session, from the repository (the simulator is not in the worker's package);
    ``url`` is read from its first output line."""

    def __init__(self, *args: str, module: str = "simulator", admin_timeout: float = 30) -> None:
        self.args = args
        self.module = module
        self.admin_timeout = admin_timeout
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"simulator did not start (exit {self.proc.poll()})")
        self.url: str = json.loads(line)["url"]

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET ``path`` of the admin API, or POST ``body`` as JSON to it."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method="POST" if body is not None else "GET",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.admin_timeout) as response:
            return json.loads(response.read() or b"null")

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.admin("/_sim/stats")
        return stats

    def reset_stats(self) -> None:
        self.admin("/_sim/stats/reset", {})

    def configure(self, **knobs: Any) -> Any:
        return self.admin("/_sim/config", knobs)

    def dataset(self) -> dict[str, Any]:
        dataset: dict[str, Any] = self.admin("/_sim/dataset")
        return dataset

    def cpu_seconds(self) -> float:
        import psutil  # noqa: PLC0415 - a dev dependency, only the benchmark asks

        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
