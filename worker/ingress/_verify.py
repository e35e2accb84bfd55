"""Standard Webhooks verification and the webhook body, as plain functions (no HTTP, no broker).

    raw body + headers --verify--> authentic (or Unauthorized: 401)
    authentic body     --parse---> Webhook (or NotAWebhook: 400)

The signature is checked on the raw bytes before anything is parsed. The HMAC key is the UTF-8
bytes of the whole secret string, ``rapidly_whs_`` prefix included (RAPIDLY_API.md, Webhooks):
``standardwebhooks.Webhook`` base64-decodes a *string* secret, so it is given bytes.
"""

from __future__ import annotations

import binascii
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from standardwebhooks import Webhook as _Signer
from standardwebhooks import WebhookVerificationError

from worker.errors import NotAWebhook, Unauthorized

# The types whose data is a Customer: each becomes the record of the matching system event.
CUSTOMER_TYPES = frozenset({"customer.created", "customer.updated", "customer.deleted"})
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
# Standard Webhooks ids are short ("msg_..."); a longer one is not from a real sender and would
# otherwise become an unbounded dedupe key.
MAX_WEBHOOK_ID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Webhook:
    webhook_id: str
    type: str
    customer_id: str | None  # set for CUSTOMER_TYPES only

    @property
    def is_customer_event(self) -> bool:
        return self.type in CUSTOMER_TYPES


class WebhookVerifier:
    """Accepts a signature made with any of ``secrets`` (several during a rotation)."""

    def __init__(self, secrets: list[str]) -> None:
        if not secrets or not all(secrets):
            raise ValueError("at least one non-empty secret is required")
        self._signers = [_Signer(secret.encode("utf-8")) for secret in secrets]

    def __repr__(self) -> str:  # never the secrets
        return f"WebhookVerifier({len(self._signers)} secrets)"

    def verify(self, body: bytes, headers: Mapping[str, str]) -> str:
        """The webhook id once the body is authentic; Unauthorized otherwise."""
        wanted = {name: headers.get(name, "") for name in HEADERS}
        if not all(wanted.values()):
            raise Unauthorized("missing webhook-id, webhook-timestamp or webhook-signature")
        webhook_id = wanted["webhook-id"]
        if len(webhook_id) > MAX_WEBHOOK_ID_LENGTH:
            raise Unauthorized("webhook-id too long")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            # The library signs text; a body that is not UTF-8 cannot have been signed by Rapidly.
            raise Unauthorized("body is not UTF-8") from None
        last = "no matching signature"
        for signer in self._signers:
            try:
                signer.verify(text, wanted, json_parse=False)
            except WebhookVerificationError as exc:
                last = str(exc)
                if "timestamp" in last.lower() or "headers" in last.lower():
                    break  # the same answer for every secret
                continue
            except (ValueError, binascii.Error):
                # A malformed signature header ("v1" with no comma, base64 that is not).
                last = "malformed webhook-signature"
                break
            return webhook_id
        raise Unauthorized(last)


def parse(webhook_id: str, body: bytes) -> Webhook:
    """The authentic body as a Webhook; NotAWebhook when it is not one."""
    try:
        payload: Any = json.loads(body)
    except ValueError:
        raise NotAWebhook("body is not JSON") from None
    if not isinstance(payload, dict):
        raise NotAWebhook("body is not a JSON object")
    kind = payload.get("type")
    data = payload.get("data")
    if not isinstance(kind, str) or not kind or len(kind) > 200:
        raise NotAWebhook("no 'type'")
    if not isinstance(data, dict):
        raise NotAWebhook("no 'data' object")
    if kind not in CUSTOMER_TYPES:
        return Webhook(webhook_id, kind, None)
    return Webhook(webhook_id, kind, customer_id(data.get("id")))


def customer_id(value: object) -> str:
    """The canonical form of a customer's UUID; NotAWebhook when it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        raise NotAWebhook("data.id is not a UUID")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotAWebhook("data.id is not a UUID") from None
