"""A throw-away RabbitMQ cluster of three nodes on loopback ports, for the cluster tests.

Every node is a ``rabbitmq-server`` child process of ours, in its own session, with everything
under one temporary directory: node name ``rabbit-cN@localhost``, AMQP port ``base_port + N - 1``
(5701-5703), distribution port 25701-25703, its own mnesia and log directories, a config file
that listens on its port only (the machine's ``/etc/rabbitmq`` files point at 5672 and are not
read), no plugins, and one fresh Erlang cookie in a ``HOME`` of its own. The server scripts
under ``/usr/lib/rabbitmq/bin`` are run directly: the ``/usr/sbin`` wrappers switch to the
``rabbitmq`` user and its cookie, which is the machine's own node's.

The default node on 5672 is never touched: no command here names it, and ``stop`` ends only the
processes this object started (by their process groups) and any process whose command line holds
this cluster's temporary directory.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SBIN = Path("/usr/lib/rabbitmq/bin")
# One scheduler per node and no busy-waiting: three nodes share a small machine with the test.
ERL_ARGS = (
    "-kernel inet_dist_use_interface {127,0,0,1} +S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"
)


def cluster_tools_missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    for name in ("rabbitmq-server", "rabbitmqctl", "rabbitmq-queues"):
        if not (SBIN / name).exists():
            return f"{SBIN / name} not found (RabbitMQ server package not installed)"
    return None


@dataclass
class Node:
    index: int
    name: str
    port: int
    dist_port: int
    home: Path
    proc: subprocess.Popen[bytes] | None = None
    killed: bool = False

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"


class RabbitCluster:
    def __init__(self, size: int = 3, base_port: int = 5701, *, dist_offset: int = 20000) -> None:
        if base_port <= 5672 < base_port + size:
            raise ValueError("the cluster must not use the default node's port 5672")
        self.dir = Path(tempfile.mkdtemp(prefix="rapidly-cluster-"))
        self._home = self.dir / "home"
        self._home.mkdir()
        cookie = self._home / ".erlang.cookie"
        cookie.write_text("".join(secrets.choice(string.ascii_uppercase) for _ in range(20)))
        cookie.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        self.nodes = [
            Node(
                index=i,
                name=f"rabbit-c{i}@localhost",
                port=base_port + i - 1,
                dist_port=base_port + i - 1 + dist_offset,
                home=self.dir / f"n{i}",
            )
            for i in range(1, size + 1)
        ]

    # --- the environment every command of ours runs with

    def _env(self, node: Node | None = None) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        env.update(
            HOME=str(self._home),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        if node is not None:
            env.update(
                RABBITMQ_NODENAME=node.name,
                RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                RABBITMQ_NODE_PORT=str(node.port),
                RABBITMQ_DIST_PORT=str(node.dist_port),
                RABBITMQ_MNESIA_BASE=str(node.home / "mnesia"),
                RABBITMQ_LOG_BASE=str(node.home / "log"),
                RABBITMQ_PID_FILE=str(node.home / "pid"),
                RABBITMQ_CONFIG_FILE=str(node.home / "rabbitmq.conf"),
                RABBITMQ_ADVANCED_CONFIG_FILE=str(node.home / "advanced.config"),
                RABBITMQ_PLUGINS_EXPAND_DIR=str(node.home / "plugins-expand"),
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=ERL_ARGS,
            )
        return env

    def ctl(
        self, node: Node, *args: str, tool: str = "rabbitmqctl", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SBIN / tool), "-n", node.name, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _ctl_ok(self, node: Node, *args: str, timeout: float = 60) -> str:
        out = self.ctl(node, *args, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {node.name} {' '.join(args)}: exit {out.returncode}: "
                f"{(out.stderr or out.stdout).strip()[-800:]}"
            )
        return out.stdout

    # --- life cycle

    def start(self, timeout: float = 120) -> RabbitCluster:
        for node in self.nodes:
            if _port_open(node.port) or _port_open(node.dist_port):
                raise RuntimeError(f"port {node.port} or {node.dist_port} is already in use")
        atexit.register(self.stop)  # a test run that dies still stops its nodes
        try:
            for node in self.nodes:
                self._start_node(node)
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                self._await_startup(node, deadline)
            first = self.nodes[0]
            for node in self.nodes[1:]:
                self._ctl_ok(node, "stop_app")
                self._ctl_ok(node, "join_cluster", first.name)
                self._ctl_ok(node, "start_app", timeout=timeout)
            status = json.loads(self._ctl_ok(first, "cluster_status", "--formatter", "json"))
            running = set(status.get("running_nodes", []))
            if running != {n.name for n in self.nodes}:
                raise RuntimeError(f"cluster did not form: running nodes {sorted(running)}")
        except BaseException:
            self.stop()
            raise
        return self

    def _await_startup(self, node: Node, deadline: float) -> None:
        """``await_startup`` fails at once while the node is not yet registered with epmd."""
        while True:
            out = self.ctl(node, "await_startup", "--timeout", "30", timeout=45)
            if out.returncode == 0:
                return
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited:\n{self.logs_tail(1500)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not start: {out.stderr.strip()[-500:]}")
            time.sleep(1.0)

    def _start_node(self, node: Node) -> None:
        node.home.mkdir(parents=True, exist_ok=True)
        (node.home / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{node.port}\nloopback_users = none\n"
        )
        log = (node.home / "server.out").open("ab")
        node.proc = subprocess.Popen(
            [str(SBIN / "rabbitmq-server")],
            env=self._env(node),
            cwd=node.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    @property
    def url(self) -> str:
        """Every node, separated by ``;``: kombu's failover list (round-robin)."""
        return ";".join(node.url for node in self.nodes)

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if not n.killed and n.proc is not None]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def leader(self, queue: str, vhost: str = "/", timeout: float = 60) -> str:
        """The node that leads quorum queue ``queue``, asked of the nodes still running (a queue
        just declared, or a node just killed, may need a few tries)."""
        deadline = time.monotonic() + timeout
        problem = ""
        while True:
            for node in self.alive():
                out = self.ctl(
                    node,
                    "list_queues",
                    "-p",
                    vhost,
                    "name",
                    "type",
                    "leader",
                    "--formatter",
                    "json",
                )
                if out.returncode != 0:
                    problem = f"{node.name}: {(out.stderr or out.stdout).strip()[-300:]}"
                    continue
                for row in json.loads(out.stdout or "[]"):
                    if row.get("name") == queue and row.get("leader"):
                        return str(row["leader"])
                problem = f"{node.name} lists no leader for {queue!r}"
            if time.monotonic() > deadline:
                raise LookupError(f"no leader of {queue!r} found: {problem}")
            time.sleep(1.0)

    def queue_type(self, queue: str, vhost: str = "/") -> str:
        for node in self.alive():
            out = self.ctl(node, "list_queues", "-p", vhost, "name", "type", "--formatter", "json")
            if out.returncode == 0:
                for row in json.loads(out.stdout or "[]"):
                    if row.get("name") == queue:
                        return str(row.get("type", ""))
        raise LookupError(f"no running node knows queue {queue!r}")

    def kill(self, node: Node) -> None:
        """SIGKILL the node's whole process group (start script, beam, its helpers)."""
        node.killed = True
        if node.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(10)

    def stop(self) -> None:
        """Stop every node, then kill whatever of ours is left, then remove the directory."""
        if not self.dir.exists():
            return
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            with contextlib.suppress(Exception):
                self.ctl(node, "stop", timeout=60)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(30)
        for node in self.nodes:
            if node.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(10)
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Processes whose command line names this cluster's directory (a beam's does: its
        mnesia and log directories are arguments)."""
        marker = str(self.dir).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def logs_tail(self, chars: int = 3000) -> str:
        parts = []
        for node in self.nodes:
            for path in [*sorted((node.home / "log").glob("*.log")), node.home / "server.out"]:
                with contextlib.suppress(OSError):
                    parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
