"""The read-only look-ups the use cases and presenters share: carts, orders, payments by their keys.

Nothing here writes or calls Stripe. `require_*` raise the domain's `*NotFound`; the others
return None when there is nothing to find.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from app.extensions import db
from app.models import Cart, Order, Payment, PaymentSession
from app.payments.errors import CartNotFound, OrderNotFound


def require_cart(cart_id: str, *, with_items: bool = False) -> Cart:
    """`with_items`: its items in the same SELECT (joined), for a caller that reads them."""
    cart = db.session.get(Cart, cart_id, options=[joinedload(Cart.items)] if with_items else None)
    if cart is None:
        raise CartNotFound(f"No cart with id {cart_id!r}.")
    return cart


def cart_and_order(cart_id: str) -> tuple[Cart, Order | None]:
    """The cart and the order made from it, if any, in one SELECT."""
    row = db.session.execute(
        select(Cart, Order).outerjoin(Order, Order.cart_id == Cart.id).where(Cart.id == cart_id)
    ).one_or_none()
    if row is None:
        raise CartNotFound(f"No cart with id {cart_id!r}.")
    return row[0], row[1]


def require_order(order_id: str) -> Order:
    order = db.session.get(Order, order_id)
    if order is None:
        raise OrderNotFound(f"No order with id {order_id!r}.")
    return order


def order_for_cart(cart_id: str) -> Order | None:
    return db.session.scalar(select(Order).where(Order.cart_id == cart_id))


def order_for_payment_intent(payment_intent_id: str) -> Order | None:
    return db.session.scalar(
        select(Order).join(Payment, Payment.order_id == Order.id).where(
            Payment.stripe_payment_intent_id == payment_intent_id
        )
    )


def payment_for_order(order_id: str) -> Payment | None:
    """The order's latest payment (the one its capture, edits, cancel and refunds act on)."""
    return db.session.scalar(
        select(Payment).where(Payment.order_id == order_id).order_by(Payment.created_at.desc()).limit(1)
    )


def payment_for_intent(payment_intent_id: str) -> Payment | None:
    return db.session.scalar(select(Payment).where(Payment.stripe_payment_intent_id == payment_intent_id))


def session_for_intent(payment_intent_id: str) -> PaymentSession | None:
    """The cart's record of a PaymentIntent it asked for (one row per PaymentIntent)."""
    return db.session.scalar(
        select(PaymentSession).where(PaymentSession.stripe_payment_intent_id == payment_intent_id)
    )
