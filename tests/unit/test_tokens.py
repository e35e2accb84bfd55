"""Claim tokens: never the same twice, in this process or a forked one."""

from __future__ import annotations

import os
import re

from worker.dedupe import Lease


def test_tokens_are_32_hex_digits_and_never_repeat() -> None:
    tokens = [Lease("k").token for _ in range(100_000)]
    assert len(set(tokens)) == len(tokens)
    assert all(re.fullmatch(rb"[0-9a-f]{32}", token) for token in tokens[:1000])
    assert Lease("k").token != Lease("k").token


def test_a_forked_child_draws_tokens_of_its_own() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, Lease("k").token)
        os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    mine = Lease("k").token
    assert len(child) == 32
    assert child[:16] != mine[:16]
