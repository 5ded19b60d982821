"""Canceling an order during its grace period: the authorization is voided at Stripe, exactly once."""

from __future__ import annotations

import logging

from app.db_clock import read_db_now
from app.db_tx import write_transaction
from app.extensions import db
from app.models import Order, OrderEditStatus, OrderStatus, Payment, PaymentStatus
from app.payments import transitions
from app.payments.errors import GracePeriodOver, NotCancelable, OrderBusy, ProviderUnavailable
from app.payments.provider_errors import PaymentProviderError, ProviderRefused
from app.payments.order_payments import payments_for_order
from app.payments.pending_edits import retire_pending, void_edit_intents
from app.payments.queries import require_order
from app.payments.reconcile import apply_captured, remove_capture_intent
from app.payments.stripe_gateway import get_gateway

log = logging.getLogger(__name__)


def _voided_at_stripe(payment_intent_id: str) -> bool | None:
    """Is the PaymentIntent canceled at Stripe? None when Stripe cannot say."""
    try:
        return get_gateway().retrieve_payment_intent(payment_intent_id).status == "canceled"
    except PaymentProviderError:
        return None


def cancel_order(order_id: str, *, actor: str = "customer", after_deadline: bool = False) -> Order:
    """Void every authorization of the order and cancel it; 409 `grace_period_expired` once the deadline passed.

    Staff may cancel an uncaptured order after the deadline (`after_deadline=True`).
    A second cancel returns the canceled order unchanged. A pending edit is canceled with the
    order and its PaymentIntent voided.
    """
    order = require_order(order_id)
    if order.status == OrderStatus.CANCELED:
        return order
    payments = payments_for_order(order_id)
    if not payments:
        raise NotCancelable("The order has no payment to void.")
    began = {p.id: p.status for p in payments if p.status in transitions.CANCELABLE}
    with write_transaction():
        # All of them or none: a cancel never leaves one payment voided and another still capturable.
        won = bool(began) and all(
            transitions.begin_cancel(payment_id, status, before_deadline=not after_deadline)
            for payment_id, status in began.items()
        )
        if not won:
            db.session.rollback()
        else:
            retired = retire_pending(order_id, OrderEditStatus.CANCELED, f"the order was canceled by {actor}")
    if not won:
        db.session.expire_all()
        payments = payments_for_order(order_id)
        statuses = {p.status for p in payments}
        if statuses <= {PaymentStatus.CANCELED}:
            return db.session.get(Order, order_id)
        deadline_passed = min(p.capture_due_at for p in payments) <= read_db_now(db.session)
        if statuses & {PaymentStatus.CAPTURING, PaymentStatus.CAPTURED} or (deadline_passed and not after_deadline):
            raise GracePeriodOver("The grace period is over; the order can no longer be canceled.")
        raise OrderBusy("The order is being changed; try again.")
    void_edit_intents(retired)

    failure: Exception | None = None
    for payment_id, from_status in began.items():
        try:
            _void(db.session.get(Payment, payment_id), from_status, actor)
        except (GracePeriodOver, NotCancelable, ProviderUnavailable) as exc:
            failure = failure or exc
    remove_capture_intent(order_id)
    if failure is not None:
        raise failure
    log.info("order canceled", extra={"order_id": order_id, "actor": actor})
    db.session.expire_all()
    return db.session.get(Order, order_id)


def _void(payment: Payment, began_from: str, actor: str) -> None:
    """Void one payment the cancel holds (`canceling`) at Stripe, and record what Stripe did."""
    # One key per cancel attempt (the moment `begin_cancel` won, on the row): a retry inside this
    # attempt is replayed, and a later attempt is not answered with an error Stripe stored for this one.
    db.session.expire_all()
    payment = db.session.get(Payment, payment.id)
    began_at = payment.updated_at
    try:
        get_gateway().cancel_payment_intent(
            payment.stripe_payment_intent_id,
            idempotency_key=f"cancel:{payment.id}:{int(began_at.timestamp() * 1000)}",
            reason="requested_by_customer",
        )
    except ProviderRefused as exc:
        intent = get_gateway().retrieve_payment_intent(payment.stripe_payment_intent_id)
        if intent.status == "succeeded":
            with write_transaction():
                transitions.abort_cancel(payment.id, began_from)
            apply_captured(payment.id, intent, created_by="stripe")
            raise GracePeriodOver("The payment was already captured.") from exc
        if intent.status != "canceled":
            with write_transaction():
                transitions.abort_cancel(payment.id, began_from)
            raise NotCancelable(f"Stripe refused to void the payment: {exc.message}") from exc
    except PaymentProviderError as exc:
        # No usable answer: the void may have happened. Say what actually happened, not a guess.
        voided = _voided_at_stripe(payment.stripe_payment_intent_id)
        if voided is None:
            # Stripe cannot say: the payment stays `canceling` (no capture can claim it) and the
            # sweep asks Stripe again after STUCK_OPERATION_SECONDS, then records or restores.
            raise ProviderUnavailable("Stripe did not answer; the cancel will be confirmed with Stripe shortly.") from exc
        if not voided:
            with write_transaction():
                transitions.abort_cancel(payment.id, began_from)
            raise ProviderUnavailable("Stripe is unavailable; the order was not canceled. Try again.") from exc

    with write_transaction():
        transitions.record_canceled(payment.id, f"canceled by {actor}")
