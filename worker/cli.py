"""``rapidly-worker``: run | web | health live|ready | check-config | backfill | replay.

Kept import-light on purpose: ``run`` must monkey-patch for gevent before anything imports
sockets, threads or SSL.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # no import at run time: see above
    from worker.settings import Settings


class _OneLineParser(argparse.ArgumentParser):
    """A wrong argument is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def _rfc3339(text: str) -> int:
    from worker.backfill import parse_time  # noqa: PLC0415

    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time with a timezone (e.g. 2025-03-03T08:00:00Z), got {text!r}"
        ) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rapidly-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    sub.add_parser("run", help="run a worker from the environment (the Procfile's worker: line)")
    health = sub.add_parser("health", help="exit 0 if live/ready (for Kubernetes probes)")
    health.add_argument("what", choices=["live", "ready"])
    health.add_argument("--dir", default=None, help="HEALTH_DIR (default: from the environment)")
    sub.add_parser("check-config", help="validate the environment and exit")
    sub.add_parser("web", help="run the webhook ingress (the Procfile's web: line)")
    backfill = sub.add_parser(
        "backfill", help="hand every event of a time window to the workers (docs/backfill.md)"
    )
    backfill.add_argument(
        "--since", required=True, type=_rfc3339, help="first timestamp (RFC 3339)"
    )
    backfill.add_argument("--until", type=_rfc3339, help="end, excluded (RFC 3339; default: now)")
    backfill.add_argument("--follow", action="store_true", help="then keep handing new events")
    backfill.add_argument(
        "--checkpoint", help="checkpoint file (default: ./rapidly-backfill-*.json)"
    )
    backfill.add_argument("--poll-interval", type=_positive_float, help="BACKFILL_POLL_SECONDS")
    backfill.add_argument("--margin", type=float, help="BACKFILL_MARGIN_SECONDS")
    backfill.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    replay = sub.add_parser(
        "replay", help="move dead letters back to rapidly.events (docs/replay.md)"
    )
    replay.add_argument("--reason", action="append", default=[], help="only this x-death-reason")
    replay.add_argument("--limit", type=_positive_int, help="move at most this many")
    replay.add_argument("--dry-run", action="store_true", help="print what would move, move none")
    args = parser.parse_args(argv)
    if args.command == "backfill":
        if args.until is not None and args.until <= args.since:
            backfill.error("--until must be later than --since")
        if args.margin is not None and args.margin < 0:
            backfill.error("--margin must not be negative")
        return _backfill(args)
    if args.command == "replay":
        return _replay(args)

    if args.command == "run":
        return _run()
    if args.command == "web":
        return _web()
    if args.command == "health":
        return _health(args.what, args.dir)
    return _check_config()


def _load(require_token: bool = True) -> Settings:
    from worker.errors import SettingsError  # noqa: PLC0415
    from worker.settings import load_settings  # noqa: PLC0415

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
    # The gevent pool with its greenlets reused (worker/_pool.py); chosen here, where gevent's
    # patching is in place, and by configuration: Celery's --pool takes only its own names.
    celery_app.conf.worker_pool = "worker._pool:TaskPool"
    celery_app.worker_main(
        [
            "worker",
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


def _web() -> int:
    """The webhook ingress: its own settings (no API token), no gevent (asyncio serves it)."""
    from worker.errors import SettingsError  # noqa: PLC0415
    from worker.ingress import load_ingress_settings, run  # noqa: PLC0415
    from worker.logging import configure_logging, register_secret  # noqa: PLC0415

    try:
        settings = load_ingress_settings()
    except SettingsError as exc:
        print(f"rapidly-worker: {exc}", file=sys.stderr)
        return 2
    for secret in settings.secrets:
        register_secret(secret)
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    run(settings)
    return 0


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


def _replay(args: Any) -> int:
    settings = _load(require_token=False)
    from worker.logging import configure_logging  # noqa: PLC0415

    configure_logging(level=settings.log_level, fmt=settings.log_format)
    from worker.replay import replay  # noqa: PLC0415

    result = replay(
        settings.broker_url,
        reasons=frozenset(args.reason),
        limit=args.limit,
        dry_run=args.dry_run,
        timeout=settings.publish_timeout_seconds,
        queue_type=settings.rabbitmq_queue_type,
    )
    for line in result.listed:
        print(line)
    print(result.summary())
    for reason, n in sorted(result.moved.items()):
        print(f"  {reason}: {n}")
    return 1 if result.failed else 0


def _backfill(args: Any) -> int:
    settings = _load_and_log()
    if not settings.redis_url:
        print(
            "rapidly-worker: invalid configuration: REDIS_URL: backfill needs the workers' shared "
            "cache (it hands events over through it)",
            file=sys.stderr,
        )
        return 2
    import signal  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from worker.backfill import (  # noqa: PLC0415
        Backfill,
        Checkpoint,
        Progress,
        api_calls_made,
        checkpoint_key,
        default_checkpoint_path,
    )
    from worker.errors import BackfillError, WorkerError  # noqa: PLC0415
    from worker.publishing import TaskPublisher, topology  # noqa: PLC0415
    from worker.rapidly import EventStore, RapidlyClient, RetryPolicy  # noqa: PLC0415
    from worker.rapidly._ratelimit import DispatchingLimiter  # noqa: PLC0415
    from worker.runtime import fleet_limiter, redis_client  # noqa: PLC0415

    key = checkpoint_key(settings.redis_namespace, settings.rapidly_api_url, args.since)
    path = Path(args.checkpoint) if args.checkpoint else default_checkpoint_path(key)
    redis = redis_client(settings.redis_url, 4)
    limiter = DispatchingLimiter(fleet_limiter(settings, redis))
    client = RapidlyClient(
        settings.rapidly_api_url,
        settings.rapidly_api_token,
        limiter=limiter,
        timeout=settings.api_timeout_seconds,
        max_connections=2,
    )
    store = EventStore(
        client,
        policy=RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            budget_seconds=settings.retry_budget_seconds,
            rate_limit_wait_seconds=3600.0,  # a backfill waits out any 429s
        ),
        limiter=limiter,
        max_events=0,  # nothing is read back here: the cache is for the workers
        redis=redis,
        redis_namespace=settings.redis_namespace,
        redis_ttl=settings.cache_ttl_seconds,
        root_window=0,
    )
    publisher = TaskPublisher(
        settings.broker_url,
        timeout=settings.publish_timeout_seconds,
        queues=topology(settings.rabbitmq_queue_type),
    )
    bar = None
    if not args.no_progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=0, unit="event", file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    try:
        checkpoint = Checkpoint.open(path, key, args.since)
        publisher.declare_topology()
        job = Backfill(
            store=store,
            publisher=publisher,
            checkpoint=checkpoint,
            broker_url=settings.broker_url,
            until=args.until,
            follow=args.follow,
            poll_seconds=args.poll_interval or settings.backfill_poll_seconds,
            margin_seconds=(
                settings.backfill_margin_seconds if args.margin is None else args.margin
            ),
            max_backlog=settings.backfill_max_backlog,
            progress=Progress(bar),
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: job.stop.set())
        print(f"rapidly-worker backfill: checkpoint {path}", file=sys.stderr)
        done = job.run()
    except (BackfillError, WorkerError) as exc:
        if bar is not None:
            bar.close()
        print(f"rapidly-worker backfill: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
        publisher.close()
        redis.close()
    Progress(bar).close()
    state = "done" if done else "interrupted (run again to resume)"
    print(
        f"rapidly-worker backfill: {state}: {job.handed_this_run} event(s) handed over in this "
        f"run, {checkpoint.count} in all; {api_calls_made()} API call(s)",
        file=sys.stderr,
    )
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
