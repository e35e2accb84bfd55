"""structlog, configured once per process; the stdlib (Celery, kombu, httpx) goes through it too.

JSON lines when stderr is not a terminal, a console renderer when it is. Context (``task_id``,
``event_id``) is bound with contextvars by the task signals and merged first. Every line passes
through ``redact``: the API token, should it ever reach a log call, is replaced before rendering.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_secrets: list[str] = []


def register_secret(value: str) -> None:
    """Never let ``value`` be rendered in a log line (checked on every line, in every field)."""
    if value and len(value) >= 4 and value not in _secrets:
        _secrets.append(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, "[REDACTED]")
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _secrets:
        return event_dict
    for key, value in list(event_dict.items()):
        if isinstance(value, BaseException):
            value = f"{type(value).__name__}: {value}"
        event_dict[key] = _scrub(value)
    return event_dict


def _process_index() -> int | None:
    raw = os.environ.get("WORKER_PROCESS_INDEX", "")
    return int(raw) if raw.isdigit() else None


def configure_logging(*, level: str = "INFO", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not getattr(stream, "isatty", lambda: False)())
    index = _process_index()

    def add_process(
        _: Any, __: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("process", index)
        return event_dict

    shared: list[Any] = [
        *([add_process] if index is not None else []),
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if use_json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Per-request lines from the HTTP stack, and Celery's "received"/"succeeded" lines, would
    # drown the one summary line per event (``enrich.finished``); their warnings still show.
    for noisy in (
        "httpx",
        "httpcore",
        "amqp",
        "kombu",
        "urllib3",
        "celery.worker.strategy",
        "celery.app.trace",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
