"""How many CPUs this process may use: the default of ``WORKER_PROCESSES``.

A gevent worker process uses at most one core (the GIL), so a pod runs one process per core it
is allowed. "Allowed" is the tighter of two limits:

- the cgroup CPU quota (Kubernetes ``resources.limits.cpu``, ``docker run --cpus``): cgroup v2
  ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``), cgroup v1 ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us`` (quota ``-1`` = none); rounded up, so 1.5 CPUs run two processes;
- the CPU affinity (``taskset``, cpusets): ``os.sched_getaffinity``.

``os.cpu_count()`` is neither: it counts the host's cores, not the container's share.

Import-light on purpose (``os``, ``math``, ``pathlib``): the CLI calls it before gevent patches.
The cgroup root and ``/proc/self/cgroup`` are parameters so tests read fake trees.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True, slots=True)
class CpuChoice:
    """``count`` processes, and where the figure came from: ``setting`` (``WORKER_PROCESSES``),
    ``cgroup`` (the CPU quota) or ``affinity`` (the CPUs the scheduler may run us on)."""

    count: int
    source: str


def _quota_cpus(quota: float, period: float) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_paths(proc_self_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path under the v2 hierarchy and under v1's ``cpu`` controller."""
    v2: str | None = None
    v1: str | None = None
    for line in (_read(proc_self_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy_id, controllers, path = parts
        if hierarchy_id == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _candidates(base: Path, own: str | None) -> list[Path]:
    """The process's own cgroup directory first (a host without cgroup namespaces), then the
    mount point itself (inside a container, the container's cgroup)."""
    dirs = []
    if own and own.strip("/"):
        dirs.append(base / own.strip("/"))
    dirs.append(base)
    return dirs


def cgroup_cpu_limit(
    root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> int | None:
    """The CPU quota as a whole number of CPUs (rounded up), or None when there is no quota."""
    v2_path, v1_path = _own_paths(proc_self_cgroup)
    for directory in _candidates(root, v2_path):
        text = _read(directory / "cpu.max")
        if text is None:
            continue
        fields = text.split()
        if len(fields) != 2 or fields[0] == "max":
            return None
        try:
            return _quota_cpus(float(fields[0]), float(fields[1]))
        except ValueError:
            return None
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for directory in _candidates(root / controller, v1_path):
            quota = _read(directory / "cpu.cfs_quota_us")
            period = _read(directory / "cpu.cfs_period_us")
            if quota is None or period is None:
                continue
            try:
                return _quota_cpus(float(quota), float(period))
            except ValueError:
                return None
    return None


def affinity_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def choose_processes(
    explicit: int | None,
    *,
    root: Path = CGROUP_ROOT,
    proc_self_cgroup: Path = PROC_SELF_CGROUP,
) -> CpuChoice:
    """``WORKER_PROCESSES`` when set, else one process per CPU this process may use."""
    if explicit is not None:
        return CpuChoice(explicit, "setting")
    affinity = affinity_cpus()
    quota = cgroup_cpu_limit(root, proc_self_cgroup)
    if quota is not None and quota < affinity:
        return CpuChoice(quota, "cgroup")
    return CpuChoice(affinity, "affinity")


def explicit_processes(raw: str | None) -> int | None:
    """``WORKER_PROCESSES`` as the CLI sees it before the settings are loaded: None when unset or
    empty, else the number (a wrong value is left to the settings' validation: returns -1)."""
    if raw is None or not raw.strip():
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return -1
