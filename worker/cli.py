"""``rapidly-worker``: run | health live|ready | check-config.

Kept import-light on purpose: ``run`` must monkey-patch for gevent before anything imports
sockets, threads or SSL.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no import at run time: see above
    from worker.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rapidly-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run a worker from the environment (the Procfile's worker: line)")
    health = sub.add_parser("health", help="exit 0 if live/ready (for Kubernetes probes)")
    health.add_argument("what", choices=["live", "ready"])
    health.add_argument("--dir", default=None, help="HEALTH_DIR (default: from the environment)")
    sub.add_parser("check-config", help="validate the environment and exit")
    args = parser.parse_args(argv)

    if args.command == "run":
        return _run()
    if args.command == "health":
        return _health(args.what, args.dir)
    return _check_config()


def _load(require_token: bool = True) -> Settings:
    from worker.settings import SettingsError, load_settings  # noqa: PLC0415

    try:
        return load_settings(require_token=require_token)
    except SettingsError as exc:
        print(f"rapidly-worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _load_and_log() -> Settings:
    """The settings, then logging configured from them, with the token registered as a secret."""
    settings = _load()
    from worker.logging import configure_logging, register_secret  # noqa: PLC0415

    register_secret(settings.rapidly_api_token.get_secret_value())
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    return settings


def _run() -> int:
    import os  # noqa: PLC0415

    from worker.cpus import choose_processes, explicit_processes  # noqa: PLC0415 - no sockets

    # Decided before gevent patches anything; both paths then check the value with the other
    # settings (a wrong one stops start-up with one line).
    explicit = explicit_processes(os.environ.get("WORKER_PROCESSES"))
    if explicit != 1 and (explicit is not None or choose_processes(None).count > 1):
        return _supervise()
    from worker._gevent import patch  # noqa: PLC0415

    patch()
    settings = _load_and_log()
    if not os.environ.get("WORKER_PROCESS_INDEX"):  # a supervisor's child: it logged the choice
        _log_processes(settings)
    from worker.app import configure  # noqa: PLC0415

    celery_app = configure(settings)
    celery_app.worker_main(
        [
            "worker",
            "--pool=gevent",
            f"--concurrency={settings.worker_concurrency}",
            f"--queues={_queue_name()}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--loglevel={settings.log_level}",
        ]
    )
    return 0


def _supervise() -> int:
    """Several worker processes under one supervisor (no gevent here: it only runs children)."""
    settings = _load_and_log()
    _log_processes(settings)
    from worker.supervisor import run  # noqa: PLC0415

    return run(settings)


def _log_processes(settings: Settings) -> None:
    import structlog  # noqa: PLC0415

    choice = settings.processes
    structlog.get_logger().info("worker.processes", chosen=choice.count, source=choice.source)


def _queue_name() -> str:
    from worker.publishing import EVENTS_QUEUE_NAME  # noqa: PLC0415

    return EVENTS_QUEUE_NAME


def _health(what: str, directory: str | None) -> int:
    from worker.health import check  # noqa: PLC0415

    if directory is None:
        directory = _load(require_token=False).health_dir
    ok, reason = check(directory, what)
    print(f"{what}: {'ok' if ok else 'FAIL'}: {reason}")
    return 0 if ok else 1


def _check_config() -> int:
    settings = _load()
    print(
        f"ok: API {settings.rapidly_api_url}, budget {settings.rapidly_rate_limit}, "
        f"redis {'on' if settings.redis_url else 'off'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
