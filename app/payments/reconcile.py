"""Bringing our records in line with what Stripe says a PaymentIntent is now.

Webhook handlers and the capture job both call these: Stripe's current object is the truth,
never the order in which events arrived.
"""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import select

from app.db_tx import write_transaction
from app.extensions import db
from app.log import current_trace_id
from app.models import Payment, Refund, RefundStatus
from app.payments import transitions
from app.payments.capture_intents import service_for
from app.payments.payment_intents import session_status_for
from app.payments.queries import session_for_intent
from app.payments.refunds import apply_stripe_refund
from app.payments.stripe_gateway import PaymentIntent, get_gateway
from app.payments.stripe_gateway import Refund as StripeRefund

log = logging.getLogger(__name__)


def remove_capture_intent(order_id: str) -> None:
    """After the commit: the order needs no capture any more."""
    try:
        service_for(current_app).remove_intent(order_id)
    except Exception as exc:  # a stale key is harmless: the capture job re-checks the payment
        log.warning("could not remove capture intent", extra={"order_id": order_id, "error": str(exc)})


def sync_session(intent: PaymentIntent) -> None:
    """Record a cart's payment attempt as Stripe sees it (declines keep Stripe's reason)."""
    with write_transaction():
        row = session_for_intent(intent.id)
        if row is None:
            return
        row.status = session_status_for(intent)
        if intent.last_error_message:
            reason = intent.last_error_decline_code or intent.last_error_code
            row.last_error = f"{reason}: {intent.last_error_message}" if reason else intent.last_error_message


def apply_captured(payment_id: str, intent: PaymentIntent, created_by: str) -> bool:
    """Stripe says captured: record it once."""
    with write_transaction():
        return transitions.record_capture(
            payment_id,
            intent.amount_received,
            created_by=created_by,
            trace_id=current_trace_id(),
            charge_id=intent.latest_charge,
        )


def apply_canceled(payment: Payment, intent: PaymentIntent) -> bool:
    """Stripe says canceled (voided, or the authorization expired): payment and order canceled."""
    order_id = payment.order_id
    with write_transaction():
        changed = transitions.record_canceled(payment.id, intent.cancellation_reason or "canceled_at_stripe")
    if changed:
        log.info("payment canceled at Stripe", extra={"payment_id": payment.id, "reason": intent.cancellation_reason})
    remove_capture_intent(order_id)
    return changed


def record_stripe_refunds(payment_id: str, refunds: list[StripeRefund]) -> int:
    """Bring our refunds in line with Stripe's list: ours get Stripe's status; a succeeded refund we do
    not know (made in Stripe's dashboard) is added once by its id. Returns how many were added."""
    added = 0
    for refund in refunds:
        own_id = refund.metadata.get("refund_id")
        own = db.session.get(Refund, own_id) if own_id else None
        if own is None:
            own = db.session.scalar(select(Refund).where(Refund.stripe_refund_id == refund.id))
        if own is not None:
            if own.status != refund.status:
                apply_stripe_refund(own.id, refund)
            continue
        if refund.status != "succeeded":
            continue  # someone else's refund still pending at Stripe: recorded once it succeeds
        with write_transaction() as session:
            if session.scalar(select(Refund.id).where(Refund.stripe_refund_id == refund.id)):
                continue
            if not transitions.reserve_refund(payment_id, refund.amount):
                log.error("Stripe refund exceeds what we captured", extra={"payment_id": payment_id, "refund_id": refund.id})
                continue
            row = Refund(
                payment_id=payment_id,
                amount=refund.amount,
                status=RefundStatus.SUCCEEDED,
                stripe_refund_id=refund.id,
                reason=refund.reason,
                created_by="stripe",
                trace_id=current_trace_id(),
            )
            session.add(row)
            session.flush()
            transitions.add_refund_transaction(row)
            added += 1
    return added


def sync_refunds(payment: Payment) -> int:
    return record_stripe_refunds(payment.id, get_gateway().list_refunds(payment.stripe_payment_intent_id))
