"""Stripe Event objects: construction from state changes."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from .ids import new_id, now

DEFAULT_API_VERSION = "2026-10-28.endive"


@dataclass(frozen=True)
class RequestContext:
    """Who caused a change: the API request id and idempotency key (both None for sim-originated changes)."""

    request_id: str | None = None
    idempotency_key: str | None = None
    api_version: str = DEFAULT_API_VERSION


SIM_CONTEXT = RequestContext()


def build_event(type_: str, obj: dict[str, Any], ctx: RequestContext, pending_webhooks: int) -> dict[str, Any]:
    """Return an Event whose ``data.object`` is a deep snapshot of ``obj`` now."""
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": ctx.api_version,
        "created": now(),
        "data": {"object": copy.deepcopy(obj)},
        "livemode": False,
        "pending_webhooks": pending_webhooks,
        "request": {"id": ctx.request_id, "idempotency_key": ctx.idempotency_key},
        "type": type_,
    }
