"""The cluster suite (``make cluster``): the worker on a three-node RabbitMQ cluster of its own,
quorum queues, a node killed mid-run, a six-process fleet on one API budget.

Not part of ``make test``: it starts three Erlang nodes (about a minute of the machine's CPU) and
runs for a few minutes. Skipped unless ``--run-cluster``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devkit import RabbitCluster, cluster_tools_missing

SUMMARIES: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("cluster", "RabbitMQ cluster suite").addoption(
        "--run-cluster",
        action="store_true",
        default=False,
        help="run the RabbitMQ cluster suite (make cluster)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs --run-cluster; starts a RabbitMQ cluster")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)
            if not config.getoption("--run-cluster", default=False):
                item.add_marker(pytest.mark.skip(reason="the cluster suite runs with make cluster"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARIES:
        terminalreporter.write_sep("=", "cluster summary")
        for line in SUMMARIES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def cluster() -> Iterator[RabbitCluster]:
    problem = cluster_tools_missing()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the cluster suite cannot run: {problem}")
        pytest.skip(problem)
    base_port = int(os.environ.get("CLUSTER_BASE_PORT", "5701"))
    rabbit = RabbitCluster(3, base_port).start()
    try:
        yield rabbit
    finally:
        rabbit.stop()
        left = rabbit.leftover_pids()
        assert not left, f"cluster processes left running: {left}"
