"""Is the capture machinery healthy? Each check is a number and a level: ok (green), warn (amber), bad (red).

The database figures come from one query; the rest from Redis (heartbeats, RQ, the sweep's
last report). If Redis cannot be reached the Redis checks turn red instead of failing the page.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from flask import current_app, url_for
from rq import Queue, Worker
from rq.registry import FailedJobRegistry
from sqlalchemy import func, select

from app.dashboard.queries import OVERDUE_AFTER
from app.extensions import db
from app.models import Payment, PaymentStatus, WebhookEvent
from app.payments.listener import HEARTBEAT_INTERVAL, HEARTBEAT_KEY
from app.payments.sweep import LAST_SWEEP_KEY
from app.queues import CAPTURE_QUEUE, QUEUE_NAMES

log = logging.getLogger(__name__)

OK, WARN, BAD = "ok", "warn", "bad"

# Every threshold in one place: (amber from, red from). A value below the first is green.
THRESHOLDS = {
    # The listener writes its heartbeat every HEARTBEAT_INTERVAL (5 s): three missed beats is
    # amber, a minute of silence red (captures then wait for the catch-up pass or the sweep).
    "listener_heartbeat_age_s": (3 * HEARTBEAT_INTERVAL, 60),
    # Captures are quick (one Stripe call); a backlog means too few or stuck workers.
    "queue_captures": (50, 500),
    "queue_default": (100, 1000),
    # Webhook events waiting for their job: a burst from Stripe drains in seconds; a backlog means too few workers.
    "queue_events": (500, 5000),
    # A failed capture job used up its retries: someone must look at each one.
    "failed_jobs": (1, 10),
    # Measured in sweep intervals (FALLBACK_SWEEP_INTERVAL_SECONDS): one missed run is amber, three red.
    "sweep_age_intervals": (2, 4),
    # Authorized and past the deadline by more than OVERDUE_AFTER: the expiry path missed them.
    "overdue_payments": (1, 10),
    # Stripe refused the capture: money is not being collected; staff must retry or cancel (red at once).
    "capture_failed": (1, 1),
    # Webhook events whose processing failed and has not succeeded since.
    "failed_webhooks": (1, 10),
    # Uncaptured authorizations the card will drop within EXPIRY_WARNING (Stripe's `capture_before`).
    "expiring_authorizations": (1, 10),
}
EXPIRY_WARNING = timedelta(hours=24)
# Fewer live workers than this is red (nothing would capture).
MIN_WORKERS = 1


def level_for(name: str, value: float | None) -> str:
    if value is None:
        return BAD
    amber, red = THRESHOLDS[name]
    if value >= red:
        return BAD
    if value >= amber:
        return WARN
    return OK


@dataclass(frozen=True)
class Check:
    key: str
    label: str
    value: str  # the number, as shown
    level: str
    detail: str = ""
    link: str = ""  # where staff act on it (the orders it is about)
    link_text: str = ""

    @property
    def level_text(self) -> str:
        return {OK: "OK", WARN: "Warning", BAD: "Problem"}[self.level]


def _age_text(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _database_counts(now: datetime) -> tuple[int, int, int, int]:
    """(overdue payments, capture-failed payments, failed webhook events, expiring authorizations) in one query."""
    overdue = (
        select(func.count())
        .select_from(Payment)
        .where(Payment.status == PaymentStatus.AUTHORIZED, Payment.capture_due_at < now - OVERDUE_AFTER)
        .scalar_subquery()
    )
    failed = (
        select(func.count())
        .select_from(Payment)
        .where(Payment.status == PaymentStatus.CAPTURE_FAILED)
        .scalar_subquery()
    )
    webhooks = (
        select(func.count())
        .select_from(WebhookEvent)
        .where(WebhookEvent.processed_at.is_(None), WebhookEvent.last_error.is_not(None))
        .scalar_subquery()
    )
    expiring = (
        select(func.count())
        .select_from(Payment)
        .where(Payment.status.in_((PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURE_FAILED)),
               Payment.capture_before < now + EXPIRY_WARNING)
        .scalar_subquery()
    )
    row = db.session.execute(select(overdue, failed, webhooks, expiring)).one()
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def _listener_check(client: redis.Redis, now_ts: float) -> Check:
    beats = client.hgetall(HEARTBEAT_KEY)
    ages = []
    for raw in beats.values():
        try:
            ages.append(max(0.0, now_ts - float(raw)))
        except (TypeError, ValueError):
            continue
    if not ages:
        return Check("listener", "Listener heartbeat", "none", BAD, "No listener has ever reported.")
    freshest = min(ages)
    live = sum(1 for age in ages if age < THRESHOLDS["listener_heartbeat_age_s"][1])
    return Check(
        "listener",
        "Listener heartbeat",
        _age_text(freshest) + " ago",
        level_for("listener_heartbeat_age_s", freshest),
        f"{live} of {len(ages)} listener(s) reported within the last minute.",
    )


def _worker_check(client: redis.Redis) -> Check:
    workers = Worker.all(connection=client)
    capture_workers = sum(1 for w in workers if CAPTURE_QUEUE in w.queue_names())
    level = OK if capture_workers >= MIN_WORKERS else BAD
    return Check(
        "workers",
        "Workers alive",
        str(len(workers)),
        level,
        f"{capture_workers} listening on the {CAPTURE_QUEUE} queue.",
    )


def _queue_checks(client: redis.Redis) -> list[Check]:
    checks = []
    failed_total = 0
    for name in QUEUE_NAMES:
        queue = Queue(name, connection=client)
        length = queue.count
        failed_total += FailedJobRegistry(queue=queue).count
        checks.append(
            Check(f"queue_{name}", f"Queue {name}", str(length), level_for(f"queue_{name}", length), "jobs waiting")
        )
    checks.append(
        Check(
            "failed_jobs",
            "Failed jobs",
            str(failed_total),
            level_for("failed_jobs", failed_total),
            "jobs that exhausted their retries (RQ failed-job registry)",
        )
    )
    return checks


def _sweep_check(client: redis.Redis, now_ts: float) -> Check:
    interval = current_app.config["ENGINE"].fallback_sweep_interval_seconds or 1
    raw = client.get(LAST_SWEEP_KEY)
    if not raw:
        return Check("sweep", "Last sweep", "never", WARN, "The fallback sweep has not run yet.")
    try:
        report = json.loads(raw)
        at = datetime.fromisoformat(report["at"])
    except (ValueError, KeyError, TypeError):
        return Check("sweep", "Last sweep", "unreadable", BAD, "The sweep's last report cannot be read.")
    age = max(0.0, now_ts - at.timestamp())
    level = level_for("sweep_age_intervals", age / interval)
    found = int(report.get("overdue_seen") or 0) + int(report.get("recovered") or 0)
    if found and level == OK:
        level = WARN  # the sweep had to step in: the expiry path missed something
    detail = (
        f"at {at.strftime('%Y-%m-%d %H:%M:%S')} UTC; found {report.get('overdue_seen', 0)} overdue, "
        f"enqueued {report.get('enqueued', 0)}, released {report.get('recovered', 0)} stuck, "
        f"re-armed {report.get('rearmed', 0)} keys"
    )
    return Check("sweep", "Last sweep", _age_text(age) + " ago", level, detail)


def operations_checks(now: datetime) -> list[Check]:
    """Every check, in the order the panel shows them."""
    overdue, capture_failed, failed_webhooks, expiring = _database_counts(now)
    checks: list[Check] = []
    client = current_app.extensions.get("redis")
    now_ts = time.time()
    try:
        if client is None:
            raise redis.ConnectionError("REDIS_URL is not configured")
        checks.append(_listener_check(client, now_ts))
        checks.append(_worker_check(client))
        checks.extend(_queue_checks(client))
        checks.append(_sweep_check(client, now_ts))
    except redis.RedisError as exc:
        log.warning("operations panel: Redis unavailable", extra={"error": str(exc)})
        checks.append(Check("redis", "Redis", "unreachable", BAD, "Heartbeats, queues and the sweep cannot be read."))
    checks.append(
        Check(
            "overdue",
            "Overdue for capture",
            str(overdue),
            level_for("overdue_payments", overdue),
            f"authorized, deadline passed more than {int(OVERDUE_AFTER.total_seconds() // 60)} min ago",
        )
    )
    checks.append(
        Check("capture_failed", "Capture failed", str(capture_failed), level_for("capture_failed", capture_failed),
              "payments Stripe refused to capture",
              link=url_for("dashboard.orders", capture_status="failed") if capture_failed else "",
              link_text="Show these orders")
    )
    checks.append(
        Check("failed_webhooks", "Failed webhook events", str(failed_webhooks),
              level_for("failed_webhooks", failed_webhooks), "not processed, last attempt failed")
    )
    checks.append(
        Check("expiring", "Authorizations expiring", str(expiring), level_for("expiring_authorizations", expiring),
              "uncaptured, the card drops them within 24 h (capture_before)")
    )
    return checks


def overall_level(checks: list[Check]) -> str:
    levels = {check.level for check in checks}
    return BAD if BAD in levels else WARN if WARN in levels else OK

