"""Opaque, unguessable ids with a type prefix (`order_...`, `cart_...`)."""

import base64
import secrets


def new_id(prefix: str) -> str:
    """`{prefix}_` + 128 random bits in lowercase base32 (26 characters)."""
    token = base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()
    return f"{prefix}_{token}"
