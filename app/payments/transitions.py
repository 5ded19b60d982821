"""Every state change of a payment, each one a compare-and-set on `payments.status`.

A transition is an `UPDATE payments SET status = :to ... WHERE id = :id AND status IN (:from)`;
it reports whether it won. Two processes racing for the same transition: exactly one
sees `True`. Callers run these inside `write_transaction()` so that the rows that go with a
transition (Capture, OrderTransaction, the order's status) commit with it or not at all.

Every check that guards a transition is in its WHERE clause: the deadline (by the database's
clock, `db_now()`), the status, and for a capture claim its owner (`capture_attempts`, the
fencing token the claim returned), so a worker that stalled past its claim's lease cannot undo
the claim of the job that replaced it.

    authorized ──claim──▶ capturing ──▶ captured ──refunds──▶ (refunded_amount grows)
        ▲  │                 │  │
        │  └──release◀───────┘  └──▶ capture_failed ──retry──▶ capturing
        │
        └─ begin_cancel ▶ canceling ──▶ canceled  (also: Stripe reports it canceled)
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from sqlalchemy import func, select, update

from app.db_clock import db_now
from app.extensions import db
from app.models import Capture, Order, OrderStatus, OrderTransaction, Payment, PaymentStatus, Refund, RefundStatus
from app.models.base import utcnow
from app.notices import outbox as notices

S = PaymentStatus


def lock_order(order_id: str) -> None:
    """The first statement of every transaction that writes more than one of an order's rows (its
    payments, the order, its edits): the order row is their lock, taken first, so two such
    transactions queue instead of deadlocking on PostgreSQL, and what the second reads after it
    (a payment the first added) is complete. `FOR NO KEY UPDATE`: rows inserted elsewhere that
    merely reference the order (ledger lines, notices) are not held up. SQLite's writers queue
    on BEGIN IMMEDIATE anyway (the clause is not rendered there)."""
    db.session.execute(select(Order.id).where(Order.id == order_id).with_for_update(key_share=True))


def lock_order_of(payment_id: str) -> str:
    """`lock_order` for the order of `payment_id`, in the same statement; returns the order's id."""
    return db.session.scalar(
        select(Order.id).join(Payment, Payment.order_id == Order.id).where(Payment.id == payment_id)
        .with_for_update(of=Order, key_share=True)
    )


def _compare_and_set(payment_id: str, expected: Iterable[str], new_status: str, **values) -> bool:
    statement = (
        update(Payment)
        .where(Payment.id == payment_id, Payment.status.in_(tuple(expected)))
        .values(status=new_status, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    won = db.session.execute(statement).rowcount == 1
    if won:
        db.session.expire_all()  # later reads in this transaction see the new row
    return won


def claim_for_capture(payment_id: str, *, allow_failed: bool = False) -> int | None:
    """authorized (or capture_failed, for a deliberate retry) → capturing, only once the grace period
    is over by the database's clock. Returns the claim's fencing token, or None if not claimed."""
    expected = (S.AUTHORIZED, S.CAPTURE_FAILED) if allow_failed else (S.AUTHORIZED,)
    statement = (
        update(Payment)
        .where(Payment.id == payment_id, Payment.status.in_(expected), Payment.capture_due_at <= db_now())
        .values(
            status=S.CAPTURING,
            capture_claimed_at=db_now(),
            capture_attempts=Payment.capture_attempts + 1,
            updated_at=utcnow(),
        )
        .returning(Payment.capture_attempts)
        .execution_options(synchronize_session=False)
    )
    token = db.session.execute(statement).scalar_one_or_none()
    if token is not None:
        db.session.expire_all()
    return token


def _owned_claim(payment_id: str, token: int, new_status: str, **values) -> bool:
    """capturing → `new_status`, only while the claim is still the one `token` names."""
    statement = (
        update(Payment)
        .where(Payment.id == payment_id, Payment.status == S.CAPTURING, Payment.capture_attempts == token)
        .values(status=new_status, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    won = db.session.execute(statement).rowcount == 1
    if won:
        db.session.expire_all()
    return won


def _next_key(new_key: bool) -> dict:
    return {"capture_key_generation": Payment.capture_key_generation + 1} if new_key else {}


def release_capture_claim(payment_id: str, token: int, error: str | None = None, *, new_key: bool = False) -> bool:
    """capturing → authorized: the attempt ended without an outcome; a retry will claim it again
    (under a new idempotency key with `new_key`: Stripe said the PaymentIntent is still uncaptured)."""
    return _owned_claim(payment_id, token, S.AUTHORIZED, capture_claimed_at=None, last_capture_error=error,
                        **_next_key(new_key))


def mark_capture_failed(payment_id: str, token: int, error: str, *, new_key: bool = False) -> bool:
    """capturing → capture_failed: Stripe refused; visible on the dashboard, retryable by staff."""
    return _owned_claim(payment_id, token, S.CAPTURE_FAILED, last_capture_error=error, **_next_key(new_key))


def release_stale_claim(payment_id: str, claimed_before: datetime, error: str) -> bool:
    """capturing → authorized for a claim older than `claimed_before` (its worker died); a newer claim stays."""
    statement = (
        update(Payment)
        .where(Payment.id == payment_id, Payment.status == S.CAPTURING, Payment.capture_claimed_at < claimed_before)
        .values(status=S.AUTHORIZED, capture_claimed_at=None, last_capture_error=error, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    won = db.session.execute(statement).rowcount == 1
    if won:
        db.session.expire_all()
    return won


def record_capture(payment_id: str, amount: int, *, created_by: str, trace_id: str | None, charge_id: str | None = None) -> bool:
    """→ captured, with its Capture and OrderTransaction rows; False if already captured. The order is
    completed once none of its payments is left open.

    Accepted from any open state: Stripe's word that the money was captured (the job's
    answer, a reconcile, or a `payment_intent.succeeded` for a capture made elsewhere) wins.
    """
    lock_order_of(payment_id)
    now = utcnow()
    values = {"captured_amount": amount, "captured_at": now, "last_capture_error": None}
    if charge_id:
        values["stripe_charge_id"] = charge_id
    if not _compare_and_set(payment_id, S.OPEN, S.CAPTURED, **values):
        return False
    payment = db.session.get(Payment, payment_id)
    order = db.session.get(Order, payment.order_id)
    others_open, captured = _other_payments(payment)
    if not others_open and captured + amount < order.total:
        # Never a silent success: the money Stripe took is recorded, the gap is flagged for staff.
        gap = order.total - captured - amount
        payment.capture_shortfall = gap
        payment.last_capture_error = (
            f"captured {captured + amount} of the order's total {order.total} {order.currency}: "
            f"{gap} not collected"
        )
    capture = Capture(payment_id=payment_id, amount=amount, created_by=created_by, trace_id=trace_id, created_at=now)
    db.session.add(capture)
    db.session.flush()
    db.session.add(
        OrderTransaction(
            order_id=payment.order_id,
            amount=amount,
            currency=payment.currency,
            reference="capture",
            reference_id=capture.id,
            created_at=now,
        )
    )
    if not others_open:
        _settle_order(payment.order_id, OrderStatus.COMPLETED, now)
    return True


def _other_payments(payment: Payment) -> tuple[bool, int]:
    """Are the order's other payments still open, and how much have they captured?"""
    rows = db.session.execute(
        select(Payment.status, Payment.captured_amount).where(Payment.order_id == payment.order_id,
                                                              Payment.id != payment.id)
    ).all()
    return any(status in S.OPEN for status, _ in rows), sum(amount for status, amount in rows if status == S.CAPTURED)


def _settle_order(order_id: str, status: str, now) -> None:
    """The order's last open payment settled: the order is completed (something was captured) or canceled."""
    values = {"status": status, "updated_at": now}
    if status == OrderStatus.CANCELED:
        values["canceled_at"] = now
    settled = db.session.execute(
        update(Order)
        .where(Order.id == order_id, Order.status == OrderStatus.PENDING)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount == 1
    if settled:  # the customer hears of it once: the cancel, or the receipt
        notices.order_settled(order_id, status)


def payments_still_editable(order_id: str) -> bool:
    """Inside the edit's transaction: every live payment of the order is still `authorized` and its
    deadline ahead by the database's clock. Each row is touched by the same UPDATE, so a capture
    claim or cancel that commits first makes this False, and one that comes later waits for us."""
    touched = db.session.execute(
        update(Payment)
        .where(Payment.order_id == order_id, Payment.status == S.AUTHORIZED, Payment.capture_due_at > db_now())
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    live = db.session.scalar(
        select(func.count()).select_from(Payment).where(Payment.order_id == order_id, Payment.status != S.CANCELED)
    )
    return touched > 0 and touched == live


CANCELABLE = (S.AUTHORIZED, S.CAPTURE_FAILED)


def begin_cancel(payment_id: str, from_status: str, *, before_deadline: bool = True) -> bool:
    """authorized or capture_failed (`from_status`, as read) → canceling: no capture can claim it now.

    With `before_deadline`, only while the grace period still runs by the database's clock.
    `abort_cancel` puts back `from_status`.
    """
    if from_status not in CANCELABLE:
        return False
    statement = (
        update(Payment)
        .where(Payment.id == payment_id, Payment.status == from_status)
        .values(status=S.CANCELING, status_before_cancel=from_status, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if before_deadline:
        statement = statement.where(Payment.capture_due_at > db_now())
    won = db.session.execute(statement).rowcount == 1
    if won:
        db.session.expire_all()
    return won


def end_grace_period_now(order_id: str) -> bool:
    """Staff's "capture now": the deadline becomes now (the database's) for every payment still authorized."""
    lock_order(order_id)
    won = db.session.execute(
        update(Payment)
        .where(Payment.order_id == order_id, Payment.status == S.AUTHORIZED)
        .values(capture_due_at=db_now(), updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount > 0
    if won:
        db.session.expire_all()
        due_at = db.session.scalar(select(func.min(Payment.capture_due_at)).where(
            Payment.order_id == order_id, Payment.status == S.AUTHORIZED))
        db.session.execute(
            update(Order)
            .where(Order.id == order_id)
            .values(grace_period_ends_at=due_at, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return won


def abort_cancel(payment_id: str, restore_to: str) -> bool:
    """canceling → the status the cancel began from: Stripe could not void it. A capture that had
    failed stays failed (staff stopped it); an authorized payment is capturable again."""
    return _compare_and_set(payment_id, (S.CANCELING,), restore_to)


def record_canceled(payment_id: str, reason: str | None) -> bool:
    """→ canceled (voided by us, or expired/canceled at Stripe). The order is canceled with it when it
    was the order's only live payment; completed when another one was captured."""
    lock_order_of(payment_id)
    now = utcnow()
    if not _compare_and_set(payment_id, S.OPEN, S.CANCELED, canceled_at=now, cancellation_reason=reason):
        return False
    payment = db.session.get(Payment, payment_id)
    others_open, captured = _other_payments(payment)
    if not others_open:
        _settle_order(payment.order_id, OrderStatus.COMPLETED if captured else OrderStatus.CANCELED, now)
    return True


def reserve_refund(payment_id: str, amount: int) -> bool:
    """refunded_amount += amount, only if that stays within what was captured."""
    statement = (
        update(Payment)
        .where(
            Payment.id == payment_id,
            Payment.status == S.CAPTURED,
            Payment.captured_amount - Payment.refunded_amount >= amount,
        )
        .values(refunded_amount=Payment.refunded_amount + amount, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    won = db.session.execute(statement).rowcount == 1
    if won:
        db.session.expire_all()
    return won


def complete_refund(refund_id: str, stripe_refund_id: str) -> bool:
    """pending → succeeded for our own refund, with its OrderTransaction; False if already completed."""
    won = db.session.execute(
        update(Refund)
        .where(Refund.id == refund_id, Refund.status.in_(RefundStatus.OPEN))
        .values(status=RefundStatus.SUCCEEDED, stripe_refund_id=stripe_refund_id, last_error=None)
        .execution_options(synchronize_session=False)
    ).rowcount == 1
    if not won:
        return False
    db.session.expire_all()
    add_refund_transaction(db.session.get(Refund, refund_id))
    return True


def add_refund_transaction(refund: Refund) -> None:
    """The order's ledger line for a succeeded refund: − its amount (and the customer's notice of it)."""
    payment = db.session.get(Payment, refund.payment_id)
    db.session.add(
        OrderTransaction(
            order_id=payment.order_id,
            amount=-refund.amount,
            currency=payment.currency,
            reference="refund",
            reference_id=refund.id,
        )
    )
    notices.refund_issued(refund)


def fail_refund(refund_id: str, status: str, error: str, stripe_refund_id: str | None = None) -> bool:
    """An open or succeeded refund → failed/canceled: its amount is released; a succeeded one's ledger
    line is reversed (Stripe can fail a refund after it succeeded). False if it was already final."""
    refund = db.session.get(Refund, refund_id)
    was = refund.status
    values = {"status": status, "last_error": error}
    if stripe_refund_id:
        values["stripe_refund_id"] = stripe_refund_id
    won = db.session.execute(
        update(Refund)
        .where(Refund.id == refund_id, Refund.status == was, Refund.status.in_((*RefundStatus.OPEN, RefundStatus.SUCCEEDED)))
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount == 1
    if not won:
        return False
    release_refund(refund.payment_id, refund.amount)
    if was == RefundStatus.SUCCEEDED:
        payment = db.session.get(Payment, refund.payment_id)
        db.session.add(OrderTransaction(order_id=payment.order_id, amount=refund.amount, currency=payment.currency,
                                        reference="refund_failed", reference_id=refund_id))
    return True


def release_refund(payment_id: str, amount: int) -> None:
    """Give back a reservation whose refund Stripe refused."""
    db.session.execute(
        update(Payment)
        .where(Payment.id == payment_id)
        .values(refunded_amount=Payment.refunded_amount - amount, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    db.session.expire_all()
