"""The log lines operators read: one JSON object per line, context merged, and the API token never
rendered, whether it reaches a structlog call, a stdlib logger (Celery, kombu, httpx) or an
exception's text."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from worker import logging as worker_logging

SECRET = "sim_oat_secret_token_for_log_tests_42"


@pytest.fixture
def lines() -> Iterator[Any]:
    """Logging configured onto a buffer; yields a reader of the JSON lines written so far. The
    root logger, structlog's configuration and the secrets list are restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_secrets = worker_logging._secrets[:]
    buffer = io.StringIO()
    worker_logging.configure_logging(level="INFO", fmt="json", stream=buffer)
    worker_logging.register_secret(SECRET)

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]

    read.raw = buffer.getvalue  # type: ignore[attr-defined]
    yield read
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    worker_logging._secrets[:] = saved_secrets


def test_a_structlog_line_is_one_json_object_with_level_time_and_context(lines: Any) -> None:
    structlog.contextvars.bind_contextvars(task_id="t-1", event_id="e-1")
    structlog.get_logger("worker.test").info("enrich.finished", api_calls=2, outcome="published")
    (line,) = lines()
    assert line["event"] == "enrich.finished"
    assert line["level"] == "info"
    assert line["api_calls"] == 2
    assert line["outcome"] == "published"
    assert line["task_id"] == "t-1" and line["event_id"] == "e-1"
    assert line["timestamp"].endswith("Z")


def test_the_token_is_redacted_in_the_message_fields_and_nested_values(lines: Any) -> None:
    log = structlog.get_logger("worker.test")
    message = f"saw Bearer {SECRET}"  # a message built by the caller, as a bug would build it
    log.warning(
        message,
        header=f"Authorization: Bearer {SECRET}",
        nested={"list": [SECRET, "fine"], "deeper": {"token": SECRET}},
        as_tuple=(SECRET,),
    )
    raw = lines.raw()
    assert SECRET not in raw
    (line,) = lines()
    assert line["event"] == "saw Bearer [REDACTED]"
    assert line["header"] == "Authorization: Bearer [REDACTED]"
    assert line["nested"] == {"list": ["[REDACTED]", "fine"], "deeper": {"token": "[REDACTED]"}}
    assert line["as_tuple"] == ["[REDACTED]"]


def test_stdlib_loggers_go_through_the_same_json_and_redaction(lines: Any) -> None:
    logging.getLogger("celery.worker.consumer").warning("connection with token %s lost", SECRET)
    raw = lines.raw()
    assert SECRET not in raw
    (line,) = lines()
    assert line["event"] == "connection with token [REDACTED] lost"
    assert line["level"] == "warning"
    assert line["logger"] == "celery.worker.consumer"


def test_an_exception_text_with_the_token_is_redacted(lines: Any) -> None:
    log = structlog.get_logger("worker.test")
    try:
        raise RuntimeError(f"request failed for token {SECRET}")
    except RuntimeError:
        log.exception("enrich.internal_error")
    try:
        raise ValueError(SECRET)
    except ValueError as exc:
        log.error("as.a.field", error=exc)
    raw = lines.raw()
    assert SECRET not in raw
    first, second = lines()
    assert "RuntimeError: request failed for token [REDACTED]" in first["exception"]
    assert second["error"] == "ValueError: [REDACTED]"


def test_levels_below_the_configured_one_and_noisy_libraries_are_dropped(lines: Any) -> None:
    structlog.get_logger("worker.test").debug("too.detailed")
    logging.getLogger("httpx").info("HTTP Request: GET https://api/ 200")
    logging.getLogger("celery.app.trace").info("Task succeeded")
    logging.getLogger("httpx").warning("kept: a warning of a noisy library")
    assert [line["event"] for line in lines()] == ["kept: a warning of a noisy library"]


def test_short_or_empty_values_are_not_registered_as_secrets() -> None:
    saved = worker_logging._secrets[:]
    try:
        worker_logging.register_secret("")
        worker_logging.register_secret("abc")  # would redact every "abc" in every line
        assert worker_logging._secrets == saved
    finally:
        worker_logging._secrets[:] = saved


def test_a_secret_is_redacted_in_the_escaped_forms_a_renderer_gives_it(lines: Any) -> None:
    odd = 'tok"with\\escapes\u00e9_1234'  # a quote, a backslash, a non-ASCII letter
    worker_logging.register_secret(odd)
    structlog.get_logger("worker.test").warning("odd", value=odd, listed=[odd])
    logging.getLogger("kombu").warning("odd %r", odd)
    raw = lines.raw()
    assert odd not in raw
    for form in (json.dumps(odd), repr(odd), json.dumps(repr(odd))):
        assert form[1:-1] not in raw
    first, second = lines()
    assert first["value"] == "[REDACTED]" and first["listed"] == ["[REDACTED]"]
    assert second["event"] == "odd '[REDACTED]'"


def test_a_logger_without_a_name_is_named_after_the_module_that_logs(lines: Any) -> None:
    structlog.get_logger().info("named")
    (line,) = lines()
    assert line["logger"] == __name__


def test_a_broken_stream_does_not_fail_the_caller() -> None:
    attempts: list[str] = []

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            attempts.append(text)
            raise BrokenPipeError("stderr is gone")

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        worker_logging.configure_logging(level="INFO", fmt="json", stream=Broken())
        log = structlog.get_logger("worker.test")
        log.info("enrich.finished", outcome="published")  # raises nothing
        log.info("enrich.finished", outcome="published")
        assert len(attempts) == 2 and '"enrich.finished"' in attempts[0]
    finally:
        structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
