"""constraints/floors.txt pins exactly the lower bounds pyproject.toml declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def test_every_direct_dependency_has_its_floor_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lower = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        (bound,) = [s.version for s in requirement.specifier if s.operator == ">="]
        lower[requirement.name.lower()] = Version(bound)
    pins = {}
    for line in (ROOT / "constraints" / "floors.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip())
        if match:
            pins[match.group(1).lower()] = Version(match.group(2))
    assert pins == lower
