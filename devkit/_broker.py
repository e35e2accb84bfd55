"""RabbitMQ and Redis as a producer, a consumer and an operator see them: the contract's queue
names, reachability, vhosts (created with ``rabbitmqctl`` if missing) and emptying queues."""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterable
from urllib.parse import urlparse

from kombu import Connection, Exchange, Queue

# CONTRACT.md's names: declared here exactly as the worker declares them, so that a test or the
# benchmark declaring first does not clash with the worker's declaration.
EVENTS = "rapidly.events"
DEAD = "rapidly.events.dead"
ENRICHED = Exchange("rapidly.enriched", type="topic", durable=True)
EVENTS_QUEUE = Queue(EVENTS, Exchange(EVENTS, "direct", durable=True), EVENTS, durable=True)
DEAD_QUEUE = Queue(DEAD, Exchange(DEAD, "direct", durable=True), DEAD, durable=True)
CUSTOMER_CREATED = Queue(
    "rapidly.customer_created", ENRICHED, routing_key="system.customer.created", durable=True
)

AMQP_SCHEMES = {"amqp", "amqps", "pyamqp"}


def reachable(url: str) -> bool:
    """Something listens at the URL's host and port (amqp 5672, else 6379 by default)."""
    parsed = urlparse(url)
    port = parsed.port or (5672 if parsed.scheme.startswith("amqp") else 6379)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def reset_queues(broker_url: str, queues: Iterable[Queue]) -> None:
    """Declare (as the worker and a plain producer do) and purge each of ``queues``."""
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        for queue in queues:
            bound = queue.bind(channel)
            bound.declare()
            bound.purge()


def rabbitmqctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class VhostProblem(RuntimeError):
    """The broker URL's vhost is missing and could not be created; the message is one line that
    says what to run by hand."""


def ensure_vhost(broker_url: str) -> str | None:
    """Create the vhost of an amqp:// ``broker_url`` on this machine if it is missing, and give
    its user (guest if the URL names none) all permissions on it, with ``rabbitmqctl``. Returns
    what was done (None: not an amqp:// URL on this machine, nothing checked). If rabbitmqctl is
    missing or fails, the vhost is still fine if a connection to it succeeds (e.g. RabbitMQ in a
    container, vhost created before); otherwise raises VhostProblem."""
    conn = Connection(broker_url)
    if conn.transport_cls not in AMQP_SCHEMES or not _is_this_machine(conn.hostname):
        return None
    vhost = conn.virtual_host or "/"
    user = conn.userid or "guest"
    perms = ("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    by_hand = " && ".join(
        shlex.join(["rabbitmqctl", *cmd]) for cmd in (("add_vhost", vhost), perms)
    )
    problem: str
    if shutil.which("rabbitmqctl") is None:
        problem = "rabbitmqctl is not installed"
    else:
        try:
            listed = rabbitmqctl("list_vhosts", "name")
            if listed.returncode != 0:
                problem = f"rabbitmqctl list_vhosts failed: {_first_line(listed.stderr)}"
            else:
                created = vhost not in {line.strip() for line in listed.stdout.splitlines()}
                added = rabbitmqctl("add_vhost", vhost) if created else None
                if (
                    added is not None
                    and added.returncode != 0
                    and ("already exists" not in added.stderr)
                ):
                    problem = f"rabbitmqctl add_vhost failed: {_first_line(added.stderr)}"
                else:
                    granted = rabbitmqctl(*perms)
                    if granted.returncode == 0:
                        return f"created vhost {vhost!r}" if created else f"vhost {vhost!r} exists"
                    problem = f"rabbitmqctl set_permissions failed: {_first_line(granted.stderr)}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = f"rabbitmqctl failed: {exc}"
    if _vhost_usable(broker_url):
        return f"vhost {vhost!r} reachable ({problem}; not needed)"
    raise VhostProblem(
        f"RabbitMQ vhost {vhost!r} is missing or unusable and could not be created ({problem}); "
        f"create it by hand: {by_hand}"
    )


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "no output")[:200]


def _vhost_usable(broker_url: str) -> bool:
    try:
        with Connection(broker_url, connect_timeout=5) as conn:
            conn.connect()
            return True
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


def _is_this_machine(host: str | None) -> bool:
    if not host:
        return True  # amqp://  (kombu's default host is localhost)
    names = {"localhost", "localhost.localdomain", "ip6-localhost", socket.gethostname()}
    if host.lower() in names:
        return True
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addresses = {
                ipaddress.ip_address(str(info[4][0]).split("%")[0])
                for info in socket.getaddrinfo(host, None)
            }
        except (OSError, ValueError):
            return False
    import psutil  # noqa: PLC0415 - a dev dependency

    local = {
        ipaddress.ip_address(a.address.split("%")[0])
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family in (socket.AF_INET, socket.AF_INET6)
    }
    return all(a.is_loopback or a in local for a in addresses)
