"""The sweep's janitors for payment operations left in flight (a process died, Stripe did not answer).

Each asks Stripe what actually happened and finishes or releases the operation, idempotently;
each is bounded per sweep. Stuck capture claims have their own recovery in `sweep.py`; pending
refunds in `refunds.resolve_stuck_refunds`; unprocessed webhook events in `app.webhooks.janitor`.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select

from app.db_tx import write_transaction
from app.extensions import db
from app.models import Payment, PaymentStatus
from app.payments import transitions
from app.payments.provider_errors import PaymentProviderError
from app.payments.reconcile import apply_captured, remove_capture_intent
from app.payments.stripe_gateway import get_gateway

log = logging.getLogger(__name__)

BATCH = 100


def _a_sibling_was_voided_by_the_cancel(payment: Payment) -> bool:
    """Another payment of the order was voided by a customer's or staff's cancel (not by the engine)."""
    reasons = db.session.scalars(select(Payment.cancellation_reason).where(
        Payment.order_id == payment.order_id, Payment.id != payment.id, Payment.status == PaymentStatus.CANCELED))
    return any(r and r.startswith("canceled by ") and not r.startswith("canceled by the engine") for r in reasons)


def _void_again(payment: Payment) -> bool:
    try:
        get_gateway().cancel_payment_intent(payment.stripe_payment_intent_id, reason="requested_by_customer",
                                            idempotency_key=f"cancel:{payment.id}:sweep:{secrets.token_hex(6)}")
    except PaymentProviderError as exc:
        log.warning("stuck cancel: void not made yet", extra={"payment_id": payment.id, "error": exc.message})
        return False
    with write_transaction():
        changed = transitions.record_canceled(payment.id, "canceled by a cancel resumed by the sweep")
    remove_capture_intent(payment.order_id)
    return changed


def resolve_stuck_cancels(now: datetime, stuck_after: timedelta) -> int:
    """Payments left `canceling` (the process died mid-void): Stripe's PaymentIntent decides.

    Voided → recorded canceled (the cancel the customer asked for stands); captured → recorded
    captured; still authorized → the cancel is given up and the payment restored to the status it
    began from, so the capture or a new cancel can go on.
    """
    stuck = db.session.scalars(
        select(Payment).where(Payment.status == PaymentStatus.CANCELING, Payment.updated_at < now - stuck_after)
        .limit(BATCH)
    ).all()
    resolved = 0
    for payment in stuck:
        try:
            intent = get_gateway().retrieve_payment_intent(payment.stripe_payment_intent_id)
        except PaymentProviderError as exc:
            log.warning("stuck cancel not resolved yet", extra={"payment_id": payment.id, "error": exc.message})
            continue
        if intent.status == "canceled":
            with write_transaction():
                changed = transitions.record_canceled(payment.id, "canceled by a cancel resumed by the sweep")
            remove_capture_intent(payment.order_id)
        elif intent.status == "succeeded":
            changed = apply_captured(payment.id, intent, created_by="stripe")
        elif _a_sibling_was_voided_by_the_cancel(payment):
            # The order's cancel voided another of its payments: it stands; void this one too.
            changed = _void_again(payment)
        else:
            with write_transaction():
                changed = transitions.abort_cancel(payment.id, payment.status_before_cancel or PaymentStatus.AUTHORIZED)
        if changed:
            resolved += 1
            log.warning("stuck cancel resolved", extra={"payment_id": payment.id, "order_id": payment.order_id,
                                                        "stripe_status": intent.status})
    return resolved


