"""Capture-intent tokens in Redis: `capture_intent:{order_id}` lives exactly as long as the grace period.

The key's expiry is the primary capture trigger (a keyspace notification picked up by the
listener). Redis only emits `expired` when it actually deletes a key, which lags behind the
TTL when many keys carry one; so each key is also indexed by its deadline in the sorted set
`capture_intents:due`, and the listener touches due keys, making Redis expire them at once.
The deadline also lives on the order in the database, the source of truth if Redis loses keys.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime

import redis

from app.models.base import utcnow

log = logging.getLogger(__name__)

KEY_PREFIX = "capture_intent:"
DUE_INDEX = "capture_intents:due"


def intent_key(order_id: str) -> str:
    return f"{KEY_PREFIX}{order_id}"


def order_id_from_key(key: str) -> str | None:
    return key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else None


class CaptureIntentService:
    """Creates, checks and removes capture-intent keys."""

    def __init__(self, client: redis.Redis, grace_period_seconds: int):
        self.redis = client
        self.grace_period_seconds = grace_period_seconds

    def create_intent(self, order_id: str, deadline: datetime | None = None) -> bool:
        """SET NX with the grace period as TTL (or what is left of it); False if the key already exists.

        NX: a repeated `order.placed` never extends a running grace period.
        """
        now = utcnow()
        if deadline is None:
            ttl_ms = self.grace_period_seconds * 1000
            deadline_ms = int(now.timestamp() * 1000) + ttl_ms
        else:
            deadline_ms = int(deadline.timestamp() * 1000)
            ttl_ms = deadline_ms - int(now.timestamp() * 1000)
            if ttl_ms <= 0:
                return False
        # The key names the order; the value is the deadline (an integer Redis stores without an allocation).
        value = deadline_ms
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(intent_key(order_id), value, nx=True, px=ttl_ms)
        pipe.zadd(DUE_INDEX, {order_id: deadline_ms}, nx=True)
        created, _ = pipe.execute()
        return bool(created)

    def validate_intent(self, order_id: str) -> bool:
        """True while the grace period runs (the key exists)."""
        return bool(self.redis.exists(intent_key(order_id)))

    def remaining_seconds(self, order_id: str) -> int | None:
        """Seconds left on the key, or None when it does not exist."""
        pttl = self.redis.pttl(intent_key(order_id))
        if pttl is None or pttl < 0:
            return None
        return math.ceil(pttl / 1000)

    def remove_intent(self, order_id: str) -> None:
        """The order no longer needs a capture (canceled, captured early)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(intent_key(order_id))
        pipe.zrem(DUE_INDEX, order_id)
        pipe.execute()

    def expire_due_keys(self, now_ms: int, batch: int = 1000) -> int:
        """Touch keys whose deadline passed so Redis expires them now (and emits `expired`)."""
        due = self.redis.zrangebyscore(DUE_INDEX, "-inf", now_ms, start=0, num=batch)
        if not due:
            return 0
        members = [m.decode() if isinstance(m, bytes) else m for m in due]
        pipe = self.redis.pipeline(transaction=False)
        for order_id in members:
            # Reading an expired key makes Redis delete it and publish the keyspace event.
            pipe.exists(intent_key(order_id))
        gone = [order_id for order_id, exists in zip(members, pipe.execute()) if not exists]
        if gone:
            # Keys still alive (a few ms of TTL left) stay indexed and are touched again next tick.
            self.redis.zrem(DUE_INDEX, *gone)
        return len(gone)


def service_for(app) -> CaptureIntentService:
    return CaptureIntentService(app.extensions["redis"], app.config["ENGINE"].grace_period_seconds)


def on_order_placed(app, order_id: str, trace_id: str | None = None, **_: object) -> None:
    """`order.placed` subscriber: start the grace period in Redis.

    A Redis failure must not fail the checkout: the order's deadline is in the database,
    and the sweep re-creates missing keys.
    """
    try:
        created = service_for(app).create_intent(order_id)
        log.info("capture intent created" if created else "capture intent already running", extra={"order_id": order_id})
    except redis.RedisError as exc:
        log.error("could not create capture intent; the sweep will re-arm it", extra={"order_id": order_id, "error": str(exc)})
