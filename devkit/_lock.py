"""One run at a time across the machine: a benchmark or a fault-suite run purges queues, flushes
Redis databases and closes connections, so two of them on one vhost would wreck each other."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def machine_lock(
    path: Path,
    *,
    timeout: float,
    what: str,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (under /tmp, not $TMPDIR: every session on the
    machine must see the same file). Waits for the holder, telling ``on_wait`` every 30 s, up to
    ``timeout``; then raises TimeoutError naming the holder's pid and ``what`` it protects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        deadline = time.monotonic() + timeout
        next_note = 0.0
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown pid"
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another run ({holder}) still holds {what} after {timeout:.0f}s ({path})"
                    ) from None
                if on_wait is not None and time.monotonic() >= next_note:
                    on_wait(f"waiting for another run ({holder}) on {what}")
                    next_note = time.monotonic() + 30
                time.sleep(1)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
