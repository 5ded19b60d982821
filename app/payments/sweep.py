"""The fallback sweep (rq-scheduler every FALLBACK_SWEEP_INTERVAL_SECONDS, and `flask sweep`).

1. Enqueues the capture of every payment authorized longer ago than
   FALLBACK_CAPTURE_AFTER_SECONDS and still not captured (expiry event and catch-up both missed).
2. Releases payments stuck in `capturing` (a worker killed mid-capture) and enqueues them again.
3. Re-creates capture-intent keys Redis lost (restart, flush) for orders still in their grace period.

Every query walks an index in batches (keyset pagination), so the cost follows the backlog,
not the size of the orders table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import and_, func, or_, select

from app.db_clock import read_db_now
from app.db_tx import write_transaction
from app.extensions import db
from app.models import Payment, PaymentStatus
from app.payments import transitions
from app.payments.capture_intents import service_for
from app.queues import CAPTURE_JOB_TIMEOUT, enqueue_capture, enqueue_captures

log = logging.getLogger(__name__)

BATCH = 500
# A claim older than this belongs to a dead worker: RQ stops a capture job at its timeout, so a
# live worker never holds a claim longer (the margin covers clock skew between machines).
STUCK_CAPTURE_AFTER = timedelta(seconds=CAPTURE_JOB_TIMEOUT + 30)
LAST_SWEEP_KEY = "sweep:last"


@dataclass
class SweepResult:
    enqueued: int = 0
    recovered: int = 0
    rearmed: int = 0
    overdue_seen: int = 0
    # What each janitor of an intermediate state resolved (stuck cancels, pending refunds, events).
    resolved: dict = field(default_factory=dict)
    duration_ms: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def keyset_batches(column, *where):
    """Yield (timestamp, payment id, order id) rows in keyset-paginated batches ordered by `column`."""
    after: tuple | None = None
    while True:
        statement = select(column, Payment.id, Payment.order_id).where(*where)
        if after is not None:
            statement = statement.where(or_(column > after[0], and_(column == after[0], Payment.id > after[1])))
        rows = db.session.execute(statement.order_by(column, Payment.id).limit(BATCH)).all()
        db.session.rollback()
        if not rows:
            return
        yield rows
        if len(rows) < BATCH:
            return
        after = (rows[-1][0], rows[-1][1])


def stuck_capture_after() -> timedelta:
    """A claim is recovered after STUCK_OPERATION_SECONDS or its job's timeout (+ margin), whichever is
    shorter. Recovering a live claim is safe: the retry uses the same key, and the fencing token makes
    the first job's late release or failure a no-op."""
    stuck = timedelta(seconds=current_app.config["ENGINE"].stuck_operation_seconds)
    return min(STUCK_CAPTURE_AFTER, stuck)


def recover_stuck_captures(now: datetime) -> int:
    recovered = 0
    claimed_before = now - stuck_capture_after()
    for rows in keyset_batches(
        Payment.capture_claimed_at,
        Payment.status == PaymentStatus.CAPTURING,
        Payment.capture_claimed_at < claimed_before,
    ):
        for _, payment_id, order_id in rows:
            with write_transaction():
                released = transitions.release_stale_claim(
                    payment_id, claimed_before, error="recovered from a stale capture claim")
            if released:
                recovered += 1
                log.warning("released stale capture claim", extra={"payment_id": payment_id, "order_id": order_id})
                enqueue_capture(order_id, "recovery", replace_started=True)
    return recovered


def enqueue_overdue_captures(now: datetime, capture_after_seconds: int) -> tuple[int, int]:
    seen = enqueued = 0
    for rows in keyset_batches(
        Payment.authorized_at,
        Payment.status == PaymentStatus.AUTHORIZED,
        Payment.authorized_at < now - timedelta(seconds=capture_after_seconds),
        Payment.capture_due_at <= now,
    ):
        seen += len(rows)
        # One pipelined round trip per batch (new jobs); known job ids go through `enqueue_capture`.
        enqueued += enqueue_captures([order_id for _, _, order_id in rows], "sweep", replace_stale=True)
    return seen, enqueued


def rearm_lost_intents(now: datetime, *, check_every_key: bool = False, horizon: timedelta | None = None) -> int:
    """Re-create the keys Redis lost (restart, flush, a write that failed) with their remaining TTL.

    Two passes, each a SET NX per live grace period, 500 per pipelined round trip (an existing
    key is left as it is, so a SET NX is itself the check):
    - the grace periods ending within `horizon` (two sweep intervals): every one, every sweep, so
      a single lost key (deleted, its write failed) is re-armed before its deadline, whatever
      the counts say; the pass costs what falls due in that time, not what is live;
    - all live grace periods, only when Redis holds fewer deadline-index entries than the
      database has live grace periods (two counts, both cheap whatever the number of orders), or
      when the listener asks after every (re)connect (`check_every_key`).
    """
    intents = service_for(current_app)
    rearmed = 0
    if horizon is not None and not check_every_key:
        for rows in keyset_batches(
            Payment.capture_due_at,
            Payment.status == PaymentStatus.AUTHORIZED,
            Payment.capture_due_at > now,
            Payment.capture_due_at <= now + horizon,
        ):
            rearmed += intents.create_intents((order_id, due_at) for due_at, _, order_id in rows)
    if not check_every_key:
        # Orders, not payments: an order with a second payment (an increase) has one key.
        live = db.session.scalar(
            select(func.count(func.distinct(Payment.order_id)))
            .where(Payment.status == PaymentStatus.AUTHORIZED, Payment.capture_due_at > now)
        )
        db.session.rollback()
        if not live or intents.count_indexed() >= live:
            if rearmed:
                log.warning("re-armed lost capture intents", extra={"count": rearmed})
            return rearmed
    for rows in keyset_batches(
        Payment.capture_due_at,
        Payment.status == PaymentStatus.AUTHORIZED,
        Payment.capture_due_at > now,
    ):
        rearmed += intents.create_intents((order_id, due_at) for due_at, _, order_id in rows)
    if rearmed:
        log.warning("re-armed lost capture intents", extra={"count": rearmed})
    return rearmed


JanitorFn = Callable[[datetime, timedelta], int]


def register_janitor(app, name: str, janitor: JanitorFn) -> None:
    """Add a janitor the sweep runs: `janitor(now, stuck_after)` resolves what has been in flight
    longer than `stuck_after` (by asking Stripe) and returns how many it resolved."""
    app.extensions.setdefault("sweep_janitors", {})[name] = janitor


def janitors(app) -> list[tuple[str, JanitorFn]]:
    return list(app.extensions.get("sweep_janitors", {}).items())


def sweep(now: datetime | None = None) -> SweepResult:
    started = time.perf_counter()
    now = now or read_db_now(db.session)  # the database's clock decides what is due (one clock for all)
    settings = current_app.config["ENGINE"]
    result = SweepResult()
    result.recovered = recover_stuck_captures(now)
    result.overdue_seen, result.enqueued = enqueue_overdue_captures(now, settings.fallback_capture_after_seconds)
    horizon = timedelta(seconds=2 * settings.fallback_sweep_interval_seconds)
    result.rearmed = rearm_lost_intents(now, horizon=horizon)
    stuck_after = timedelta(seconds=settings.stuck_operation_seconds)
    for name, janitor in janitors(current_app):
        try:
            result.resolved[name] = janitor(now, stuck_after)
        except Exception:  # one janitor failing must not stop the others, nor the next sweep
            log.exception("janitor failed", extra={"janitor": name})
            result.resolved[name] = -1
    result.duration_ms = round((time.perf_counter() - started) * 1000, 2)
    current_app.extensions["redis"].set(LAST_SWEEP_KEY, json.dumps({"at": now.isoformat(), **result.as_dict()}))
    log.info("sweep finished", extra=result.as_dict())
    return result
