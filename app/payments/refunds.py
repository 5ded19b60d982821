"""Refunds after capture: never more than captured minus refunded, one idempotency key per request."""

from __future__ import annotations

import logging

from app.db_tx import write_transaction
from app.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from app.extensions import db
from app.ids import new_id
from app.log import current_trace_id
from app.models import Order, PaymentStatus, Refund, RefundStatus
from app.payments import transitions
from app.payments.capture import payment_for_order
from app.payments.errors import CardDeclined, InvalidRequest as ProviderInvalidRequest, PaymentProviderError
from app.payments.stripe_gateway import get_gateway

log = logging.getLogger(__name__)


def refund_order(order_id: str, amount: int | None, *, actor: str, reason: str | None = None,
                 note: str | None = None) -> Refund:
    """Refund `amount` (default: all that is left) of the order's captured payment."""
    order = db.session.get(Order, order_id)
    if order is None:
        raise NotFound(f"No order with id {order_id!r}.")
    payment = payment_for_order(order_id)
    if payment is None or payment.status != PaymentStatus.CAPTURED:
        raise Conflict("Only a captured payment can be refunded.", code="not_captured")
    if amount is None:
        amount = payment.refundable_amount
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidRequest("The refund amount must be a positive integer in minor units.")

    refund_id = new_id("ref")
    with write_transaction() as session:
        if not transitions.reserve_refund(payment.id, amount):
            raise Conflict("The refund exceeds what was captured and not yet refunded.", code="refund_exceeds_captured")
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
    except (CardDeclined, ProviderInvalidRequest) as exc:
        with write_transaction() as session:
            refund = session.get(Refund, refund_id)
            refund.status = RefundStatus.FAILED
            refund.last_error = exc.message[:1000]
            transitions.release_refund(payment.id, amount)
        raise Conflict(f"Stripe refused the refund: {exc.message}", code="refund_refused") from exc
    except PaymentProviderError as exc:
        # The outcome is unknown: the reservation stays; `charge.refunded` (metadata refund_id) completes it.
        with write_transaction() as session:
            session.get(Refund, refund_id).last_error = exc.message[:1000]
        raise ServiceUnavailable("Stripe did not answer; the refund is pending and will be reconciled.",
                                 code="payment_provider_unavailable") from exc

    with write_transaction():
        transitions.complete_refund(refund_id, stripe_refund.id)
    log.info("refund created", extra={"order_id": order_id, "refund_id": refund_id, "amount": amount, "actor": actor})
    return db.session.get(Refund, refund_id)
