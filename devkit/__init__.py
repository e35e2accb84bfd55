"""Development tooling shared by the benchmark (``bench/``) and the test suites (``tests/``): the
contract's names as a producer and a consumer see them, the API simulator as a child process, the
worker from its Procfile line, a producer, a record collector, process-tree sampling, RabbitMQ
vhosts and queues, a throw-away three-node RabbitMQ cluster, and a machine-wide lock. Not part of
the worker and not shipped in its package: nothing here is imported by ``worker/`` or ``tasks/``.
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
from devkit._producer import Sender, producer, send
from devkit._rabbit_cluster import RabbitCluster, cluster_tools_missing
from devkit._records import RecordCollector, drain, drain_all, records_queue
from devkit._redis import RedisServer
from devkit._sampling import TreeSampler, tree_rss
from devkit._schema import SCHEMA_PATH, record_errors, record_schema, validate_record
from devkit._worker import (
    READY_MARKER,
    WorkerGroup,
    WorkerNotReady,
    WorkerProcess,
    stop_together,
)

__all__ = [
    "CUSTOMER_CREATED",
    "DEAD",
    "DEAD_QUEUE",
    "ENRICHED",
    "EVENTS",
    "EVENTS_QUEUE",
    "READY_MARKER",
    "ROOT",
    "SCHEMA_PATH",
    "TOKEN",
    "VENV_BIN",
    "RabbitCluster",
    "RecordCollector",
    "RedisServer",
    "Sender",
    "SimulatorProcess",
    "TreeSampler",
    "VhostProblem",
    "WorkerGroup",
    "WorkerNotReady",
    "WorkerProcess",
    "cluster_tools_missing",
    "drain",
    "drain_all",
    "ensure_vhost",
    "free_port",
    "machine_lock",
    "procfile_command",
    "producer",
    "rabbitmqctl",
    "reachable",
    "record_errors",
    "record_schema",
    "records_queue",
    "reset_queues",
    "send",
    "stop_together",
    "tree_rss",
    "validate_record",
]
