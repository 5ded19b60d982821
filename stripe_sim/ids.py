"""Stripe-style object ids and timestamps."""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """Return an unguessable id such as ``pi_3Nf...``."""
    return f"{prefix}_{''.join(secrets.choice(_ALPHABET) for _ in range(length))}"


def now() -> int:
    """Return the current unix time in whole seconds, as Stripe's ``created``."""
    return int(time.time())
