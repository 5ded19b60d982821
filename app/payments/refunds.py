"""Refunds after capture: never more than captured minus refunded, exactly once per request.

Two phases around Stripe: reserve the amount and write the `pending` Refund row (one
transaction), then ask Stripe with the idempotency key `refund:{refund_id}`, then record
Stripe's answer. The refund's id, and so its key, comes from the request: staff's confirmation
form carries a one-time token (`request_token`), so the same confirmation posted twice finds
the same row and, at Stripe, the same refund. A refund left `pending` (the process died, Stripe
did not answer) is resumed by the sweep (`resolve_stuck_refunds`): looked up at Stripe by its
metadata, completed, retried with the same key, or its reservation released.

Stripe's own refund statuses are kept: `pending` and `requires_action` hold the reservation,
`succeeded` adds the ledger line, `failed` and `canceled` give the amount back.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.db_tx import write_transaction
from app.extensions import db
from app.ids import new_id
from app.log import current_trace_id
from app.models import Payment, PaymentStatus, Refund, RefundStatus
from app.payments import transitions
from app.payments.errors import (
    InvalidRefundAmount,
    NotCaptured,
    ProviderUnavailable,
    RefundExceedsCaptured,
    RefundRefused,
)
from app.payments.provider_errors import CardDeclined, PaymentProviderError, ProviderRefused
from app.payments.order_payments import payments_for_order, refund_parts
from app.payments.queries import require_order
from app.payments.stripe_gateway import Refund as StripeRefund
from app.payments.stripe_gateway import get_gateway

log = logging.getLogger(__name__)


# An order has at most a payment per accepted increase; a refund draws on at most this many.
MAX_PARTS = 20


class _SameRequest(Exception):
    """This confirmation's refund was written by its other, concurrent post."""


def refund_id_for(order_id: str, request_token: str | None, part: int = 0) -> str:
    """The refund's id: derived from the request's one-time token (the same on a resubmit), else new.
    A refund split over two payments has a part per payment, each with its own id (and so its key)."""
    if not request_token:
        return new_id("ref")
    material = f"{order_id}:{request_token}" + (f":{part}" if part else "")
    digest = hashlib.sha256(material.encode()).digest()[:16]
    return "ref_" + base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def refund_order(order_id: str, amount: int | None, *, actor: str, reason: str | None = None,
                 note: str | None = None, request_token: str | None = None) -> list[Refund]:
    """Refund `amount` (default: all that is left) of what the order's payments captured, newest
    payment first, each part at most what its payment has left; once per `request_token`.
    Returns the refund's parts (one per payment it draws on)."""
    require_order(order_id)
    first_id = refund_id_for(order_id, request_token)
    if request_token and db.session.get(Refund, first_id) is not None:
        return _finish_all(_parts_of(order_id, request_token))  # the same confirmation again
    payments = payments_for_order(order_id)
    captured = [p for p in payments if p.status == PaymentStatus.CAPTURED]
    if not captured:
        raise NotCaptured("Only a captured payment can be refunded.")
    if amount is None:
        amount = sum(p.refundable_amount for p in captured)
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidRefundAmount("The refund amount must be a positive integer in minor units.")
    parts = refund_parts(amount, payments)
    if sum(share for _, share in parts) < amount:
        raise RefundExceedsCaptured("The refund exceeds what was captured and not yet refunded.")
    ids = [first_id if i == 0 else refund_id_for(order_id, request_token, i) if request_token else new_id("ref")
           for i in range(len(parts))]

    try:
        with write_transaction() as session:
            for refund_id, (payment, share) in zip(ids, parts):
                if not transitions.reserve_refund(payment.id, share):
                    if request_token and session.get(Refund, first_id) is not None:
                        raise _SameRequest()  # the other post of this confirmation reserved it a moment ago
                    raise RefundExceedsCaptured("The refund exceeds what was captured and not yet refunded.")
                session.add(
                    Refund(
                        id=refund_id,
                        payment_id=payment.id,
                        amount=share,
                        status=RefundStatus.PENDING,
                        idempotency_key=f"refund:{refund_id}",
                        reason=reason,
                        note=note,
                        created_by=actor,
                        trace_id=current_trace_id(),
                    )
                )
    except (IntegrityError, _SameRequest):
        # A double click: the other request wrote this refund first (its reservation, not ours, stands).
        db.session.rollback()
        return _finish_all(_parts_of(order_id, request_token))
    return _finish_all([db.session.get(Refund, refund_id) for refund_id in ids])


def _parts_of(order_id: str, request_token: str) -> list[Refund]:
    parts = []
    for part in range(MAX_PARTS):
        refund = db.session.get(Refund, refund_id_for(order_id, request_token, part))
        if refund is None:
            break
        parts.append(refund)
    return parts


def _finish_all(refunds: list[Refund]) -> list[Refund]:
    """Each part asked of Stripe; a part Stripe refuses does not stop the others (its amount is given back)."""
    finished, error = [], None
    for refund in refunds:
        try:
            finished.append(_finish(refund))
        except (RefundRefused, ProviderUnavailable) as exc:
            error = error or exc
            db.session.expire_all()
            finished.append(db.session.get(Refund, refund.id))
    if error is not None and len(refunds) == 1:
        raise error
    return finished


def _finish(refund: Refund) -> Refund:
    """Ask Stripe (again, with the same key) for a refund still pending without Stripe's answer; record it."""
    if refund.status not in RefundStatus.OPEN or refund.stripe_refund_id is not None:
        return refund
    payment = db.session.get(Payment, refund.payment_id)
    try:
        stripe_refund = get_gateway().create_refund(
            payment_intent_id=payment.stripe_payment_intent_id,
            amount=refund.amount,
            idempotency_key=refund.idempotency_key or f"refund:{refund.id}",
            metadata={"refund_id": refund.id, "order_id": payment.order_id},
        )
    except (CardDeclined, ProviderRefused) as exc:
        _give_back(refund.id, RefundStatus.FAILED, exc.message)
        raise RefundRefused(f"Stripe refused the refund: {exc.message}") from exc
    except PaymentProviderError as exc:
        # The outcome is unknown: the reservation stays; the sweep (or `charge.refunded`) completes it.
        renew_key = False
        if exc.http_status and exc.http_status >= 500:
            # Stripe answered, so that attempt is over, and may have stored its error under the key
            # for 24 hours. If no refund of ours exists at Stripe, the next attempt needs a new key
            # (never after a timeout: that attempt may still be running and would refund twice).
            at_stripe = _find_at_stripe(refund, payment)
            if at_stripe is not None:
                apply_stripe_refund(refund.id, at_stripe)
                db.session.expire_all()
                return db.session.get(Refund, refund.id)
            renew_key = True
        with write_transaction() as session:
            row = session.get(Refund, refund.id)
            row.last_error = exc.message[:1000]
            if renew_key:
                row.idempotency_key = _next_key(row)
        raise ProviderUnavailable("Stripe did not answer; the refund is pending and will be reconciled.") from exc
    apply_stripe_refund(refund.id, stripe_refund)
    log.info("refund created", extra={"order_id": payment.order_id, "refund_id": refund.id, "amount": refund.amount,
                                      "status": stripe_refund.status, "actor": refund.created_by})
    db.session.expire_all()
    return db.session.get(Refund, refund.id)


def _find_at_stripe(refund: Refund, payment: Payment) -> StripeRefund | None:
    """Our refund as Stripe has it (by the `refund_id` in its metadata, or its id), or None."""
    return next(
        (r for r in get_gateway().list_refunds(payment.stripe_payment_intent_id)
         if r.metadata.get("refund_id") == refund.id or r.id == refund.stripe_refund_id),
        None,
    )


def _next_key(refund: Refund) -> str:
    """`refund:{id}` → `refund:{id}:1` → `refund:{id}:2`: one key per finished attempt."""
    base = f"refund:{refund.id}"
    current = refund.idempotency_key or base
    attempt = int(current.rsplit(":", 1)[1]) if current.count(":") >= 2 else 0
    return f"{base}:{attempt + 1}"


def apply_stripe_refund(refund_id: str, stripe_refund: StripeRefund) -> None:
    """Record Stripe's word on one of our refunds (its create answer, a webhook, the sweep's look-up)."""
    status = stripe_refund.status
    if status == RefundStatus.SUCCEEDED:
        with write_transaction():
            transitions.complete_refund(refund_id, stripe_refund.id)
    elif status in (RefundStatus.FAILED, RefundStatus.CANCELED):
        _give_back(refund_id, status, f"Stripe reports the refund {status}", stripe_refund.id)
    else:  # pending, requires_action: Stripe is still at it; the reservation holds
        with write_transaction() as session:
            row = session.get(Refund, refund_id)
            if row.status in RefundStatus.OPEN:
                row.stripe_refund_id = stripe_refund.id
                row.status = status if status in RefundStatus.OPEN else RefundStatus.PENDING


def _give_back(refund_id: str, status: str, why: str, stripe_refund_id: str | None = None) -> None:
    """A refund that will not happen (refused, failed later, canceled): its amount may be refunded again."""
    with write_transaction():
        if transitions.fail_refund(refund_id, status, why[:1000], stripe_refund_id):
            log.warning("refund did not happen; amount released", extra={"refund_id": refund_id, "status": status})


def resolve_stuck_refunds(now: datetime, stuck_after: timedelta) -> int:
    """The sweep's janitor: pending refunds older than `stuck_after` asked of Stripe and settled."""
    stuck = db.session.scalars(
        select(Refund).where(Refund.status.in_(RefundStatus.OPEN), Refund.created_at < now - stuck_after).limit(100)
    ).all()
    resolved = 0
    for refund in stuck:
        payment = db.session.get(Payment, refund.payment_id)
        try:
            at_stripe = _find_at_stripe(refund, payment)
            if at_stripe is not None:
                apply_stripe_refund(refund.id, at_stripe)
            else:
                _finish(refund)  # never reached Stripe: the same key asks again
            resolved += 1
        except (RefundRefused, ProviderUnavailable, PaymentProviderError) as exc:
            log.warning("stuck refund not resolved yet", extra={"refund_id": refund.id, "error": str(exc)})
    return resolved
