"""The house's arrows point down: checked on the source, so a new import cannot bend them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "worker"
MAX_MODULE_LINES = 400


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_under(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.py"))


def top(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.mark.parametrize("path", modules_under(WORKER), ids=lambda p: str(p.relative_to(ROOT)))
def test_worker_never_imports_tasks_simulator_or_test_tooling(path: Path) -> None:
    # Task modules are named by string (worker.app.TASK_MODULES); importing one from worker/
    # would make the infrastructure depend on the adapters above it.
    wrong = {
        n
        for n in imported_modules(path)
        if top(n) in {"tasks", "simulator", "tests", "devkit", "bench"}
    }
    assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


@pytest.mark.parametrize(
    "path", modules_under(WORKER / "enrichment"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_the_domain_imports_no_broker_library(path: Path) -> None:
    wrong = {n for n in imported_modules(path) if top(n) in {"celery", "kombu", "amqp", "redis"}}
    assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_the_app_names_its_task_modules_and_they_register_the_tasks() -> None:
    from worker.app import TASK_MODULES, app
    from worker.tasking import CUSTOMER_TASK_NAME, TASK_NAME

    assert set(app.conf.include) == set(TASK_MODULES) == {"tasks.enrich", "tasks.enrich_customer"}
    app.loader.import_default_modules()
    assert {TASK_NAME, CUSTOMER_TASK_NAME} <= set(app.tasks)


@pytest.mark.parametrize("path", modules_under(WORKER), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_holds_more_than_one_job(path: Path) -> None:
    name = str(path.relative_to(ROOT))
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines: split it along its seams"


def test_every_exception_class_is_defined_in_errors() -> None:
    """One tree (worker/errors.py); other modules import from it."""
    strays = []
    for path in modules_under(WORKER):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and (base.id.endswith(("Error", "Exception")))
                for base in node.bases
            ):
                strays.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not strays, strays
