"""structlog, configured once per process; the stdlib (Celery, kombu, httpx) goes through it too.

JSON lines when stderr is not a terminal, a console renderer when it is. Context (``task_id``,
``event_id``) is bound with contextvars by the task signals and merged first. The worker's own
lines are rendered by structlog and written straight to the handler's stream; the stdlib's
(Celery, kombu, httpx) go through the same processors in a ``ProcessorFormatter``. Every rendered
line passes through ``scrub``: the API token, should it ever reach a log call, is replaced.
"""

from __future__ import annotations

import functools
import json
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


@functools.lru_cache(maxsize=64)
def _forms(secret: str) -> tuple[str, ...]:
    """The secret as it can appear in a rendered line: as is, escaped by JSON, escaped by repr
    (a ``%r`` in a stdlib message), and by repr then JSON."""
    as_repr = repr(secret)[1:-1]
    escaped = {json.dumps(secret)[1:-1], as_repr, json.dumps(as_repr)[1:-1]} - {secret}
    return (secret, *sorted(escaped, key=len, reverse=True))


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced, in each form a renderer may give it."""
    for secret in _secrets:
        for form in _forms(secret):
            if form in text:
                text = text.replace(form, "[REDACTED]")
    return text


def _scrub_rendered(_: Any, __: str, line: Any) -> str:
    """The last processor, after the renderer (``line`` is its text): the whole line is
    searched once, which covers every field, nested values and exception texts alike."""
    return scrub(line) if _secrets else str(line)


def exceptions_as_text(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """An exception passed as a field reads ``Type: message``."""
    for key, value in event_dict.items():
        if isinstance(value, BaseException):
            event_dict[key] = f"{type(value).__name__}: {value}"
    return event_dict


class _Lines:
    """structlog's logger for the worker's own lines: the rendered line is written straight to
    the stdlib handler's stream, under that handler's lock (the stdlib's records go there too),
    without the LogRecord, caller lookup and second formatting pass of the stdlib path. A line
    per event, so this path is measured in the worker's CPU per event."""

    __slots__ = ("_handler", "name")

    def __init__(self, handler: logging.StreamHandler[Any], name: str) -> None:
        self._handler = handler
        self.name = name  # structlog.stdlib.add_logger_name reads it

    def msg(self, message: str) -> None:
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(message + handler.terminator)
            handler.stream.flush()
        except (OSError, ValueError):
            # A closed or broken stderr (the supervisor gone, a full disk) must not fail the
            # event being logged, as the stdlib handler's handleError would not.
            pass
        finally:
            handler.release()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _LinesFactory:
    """Names a logger as ``structlog.stdlib.LoggerFactory`` does: the module that first logs
    through it (once per logger: loggers are cached on first use)."""

    def __init__(self, handler: logging.StreamHandler[Any]) -> None:
        self._handler = handler

    def __call__(self, *args: Any) -> _Lines:
        return _Lines(self._handler, str(args[0]) if args else _caller_module())


def _caller_module() -> str:
    frame = sys._getframe(1)
    while frame is not None:
        name = str(frame.f_globals.get("__name__", "?"))
        if not (name.startswith("structlog") or name == __name__):
            return name
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


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
    handler = logging.StreamHandler(stream)
    structlog.configure(
        processors=[*shared, exceptions_as_text, renderer, _scrub_rendered],
        logger_factory=_LinesFactory(handler),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            exceptions_as_text,
            renderer,
            _scrub_rendered,
        ],
    )
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
