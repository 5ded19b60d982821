"""Stripe webhook signatures (``Stripe-Signature`` header)."""

from __future__ import annotations

import hashlib
import hmac
import time


def compute_signature(payload: bytes | str, secret: str, timestamp: int) -> str:
    """Return hex HMAC-SHA256 of ``f"{timestamp}.{payload}"`` keyed by the endpoint secret."""
    body = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    signed = f"{timestamp}.{body}".encode("utf-8")
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign_payload(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """Return the ``Stripe-Signature`` header value Stripe would send for ``payload``."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={ts},v1={compute_signature(payload, secret, ts)}"
