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


class _NotBegun(Exception):
    """The cancel could not take every open payment (one is being captured, canceled, or past its deadline)."""


def cancel_order(order_id: str, *, actor: str = "customer", after_deadline: bool = False) -> Order:
    """Void every authorization of the order and cancel it; 409 `grace_period_expired` once the deadline passed.

    Staff may cancel an uncaptured order after the deadline (`after_deadline=True`).
    A second cancel returns the canceled order unchanged. A pending edit is canceled with the
    order and its PaymentIntent voided. Once one payment is voided the cancel is never undone:
    a payment Stripe did not void at once stays `canceling` and the sweep voids it.
    """
    order = require_order(order_id)
    if order.status == OrderStatus.CANCELED:
        return order
    try:
        with write_transaction():
            # Under the order's lock the payments read are all of them (an increase applied a moment
            # ago included), and none can be added until this commits.
            transitions.lock_order(order_id)
            payments = payments_for_order(order_id)
            if not payments:
                raise NotCancelable("The order has no payment to void.")
            statuses = {p.status for p in payments}
            if statuses <= {PaymentStatus.CANCELED}:
                return db.session.get(Order, order_id)
            if statuses & {PaymentStatus.CAPTURING, PaymentStatus.CAPTURED}:
                if after_deadline and PaymentStatus.CAPTURED in statuses:
                    raise NotCancelable("Part of the order's payment was captured: refund it instead of canceling.")
                raise GracePeriodOver("The grace period is over; the order can no longer be canceled.")
            began = {p.id: p.status for p in payments if p.status in transitions.CANCELABLE}
            if not began or not all(
                transitions.begin_cancel(payment_id, status, before_deadline=not after_deadline)
                for payment_id, status in began.items()
            ):
                raise _NotBegun()
            retired = retire_pending(order_id, OrderEditStatus.CANCELED, f"the order was canceled by {actor}")
    except _NotBegun:
        db.session.expire_all()
        payments = payments_for_order(order_id)
        deadline_passed = min(p.capture_due_at for p in payments) <= read_db_now(db.session)
        if deadline_passed and not after_deadline:
            raise GracePeriodOver("The grace period is over; the order can no longer be canceled.") from None
        raise OrderBusy("The order is being changed; try again.") from None
    void_edit_intents(retired)

    # Void each at Stripe. The first that Stripe refuses outright gives the whole cancel up (the rest
    # go back to what they were); once one is voided, or may be, the cancel stands and a payment
    # Stripe did not void stays `canceling` for the sweep, never restored.
    outcomes: list[tuple[str, Exception | None]] = []
    for payment_id, from_status in began.items():
        if outcomes and outcomes[0][0] == RESTORED:
            with write_transaction():
                transitions.abort_cancel(payment_id, from_status)
            continue
        committed = any(outcome != RESTORED for outcome, _ in outcomes)
        outcomes.append(_void(db.session.get(Payment, payment_id), from_status, actor, keep_canceling=committed))
    remove_capture_intent(order_id)
    failure = next((error for outcome, error in outcomes if error is not None), None)
    if outcomes[0][0] == RESTORED:
        raise failure
    if any(outcome == PENDING for outcome, _ in outcomes):
        raise ProviderUnavailable("Stripe did not confirm every void yet; the cancel will be completed shortly.") \
            from failure
    log.info("order canceled", extra={"order_id": order_id, "actor": actor})
    db.session.expire_all()
    return db.session.get(Order, order_id)


VOIDED, RESTORED, PENDING = "voided", "restored", "pending"


def _void(payment: Payment, began_from: str, actor: str, *, keep_canceling: bool = False) -> tuple[str, Exception | None]:
    """Void one payment the cancel holds (`canceling`) at Stripe, and record what Stripe did.

    Returns `voided`, `restored` (Stripe did not void it: the payment is back to `began_from`) or
    `pending` (Stripe could not say, or `keep_canceling`: the payment stays `canceling` and the sweep
    asks Stripe again), with the error to answer. Raises GracePeriodOver if it was captured."""
    # One key per cancel attempt (the moment `begin_cancel` won, on the row): a retry inside this
    # attempt is replayed, and a later attempt is not answered with an error Stripe stored for this one.
    db.session.expire_all()
    payment = db.session.get(Payment, payment.id)
    began_at = payment.updated_at

    def not_voided(error: Exception) -> tuple[str, Exception]:
        if keep_canceling:
            return PENDING, error
        with write_transaction():
            transitions.abort_cancel(payment.id, began_from)
        return RESTORED, error

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
            return not_voided(NotCancelable(f"Stripe refused to void the payment: {exc.message}"))
    except PaymentProviderError:
        # No usable answer: the void may have happened. Say what actually happened, not a guess.
        voided = _voided_at_stripe(payment.stripe_payment_intent_id)
        if voided is None:
            # Stripe cannot say: the payment stays `canceling` (no capture can claim it) and the
            # sweep asks Stripe again after STUCK_OPERATION_SECONDS, then records or restores.
            return PENDING, ProviderUnavailable("Stripe did not answer; the cancel will be confirmed with Stripe shortly.")
        if not voided:
            return not_voided(ProviderUnavailable("Stripe is unavailable; the order was not canceled. Try again."))

    with write_transaction():
        transitions.record_canceled(payment.id, f"canceled by {actor}")
    return VOIDED, None
