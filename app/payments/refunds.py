"""Refunds after capture: never more than captured minus refunded, one idempotency key per request."""

from __future__ import annotations

import logging

from app.db_tx import write_transaction
from app.extensions import db
from app.ids import new_id
from app.log import current_trace_id
from app.models import PaymentStatus, Refund, RefundStatus
from app.payments import transitions
from app.payments.errors import (
    InvalidRefundAmount,
    NotCaptured,
    ProviderUnavailable,
    RefundExceedsCaptured,
    RefundRefused,
)
from app.payments.provider_errors import CardDeclined, PaymentProviderError, ProviderRefused
from app.payments.queries import payment_for_order, require_order
from app.payments.stripe_gateway import get_gateway

log = logging.getLogger(__name__)


def refund_order(order_id: str, amount: int | None, *, actor: str, reason: str | None = None,
                 note: str | None = None) -> Refund:
    """Refund `amount` (default: all that is left) of the order's captured payment."""
    require_order(order_id)
    payment = payment_for_order(order_id)
    if payment is None or payment.status != PaymentStatus.CAPTURED:
        raise NotCaptured("Only a captured payment can be refunded.")
    if amount is None:
        amount = payment.refundable_amount
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidRefundAmount("The refund amount must be a positive integer in minor units.")

    refund_id = new_id("ref")
    with write_transaction() as session:
        if not transitions.reserve_refund(payment.id, amount):
            raise RefundExceedsCaptured("The refund exceeds what was captured and not yet refunded.")
        session.add(
            Refund(
                id=refund_id,
                payment_id=payment.id,
                amount=amount,
                status=RefundStatus.PENDING,
                idempotency_key=f"refund:{refund_id}",
                reason=reason,
                note=note,
                created_by=actor,
                trace_id=current_trace_id(),
            )
        )

    try:
        stripe_refund = get_gateway().create_refund(
            payment_intent_id=payment.stripe_payment_intent_id,
            amount=amount,
            idempotency_key=f"refund:{refund_id}",
            metadata={"refund_id": refund_id, "order_id": order_id},
        )
    except (CardDeclined, ProviderRefused) as exc:
        with write_transaction() as session:
            refund = session.get(Refund, refund_id)
            refund.status = RefundStatus.FAILED
            refund.last_error = exc.message[:1000]
            transitions.release_refund(payment.id, amount)
        raise RefundRefused(f"Stripe refused the refund: {exc.message}") from exc
    except PaymentProviderError as exc:
        # The outcome is unknown: the reservation stays; `charge.refunded` (metadata refund_id) completes it.
        with write_transaction() as session:
            session.get(Refund, refund_id).last_error = exc.message[:1000]
        raise ProviderUnavailable("Stripe did not answer; the refund is pending and will be reconciled.") from exc

    with write_transaction():
        transitions.complete_refund(refund_id, stripe_refund.id)
    log.info("refund created", extra={"order_id": order_id, "refund_id": refund_id, "amount": amount, "actor": actor})
    return db.session.get(Refund, refund_id)
