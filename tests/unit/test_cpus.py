"""WORKER_PROCESSES' default: the cgroup CPU quota, else the CPU affinity (fake cgroup trees)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker import cpus
from worker.settings import load_settings


def tree(tmp_path: Path, files: dict[str, str], proc: str = "0::/\n") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc_file = tmp_path / "proc_self_cgroup"
    proc_file.write_text(proc)
    return root, proc_file


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),  # 1.5 CPUs: rounded up
        ("50000 100000\n", 1),  # half a CPU: still one process
        ("400000 100000\n", 4),
        ("max 100000\n", None),
        ("garbage\n", None),
    ],
)
def test_cgroup_v2_cpu_max(tmp_path: Path, text: str, expected: int | None) -> None:
    root, proc = tree(tmp_path, {"cpu.max": text})
    assert cpus.cgroup_cpu_limit(root, proc) == expected


def test_cgroup_v2_own_directory_wins_over_the_mount_point(tmp_path: Path) -> None:
    root, proc = tree(
        tmp_path,
        {"cpu.max": "max 100000", "kubepods/pod1/cpu.max": "300000 100000"},
        proc="0::/kubepods/pod1\n",
    )
    assert cpus.cgroup_cpu_limit(root, proc) == 3


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [("-1", "100000", None), ("100000", "100000", 1), ("250000", "100000", 3)],
)
def test_cgroup_v1_cfs_quota(tmp_path: Path, quota: str, period: str, expected: int | None) -> None:
    root, proc = tree(
        tmp_path,
        {"cpu/cpu.cfs_quota_us": quota, "cpu/cpu.cfs_period_us": period},
        proc="4:memory:/x\n1:cpu:/\n",
    )
    assert cpus.cgroup_cpu_limit(root, proc) == expected


def test_cgroup_v1_combined_controller_and_own_path(tmp_path: Path) -> None:
    root, proc = tree(
        tmp_path,
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        },
        proc="3:cpu,cpuacct:/docker/abc\n",
    )
    assert cpus.cgroup_cpu_limit(root, proc) == 2


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, {})
    assert cpus.cgroup_cpu_limit(root, proc) is None
    assert cpus.cgroup_cpu_limit(tmp_path / "absent", tmp_path / "absent-proc") is None


def test_choice_quota_below_affinity_is_the_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 8)
    root, proc = tree(tmp_path, {"cpu.max": "200000 100000"})
    assert cpus.choose_processes(None, root=root, proc_self_cgroup=proc) == cpus.CpuChoice(
        2, "cgroup"
    )


def test_choice_affinity_below_quota_or_no_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 3)
    root, proc = tree(tmp_path, {"cpu.max": "800000 100000"})
    assert cpus.choose_processes(None, root=root, proc_self_cgroup=proc) == cpus.CpuChoice(
        3, "affinity"
    )
    root2, proc2 = tree(tmp_path / "b", {"cpu.max": "max 100000"})
    assert cpus.choose_processes(None, root=root2, proc_self_cgroup=proc2).source == "affinity"


def test_an_explicit_value_wins(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, {"cpu.max": "800000 100000"})
    assert cpus.choose_processes(1, root=root, proc_self_cgroup=proc) == cpus.CpuChoice(
        1, "setting"
    )


def test_affinity_is_the_schedulers_set() -> None:
    assert cpus.affinity_cpus() == len(os.sched_getaffinity(0))


def test_settings_default_and_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKER_PROCESSES", raising=False)
    settings = load_settings(require_token=False)
    assert settings.worker_processes is None
    assert settings.processes.count >= 1
    assert settings.processes.source in ("cgroup", "affinity")
    monkeypatch.setenv("WORKER_PROCESSES", "")
    assert load_settings(require_token=False).worker_processes is None
    monkeypatch.setenv("WORKER_PROCESSES", "3")
    assert load_settings(require_token=False).processes == cpus.CpuChoice(3, "setting")


@pytest.mark.parametrize(("raw", "expected"), [(None, None), ("", None), (" 2 ", 2), ("x", -1)])
def test_explicit_processes(raw: str | None, expected: int | None) -> None:
    assert cpus.explicit_processes(raw) == expected
