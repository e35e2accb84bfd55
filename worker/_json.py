"""Task messages decoded without kombu's per-object hook when they cannot need it.

kombu decodes every JSON body with ``json.loads(s, object_hook=...)``: the keyword argument makes
the standard library build a new decoder per call, and the hook (a Python function) runs for every
JSON object, only to turn ``{"__type__": ..., "__value__": ...}`` pairs back into dates, UUIDs or
decimals. A task message of ours holds event IDs and plain options; decoding it showed as a few %
of the worker's CPU in profiles. A body that does not contain ``__type__`` (and no ``\\u`` escape,
which could spell it) has no such pair, and plain ``json.loads`` returns exactly what kombu's
would; any other body still goes through kombu's decoder.
"""

from __future__ import annotations

import json
from typing import Any

from kombu import serialization
from kombu.utils import json as kombu_json

_kombu_loads = kombu_json.loads


def loads(data: Any) -> Any:
    """kombu's ``loads``, with the same input types and the same errors."""
    if isinstance(data, memoryview):
        text = data.tobytes().decode("utf-8")
    elif isinstance(data, bytes | bytearray):
        text = data.decode("utf-8")
    else:
        text = data
    if isinstance(text, str) and "__type__" not in text and "\\u" not in text:
        return json.loads(text)
    return _kombu_loads(text)


def install() -> None:
    """The ``json`` serializer's decoder becomes ``loads``; its encoder stays kombu's."""
    serialization.register(
        "json",
        kombu_json.dumps,
        loads,
        content_type="application/json",
        content_encoding="utf-8",
    )
