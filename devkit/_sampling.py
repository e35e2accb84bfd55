"""Resident memory and CPU time of process trees (a worker's supervisor and its children)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import psutil


def tree_rss(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, in bytes (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class TreeSampler(threading.Thread):
    """Every ``interval`` seconds: RSS of each root process plus all its descendants (summed),
    and their CPU time (kept per pid, so a child that exits still counts up to its last
    sample)."""

    def __init__(self, pids: Iterable[int], interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="tree-sampler")
        self.roots = [psutil.Process(pid) for pid in pids]
        self.interval = interval
        self.peak_rss = 0
        self.last_rss = 0
        self.series: list[tuple[float, int]] = []
        self._cpu: dict[int, float] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def _tree(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for root in self.roots:
            try:
                procs.append(root)
                procs.extend(root.children(recursive=True))
            except psutil.Error:
                continue
        return procs

    def sample(self) -> int:
        rss = 0
        cpu: dict[int, float] = {}
        for proc in self._tree():
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    cpu[proc.pid] = times.user + times.system
            except psutil.Error:
                continue
        with self._lock:
            self._cpu.update(cpu)
            self.last_rss = rss
            self.peak_rss = max(self.peak_rss, rss)
            self.series.append((time.time(), rss))
        return rss

    def cpu_seconds(self) -> float:
        self.sample()
        with self._lock:
            return sum(self._cpu.values())

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> int:
        """Stop sampling; the peak RSS seen, in bytes."""
        self._halt.set()
        self.join(5)
        return self.peak_rss
