"""A script run by a fresh interpreter: for tests of gevent's monkey-patching, which is
process-wide and must come before anything imports sockets, so it must not reach the test run."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_child(script: str, *args: str, timeout: float = 60) -> str:
    """What ``script`` (dedented) printed, stripped; it must exit 0 (else its output is the
    failure's message)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def last_line(output: str) -> str:
    """A child's verdict: the last line it printed (log lines may come before it)."""
    return output.splitlines()[-1] if output else ""
