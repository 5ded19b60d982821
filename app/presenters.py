"""The JSON shapes of the storefront API (Cart, LineItem, Order), as the contract fixes them."""

from __future__ import annotations

import math
from datetime import datetime

from app.models import Cart, Order, OrderStatus, Payment, PaymentStatus
from app.models.base import isoformat, utcnow
from app.payments.queries import payment_for_order

CAPTURE_STATUS = {
    PaymentStatus.AUTHORIZED: "scheduled",
    PaymentStatus.CAPTURING: "in_progress",
    PaymentStatus.CAPTURE_FAILED: "failed",
    PaymentStatus.CAPTURED: "succeeded",
    PaymentStatus.CANCELING: "scheduled",
    PaymentStatus.CANCELED: "canceled",
}


def capture_status(payment: Payment | None) -> str:
    """A capture that took less than the order's total is `failed` (its last_error names the gap)."""
    if payment is None:
        return "scheduled"
    if payment.status == PaymentStatus.CAPTURED and payment.capture_shortfall:
        return "failed"
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


def payment_status(order: Order, payment: Payment | None) -> str:
    """Medusa's payment status words, derived from the payment's columns."""
    if payment is None:
        return "not_paid"
    if payment.status == PaymentStatus.CANCELED:
        return "canceled"
    if payment.status == PaymentStatus.CAPTURED:
        if payment.refunded_amount and payment.refunded_amount >= payment.captured_amount:
            return "refunded"
        if payment.refunded_amount:
            return "partially_refunded"
        return "partially_captured" if payment.capture_shortfall else "captured"
    if payment.amount < order.total:
        return "partially_authorized"
    return "authorized"


def remaining_seconds(ends_at: datetime, now: datetime | None = None) -> int:
    return max(0, math.ceil((ends_at - (now or utcnow())).total_seconds()))


def order_json(order: Order, payment: Payment | None = None, now: datetime | None = None) -> dict:
    payment = payment if payment is not None else payment_for_order(order.id)
    remaining = remaining_seconds(order.grace_period_ends_at, now)
    if order.status == OrderStatus.CANCELED or (payment is not None and payment.status in _GRACE_OVER):
        remaining = 0  # canceled, or its capture has started: no grace period is running any more
    editable = (
        remaining > 0
        and order.status == OrderStatus.PENDING
        and payment is not None
        and payment.status == PaymentStatus.AUTHORIZED
    )
    return {
        "id": order.id,
        "display_id": order.display_id,
        "email": order.email,
        "currency": order.currency,
        "status": order.status,
        "items": [line_item_json(item) for item in order.items],
        "total": order.total,
        "payment_status": payment_status(order, payment),
        "authorized_amount": payment.amount if payment and payment.status != PaymentStatus.CANCELED else 0,
        "captured_amount": payment.captured_amount if payment else 0,
        "refunded_amount": payment.refunded_amount if payment else 0,
        "grace_period": {
            "ends_at": isoformat(order.grace_period_ends_at),
            "remaining_seconds": remaining,
            "editable": editable,
        },
        "capture": {
            "status": capture_status(payment),
            "captured_at": isoformat(payment.captured_at) if payment else None,
            "last_error": payment.last_capture_error if payment else None,
        },
        "created_at": isoformat(order.created_at),
    }
