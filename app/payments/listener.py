"""The keyspace-notification listener (`flask capture-listener`, Procfile `listener`).

Subscribes to `__keyevent@{db}__:expired`; every expired `capture_intent:{order_id}`
enqueues that order's capture. Pub/sub is fire-and-forget, so after every (re)connect
it runs a catch-up pass over the database for deadlines that passed meanwhile. Between
messages it touches due keys (see `capture_intents`) so Redis expires them on time even
with 100k keys holding a TTL, and it writes a heartbeat for the dashboard.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis
from flask import Flask

from app.db_clock import read_db_now
from app.extensions import db
from app.models import Payment, PaymentStatus
from app.payments.capture_intents import DueKeyToucher, order_id_from_key
from app.payments.sweep import keyset_batches, rearm_lost_intents
from app.queues import enqueue_captures

log = logging.getLogger(__name__)

HEARTBEAT_KEY = "capture_listener:heartbeats"  # hash: listener name → unix time
HEARTBEAT_INTERVAL = 5.0
TOUCH_INTERVAL = 0.2
MAX_BATCH = 1000  # expiry events enqueued per Redis round trip
MAX_BACKOFF = 30.0


def ensure_expired_events(client: redis.Redis) -> bool:
    """Make sure `notify-keyspace-events` includes `Ex`; False (and a clear log line) if Redis refuses."""
    try:
        current = client.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
    except redis.ResponseError as exc:
        log.error(
            "cannot read notify-keyspace-events (CONFIG disabled?); enable 'Ex' on the Redis server yourself",
            extra={"error": str(exc)},
        )
        return False
    if isinstance(current, bytes):
        current = current.decode()
    has_keyevent = "E" in current
    has_expired = "x" in current or "A" in current
    if has_keyevent and has_expired:
        return True
    wanted = current + ("E" if not has_keyevent else "") + ("x" if not has_expired else "")
    try:
        client.config_set("notify-keyspace-events", wanted)
    except redis.ResponseError as exc:
        log.error(
            "Redis refused CONFIG SET notify-keyspace-events; expiry events will not arrive and captures "
            "will rely on the catch-up pass and the fallback sweep. Set notify-keyspace-events=Ex on the server.",
            extra={"error": str(exc), "current": current},
        )
        return False
    log.info("enabled keyspace notifications", extra={"notify_keyspace_events": wanted})
    return True


class CaptureListener:
    def __init__(self, app: Flask, *, name: str | None = None):
        self.app = app
        self.redis: redis.Redis = app.extensions["redis"]
        self.db_index = self.redis.connection_pool.connection_kwargs.get("db", 0)
        self.channel = f"__keyevent@{self.db_index}__:expired"
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.toucher = DueKeyToucher(self.redis, lookback_seconds=app.config["ENGINE"].grace_period_seconds)
        self.stop_event = threading.Event()
        self.enqueued = 0

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        """Listen until stopped, reconnecting with backoff."""
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                self._listen_once()
                backoff = 0.5
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("listener lost Redis; reconnecting", extra={"error": str(exc), "retry_in": backoff})
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _listen_once(self) -> None:
        ensure_expired_events(self.redis)
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            log.info("listener subscribed", extra={"channel": self.channel, "listener": self.name})
            # Subscribed first, then catch up: nothing that expires in between is missed.
            self.catch_up()
            next_heartbeat = 0.0
            next_touch = 0.0
            while not self.stop_event.is_set():
                message = pubsub.get_message(timeout=TOUCH_INTERVAL)
                batch: list[str] = []
                while message is not None:
                    order_id = self._order_id(message)
                    if order_id:
                        batch.append(order_id)
                    if len(batch) >= MAX_BATCH:
                        break
                    message = pubsub.get_message(timeout=0)  # only what has already arrived
                if batch:
                    with self.app.app_context():
                        self.enqueued += enqueue_captures(batch, "expiry")
                now = time.monotonic()
                if now >= next_touch:
                    self.toucher.touch_due()
                    next_touch = now + TOUCH_INTERVAL
                if now >= next_heartbeat:
                    self.redis.hset(HEARTBEAT_KEY, self.name, f"{time.time():.3f}")
                    next_heartbeat = now + HEARTBEAT_INTERVAL
        finally:
            try:
                pubsub.close()
            except Exception:  # closing a broken connection may fail; nothing to do
                pass

    @staticmethod
    def _order_id(message: dict) -> str | None:
        key = message.get("data")
        if isinstance(key, bytes):
            key = key.decode()
        return order_id_from_key(key or "") if isinstance(key, str) else None

    def catch_up(self) -> int:
        """Enqueue every authorized payment whose deadline has passed (missed events)."""
        enqueued = 0
        with self.app.app_context():
            now = read_db_now(db.session)
            for rows in keyset_batches(
                Payment.capture_due_at,
                Payment.status == PaymentStatus.AUTHORIZED,
                Payment.capture_due_at <= now,
            ):
                enqueued += enqueue_captures([order_id for _, _, order_id in rows], "catch_up", replace_stale=True)
            # Keys lost while we were away (a Redis restart) come back now, not at the next sweep.
            rearmed = rearm_lost_intents(now, check_every_key=True)
        if enqueued or rearmed:
            log.info("catch-up done", extra={"enqueued": enqueued, "rearmed": rearmed})
        self.enqueued += enqueued
        return enqueued
