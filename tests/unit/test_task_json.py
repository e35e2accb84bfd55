"""The task-message decoder answers exactly as kombu's, and only skips its hook when it may."""

from __future__ import annotations

import datetime
import json
import uuid
from decimal import Decimal

import pytest
from kombu import serialization
from kombu.utils import json as kombu_json

from worker import _json

# A typed value whose marker is spelled with an escape: only kombu's hook sees it.
ESCAPED = (
    kombu_json.dumps({"id": uuid.UUID(int=7)}).replace('"__type__"', '"\\u005f_type__"').encode()
)

BODIES = [
    b'[["4f1e0c1a-0000-4000-8000-000000000001"], {}, {"callbacks": null, "chain": null}]',
    b'{"event_id": "e1", "nested": {"a": [1, 2.5, true, null]}}',
    "caf\u00e9 is not ascii".join(['["', '"]']).encode("utf-8"),
    kombu_json.dumps({"at": datetime.datetime(2026, 12, 2, 5, 0, tzinfo=datetime.UTC)}).encode(),
    kombu_json.dumps([uuid.UUID(int=7), Decimal("1.25")]).encode(),
    ESCAPED,
    b'{"escaped": "\\u00e9"}',
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview, lambda b: b.decode("utf-8")])
def test_same_answer_as_kombu(body: bytes, wrap) -> None:
    assert _json.loads(wrap(body)) == kombu_json.loads(wrap(body))


def test_typed_values_still_come_back_typed() -> None:
    body = kombu_json.dumps({"id": uuid.UUID(int=7)}).encode()
    assert _json.loads(body) == {"id": uuid.UUID(int=7)}
    assert b"__type__" not in ESCAPED
    assert _json.loads(ESCAPED) == {"id": uuid.UUID(int=7)}


@pytest.mark.parametrize(
    ("body", "error"),
    [(b"[1, 2", json.JSONDecodeError), (b"\xff\xfe[]", UnicodeDecodeError)],
)
def test_same_errors_as_kombu(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        kombu_json.loads(body)
    with pytest.raises(error):
        _json.loads(body)


def test_installed_as_the_json_decoder() -> None:
    import worker.app  # noqa: F401 - installs it

    body = b'[["e1"], {}, {}]'
    assert serialization.registry._decoders["application/json"] is _json.loads
    assert serialization.loads(body, "application/json", "utf-8", accept={"application/json"}) == [
        ["e1"],
        {},
        {},
    ]
    content_type, encoding, data = serialization.dumps({"a": 1}, serializer="json")
    assert (content_type, encoding) == ("application/json", "utf-8")
    assert json.loads(data) == {"a": 1}
