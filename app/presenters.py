"""The JSON shapes of the storefront API (Cart, LineItem, Order), as the contract fixes them."""

from __future__ import annotations

import math
from datetime import datetime

from app.extensions import db
from app.models import (
    Cart,
    Order,
    OrderEdit,
    OrderEditStatus,
    OrderItem,
    OrderStatus,
    Payment,
    PaymentSession,
    PaymentSessionStatus,
    PaymentStatus,
)
from app.models.base import isoformat, utcnow
from app.payments.order_payments import OrderPayments
from app.payments.pending_edits import pending_edit_for

CAPTURE_STATUS = {
    PaymentStatus.AUTHORIZED: "scheduled",
    PaymentStatus.CAPTURING: "in_progress",
    PaymentStatus.CAPTURE_FAILED: "failed",
    PaymentStatus.CAPTURED: "succeeded",
    PaymentStatus.CANCELING: "scheduled",
    PaymentStatus.CANCELED: "canceled",
}


def capture_status(payment: OrderPayments | Payment | None) -> str:
    """A capture that took less than the order's total is `failed` (its last_error names the gap);
    one payment captured while another is still to be captured is `in_progress`."""
    if payment is None:
        return "scheduled"
    if payment.status == PaymentStatus.CAPTURED and payment.capture_shortfall:
        return "failed"
    if payment.status == PaymentStatus.AUTHORIZED and payment.captured_amount:
        return "in_progress"
    return CAPTURE_STATUS.get(payment.status, "scheduled")


def line_item_json(item) -> dict:
    return {
        "id": item.id,
        "product_id": item.product_id,
        "title": item.title,
        "quantity": item.quantity,
        "unit_amount": item.unit_amount,
        "total": item.total,
    }


def cart_json(cart: Cart) -> dict:
    return {
        "id": cart.id,
        "email": cart.email,
        "currency": cart.currency,
        "items": [line_item_json(item) for item in cart.items],
        "total": cart.total,
        "payment_intent_id": cart.payment_intent_id,
    }


_GRACE_OVER = (PaymentStatus.CAPTURING, PaymentStatus.CAPTURED, PaymentStatus.CAPTURE_FAILED, PaymentStatus.CANCELED)


def payment_status(order: Order, payment: OrderPayments | Payment | None) -> str:
    """Medusa's payment status words, derived from the payments' columns (all of the order's together)."""
    if payment is None:
        return "not_paid"
    if payment.status == PaymentStatus.CANCELED:
        return "canceled"
    if payment.captured_amount:
        if payment.refunded_amount and payment.refunded_amount >= payment.captured_amount:
            return "refunded"
        if payment.refunded_amount:
            return "partially_refunded"
        if payment.capture_shortfall or payment.status in PaymentStatus.OPEN:
            return "partially_captured"  # short of the total, or another payment still to capture
        return "captured"
    if payment.status == PaymentStatus.CAPTURED:
        return "captured"
    if payment.amount < order.total:
        return "partially_authorized"
    return "authorized"


def remaining_seconds(ends_at: datetime, now: datetime | None = None) -> int:
    return max(0, math.ceil((ends_at - (now or utcnow())).total_seconds()))


def payment_json(payment: Payment) -> dict:
    return {
        "id": payment.id,
        "payment_intent_id": payment.stripe_payment_intent_id,
        "amount": payment.amount,
        "captured_amount": payment.captured_amount,
        "refunded_amount": payment.refunded_amount,
        "status": payment.status,
    }


_SESSION_TO_INTENT_STATUS = {
    PaymentSessionStatus.PENDING: "requires_payment_method",
    PaymentSessionStatus.ERROR: "requires_payment_method",
    PaymentSessionStatus.REQUIRES_MORE: "requires_action",
    PaymentSessionStatus.AUTHORIZED: "requires_capture",
    PaymentSessionStatus.CAPTURED: "succeeded",
    PaymentSessionStatus.CANCELED: "canceled",
}


def _session_status(edit: OrderEdit) -> str | None:
    session = db.session.get(PaymentSession, edit.payment_session_id)
    return session.status if session is not None else None


def pending_edit_json(edit: OrderEdit) -> dict:
    return {
        "id": edit.id,
        "status": edit.status,
        # The edit's items are snapshots, not order lines yet: they have no id.
        "items": [line_item_json(OrderItem(id=None, **item)) for item in edit.items],
        "total": edit.total,
        "amount_due": edit.amount_due,
        "payment_intent": {
            "id": edit.stripe_payment_intent_id,
            "client_secret": edit.client_secret,
            "amount": edit.amount_due,
            "currency": edit.currency,
            # As Stripe last told us (its payment session follows the PaymentIntent's events).
            "status": _SESSION_TO_INTENT_STATUS.get(_session_status(edit), "requires_payment_method"),
        },
        "expires_at": isoformat(edit.expires_at),
    }


def order_json(order: Order, payment: OrderPayments | None = None, now: datetime | None = None,
               pending_edit: OrderEdit | None = None, *, pending_edit_known: bool = False) -> dict:
    """`payment` and `pending_edit` are read when not given; `pending_edit_known`: None means none."""
    payments = payment if payment is not None else OrderPayments.of(order)
    if pending_edit is None and not pending_edit_known and order.status == OrderStatus.PENDING:
        pending_edit = pending_edit_for(order.id)
    remaining = remaining_seconds(order.grace_period_ends_at, now)
    if order.status == OrderStatus.CANCELED or (payments is not None and payments.status in _GRACE_OVER):
        remaining = 0  # canceled, or its capture has started: no grace period is running any more
    editable = (
        remaining > 0
        and order.status == OrderStatus.PENDING
        and payments is not None
        and payments.status == PaymentStatus.AUTHORIZED
    )
    return {
        "id": order.id,
        "display_id": order.display_id,
        "email": order.email,
        "currency": order.currency,
        "status": order.status,
        "items": [line_item_json(item) for item in order.items],
        "total": order.total,
        "payment_status": payment_status(order, payments),
        "authorized_amount": sum(p.amount for p in payments.payments if p.status != PaymentStatus.CANCELED)
        if payments else 0,
        "captured_amount": payments.captured_amount if payments else 0,
        "refunded_amount": payments.refunded_amount if payments else 0,
        "grace_period": {
            "ends_at": isoformat(order.grace_period_ends_at),
            "remaining_seconds": remaining,
            "editable": editable,
        },
        "capture": {
            "status": capture_status(payments),
            "captured_at": isoformat(payments.captured_at) if payments else None,
            "last_error": payments.last_capture_error if payments else None,
        },
        "payments": [payment_json(p) for p in payments.payments] if payments else [],
        "pending_edit": pending_edit_json(pending_edit) if pending_edit is not None and
        pending_edit.status == OrderEditStatus.REQUIRES_PAYMENT else None,
        "created_at": isoformat(order.created_at),
    }
