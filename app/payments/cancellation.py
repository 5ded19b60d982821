"""Canceling an order during its grace period: the authorization is voided at Stripe, exactly once."""

from __future__ import annotations

import logging

from app.db_clock import read_db_now
from app.db_tx import write_transaction
from app.extensions import db
from app.models import Order, OrderStatus, Payment, PaymentStatus
from app.payments import transitions
from app.payments.errors import GracePeriodOver, NotCancelable, OrderBusy, ProviderUnavailable
from app.payments.provider_errors import PaymentProviderError, ProviderRefused
from app.payments.queries import payment_for_order, require_order
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
    """Void the order's authorization and cancel it; 409 `grace_period_expired` once the deadline passed.

    Staff may cancel an uncaptured order after the deadline (`after_deadline=True`).
    A second cancel returns the canceled order unchanged.
    """
    order = require_order(order_id)
    payment = payment_for_order(order_id)
    if order.status == OrderStatus.CANCELED:
        return order
    if payment is None:
        raise NotCancelable("The order has no payment to void.")

    began_from = payment.status
    with write_transaction():
        began = transitions.begin_cancel(payment.id, began_from, before_deadline=not after_deadline)
    if not began:
        db.session.expire_all()
        payment = payment_for_order(order_id)
        if payment.status == PaymentStatus.CANCELED:
            return db.session.get(Order, order_id)
        deadline_passed = payment.capture_due_at <= read_db_now(db.session)
        if payment.status in (PaymentStatus.CAPTURING, PaymentStatus.CAPTURED) or (deadline_passed and not after_deadline):
            raise GracePeriodOver("The grace period is over; the order can no longer be canceled.")
        raise OrderBusy("The order is being changed; try again.")

    # One key per cancel attempt (the moment `begin_cancel` won, on the row): a retry inside this
    # attempt is replayed, and a later attempt is not answered with an error Stripe stored for this one.
    db.session.expire_all()
    began_at = db.session.get(Payment, payment.id).updated_at
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
    remove_capture_intent(order_id)
    log.info("order canceled", extra={"order_id": order_id, "actor": actor})
    db.session.expire_all()
    return db.session.get(Order, order_id)
