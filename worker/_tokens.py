"""Tokens unique to one claim or one flight, without a ``getrandom`` syscall each.

A token only has to differ from every other token alive in the fleet at the same time (leases,
sent marks and flight keys compare them to tell their owner). A random 64-bit prefix drawn once
per process (and again in a forked child) and a counter give that: two processes share a prefix
with a chance of one in 2**64 per pair. The tokens are as long as the 16 random bytes they
replace (32 hex digits).
"""

from __future__ import annotations

import itertools
import os


class _Source:
    __slots__ = ("counter", "prefix")

    def __init__(self) -> None:
        self.draw()

    def draw(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()


_source = _Source()
os.register_at_fork(after_in_child=_source.draw)


def new_token() -> str:
    """32 hex digits, never returned twice by this process."""
    return f"{_source.prefix}{next(_source.counter):016x}"
