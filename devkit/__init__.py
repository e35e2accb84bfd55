"""Development tooling shared by the benchmark (``bench/``) and the test suites (``tests/``): the
contract's names as a producer and a consumer see them, the API simulator as a child process, the
Procfile line, RabbitMQ vhosts and queues, a throw-away three-node RabbitMQ cluster, and a
machine-wide lock. Not part of the worker and not shipped in its package: nothing here is
imported by ``worker/`` or ``tasks/``.
"""

from devkit._broker import (
    CUSTOMER_CREATED,
    DEAD,
    DEAD_QUEUE,
    ENRICHED,
    EVENTS,
    EVENTS_QUEUE,
    VhostProblem,
    ensure_vhost,
    rabbitmqctl,
    reachable,
    reset_queues,
)
from devkit._lock import machine_lock
from devkit._processes import (
    ROOT,
    TOKEN,
    VENV_BIN,
    SimulatorProcess,
    free_port,
    procfile_command,
)
from devkit._rabbit_cluster import RabbitCluster, cluster_tools_missing
from devkit._redis import RedisServer
from devkit._schema import SCHEMA_PATH, record_errors, record_schema, validate_record

__all__ = [
    "CUSTOMER_CREATED",
    "DEAD",
    "DEAD_QUEUE",
    "ENRICHED",
    "EVENTS",
    "EVENTS_QUEUE",
    "ROOT",
    "SCHEMA_PATH",
    "TOKEN",
    "VENV_BIN",
    "RabbitCluster",
    "RedisServer",
    "SimulatorProcess",
    "VhostProblem",
    "cluster_tools_missing",
    "ensure_vhost",
    "free_port",
    "machine_lock",
    "procfile_command",
    "rabbitmqctl",
    "reachable",
    "record_errors",
    "record_schema",
    "reset_queues",
    "validate_record",
]
