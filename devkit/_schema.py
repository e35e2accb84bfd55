"""The record's JSON Schema (``schemas/rapidly.enriched_event.v1.json``, CONTRACT.md section 9)
as a validator with its formats checked, for the tests and the benchmark."""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from devkit._processes import ROOT

SCHEMA_PATH = ROOT / "schemas" / "rapidly.enriched_event.v1.json"
# jsonschema skips a format it has no checker for; these must really be checked.
CHECKED_FORMATS = ("uuid", "date-time")


def record_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return schema


@functools.cache
def _validator() -> Draft202012Validator:
    schema = record_schema()
    Draft202012Validator.check_schema(schema)
    checker = FormatChecker()
    missing = [f for f in CHECKED_FORMATS if f not in checker.checkers]
    if missing:
        raise RuntimeError(
            f"jsonschema cannot check format(s) {missing}: install the dev dependencies "
            "(rfc3339-validator checks date-time)"
        )
    return Draft202012Validator(schema, format_checker=checker)


def record_errors(body: Any) -> list[str]:
    """Every way ``body`` fails the schema, one line each (empty when it validates)."""
    if isinstance(body, bytes | str):
        body = json.loads(body)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(_validator().iter_errors(body), key=lambda e: list(e.absolute_path))
    ]


def validate_record(body: Any) -> None:
    """Raise AssertionError naming every problem if ``body`` (a dict, or its JSON) is not a valid
    ``rapidly.enriched_event.v1`` record."""
    errors = record_errors(body)
    if errors:
        raise AssertionError("record does not validate against the schema:\n" + "\n".join(errors))
