"""Turning an authorized PaymentIntent into an order: once per cart, whichever path comes first.

`/store/carts/{id}/complete` and the `payment_intent.amount_capturable_updated` webhook both
call `place_order`; the unique constraints on `orders.cart_id` and
`payments.stripe_payment_intent_id` make the second caller find the first one's order.

The cart freezes in the transaction that creates its order: a compare-and-set on the cart row
(`completed_at IS NULL`), the same row every cart write locks first (`app.carts`). So a line
item added meanwhile either commits before (and this transaction sees it, and refuses an
authorization that no longer covers the cart) or is refused with `cart_completed`. The amount
check is made on the very items the order copies.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from flask import current_app
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from app.db_clock import db_now
from app.db_tx import write_transaction
from app.extensions import db
from app.log import current_trace_id
from app.models import (
    Cart,
    DisplayIdSequence,
    Order,
    OrderItem,
    Payment,
    PaymentSessionStatus,
    PaymentStatus,
)
from app.notices import outbox as notices
from app.payments.errors import (
    PaymentDeclined,
    PaymentNotAuthorized,
    PaymentNotPlaceable,
    UnknownPaymentIntent,
)
from app.payments.order_payments import OrderPayments
from app.payments.payment_records import record_collection, record_session
from app.payments.provider_errors import ProviderRefused
from app.payments.queries import cart_and_order, order_for_cart, order_for_payment_intent, session_for_intent
from app.payments.stripe_gateway import PaymentIntent, get_gateway
from app.signals import order_placed

log = logging.getLogger(__name__)

DISPLAY_ID_OFFSET = 1000


def authorized_amount(intent: PaymentIntent) -> int:
    """What the card holds for us: `amount_capturable`, or the whole amount once captured elsewhere."""
    return intent.amount_capturable if intent.is_authorized else intent.amount


def _void_unplaceable(intent: PaymentIntent, why: str) -> None:
    """Release an authorization that no order will ever capture (paid twice, stale amount).

    Already captured (someone captured it in Stripe's dashboard) it cannot be voided: it is
    refunded in full instead, under a key that names it, and the cart's payment record says why.
    """
    gateway = get_gateway()
    # A key per attempt, not per PaymentIntent: an error Stripe stored under a fixed key would be
    # replayed to every later attempt for 24 hours. Safe to repeat: Stripe voids a PaymentIntent
    # once, and refunds at most what it captured (a second full refund is refused).
    attempt = secrets.token_hex(6)
    if intent.status == "succeeded":
        log.warning("refunding a captured payment that cannot become an order",
                    extra={"payment_intent_id": intent.id, "why": why})
        try:
            gateway.create_refund(payment_intent_id=intent.id, amount=intent.amount_received,
                                  idempotency_key=f"refund-unplaceable:{intent.id}:{attempt}",
                                  metadata={"reason": "cannot become an order"})
            why = f"{why}; it was already captured and was refunded in full"
        except ProviderRefused as exc:  # refunded already (by hand, or an earlier delivery)
            why = f"{why}; it was already captured; the refund was refused: {exc.message}"
    else:
        log.warning("voiding authorization that cannot become an order", extra={"payment_intent_id": intent.id, "why": why})
        try:
            gateway.cancel_payment_intent(intent.id, idempotency_key=f"void-unplaceable:{intent.id}:{attempt}",
                                          reason="duplicate")
        except ProviderRefused as exc:
            log.warning("void refused by Stripe", extra={"payment_intent_id": intent.id, "error": exc.message})
    with write_transaction():
        row = session_for_intent(intent.id)
        if row is not None:
            row.status = PaymentSessionStatus.CANCELED
            row.last_error = why[:1000]


class _CartTaken(Exception):
    """The cart was frozen by another placement (the other path, or another PaymentIntent)."""


class _AuthorizationShort(Exception):
    """The authorization does not cover the cart as it is when the order would be made."""


@dataclass(frozen=True)
class CompletedCart:
    """`complete_cart`'s answer: the order, and its payments when this very call placed it."""

    order: Order
    # As the placing transaction wrote them (and a new order has no pending edit): the answer
    # needs no read. None for an order placed before (read it as any other order).
    payments: OrderPayments | None = None


def place_order(intent: PaymentIntent) -> Order:
    """The order for this authorized PaymentIntent, created if it does not exist yet."""
    existing = order_for_payment_intent(intent.id)
    if existing is not None:
        return existing
    return _place(intent).order


def _place(intent: PaymentIntent) -> CompletedCart:
    """Place the order of the PaymentIntent's cart, or find the one another path placed meanwhile."""
    cart_id = intent.metadata.get("cart_id")
    cart = db.session.get(Cart, cart_id) if cart_id else None
    if cart is None:
        raise UnknownPaymentIntent(f"PaymentIntent {intent.id} names no known cart.")
    if intent.status not in ("requires_capture", "succeeded"):
        raise PaymentNotAuthorized("The payment is not authorized yet.")

    try:
        order, payment = _create_order(cart.id, intent)
    except (IntegrityError, _CartTaken):
        # The other path (webhook or /complete) committed first: use its order. On PostgreSQL
        # each statement sees the latest commits, so this finds an order placed a moment ago.
        db.session.rollback()
        order = order_for_payment_intent(intent.id)
        if order is None:
            other = order_for_cart(cart.id)
            if other is None:
                raise
            _void_unplaceable(intent, f"cart {cart.id} already has order {other.id} under another payment")
            raise PaymentNotPlaceable("the cart was already paid") from None
        return CompletedCart(order)
    except _AuthorizationShort as exc:
        _void_unplaceable(intent, str(exc))
        raise PaymentNotPlaceable("the cart changed after this payment was authorized") from None

    log.info("order placed", extra={"order_id": order.id, "cart_id": cart.id, "payment_intent_id": intent.id})
    # Only now, after the commit, may subscribers (capture intents, emails) act on it.
    order_placed.send(current_app._get_current_object(), order_id=order.id, trace_id=current_trace_id())
    return CompletedCart(order, OrderPayments.of(order, [payment]))


def _freeze(cart_id: str) -> Cart | None:
    """Complete the cart if it is still open, stamped with the database's clock; None if it is not.

    One statement: the compare-and-set on `completed_at IS NULL` (the row every cart write locks
    first), its time, and the cart read back. The session's objects are expired first, so the
    items load fresh, after the freeze, when first read.
    """
    db.session.expire_all()
    return db.session.scalars(
        update(Cart)
        .where(Cart.id == cart_id, Cart.completed_at.is_(None))
        .values(completed_at=db_now(), updated_at=db_now())  # one clock for deadlines: the database's
        .returning(Cart)
        .execution_options(synchronize_session=False)
    ).one_or_none()


def _create_order(cart_id: str, intent: PaymentIntent) -> tuple[Order, Payment]:
    """Cart frozen, then order, items, collection, session and payment, in one transaction."""
    settings = current_app.config["ENGINE"]
    with write_transaction(expire_on_commit=False) as session:
        cart = _freeze(cart_id)
        if cart is None:
            raise _CartTaken(cart_id)
        now = cart.completed_at
        authorized = authorized_amount(intent)
        if not cart.items or intent.currency != cart.currency or authorized < cart.total:
            raise _AuthorizationShort(
                f"authorized {authorized} {intent.currency} for a cart now at {cart.total} {cart.currency}"
                + ("" if cart.items else " (empty)"))
        sequence = DisplayIdSequence()
        session.add(sequence)
        session.flush()
        order = Order(
            display_id=DISPLAY_ID_OFFSET + sequence.id,
            cart_id=cart.id,
            email=cart.email,
            currency=cart.currency,
            total=cart.total,
            grace_period_ends_at=now + timedelta(seconds=settings.grace_period_seconds),
            trace_id=current_trace_id(),
            created_at=now,
        )
        order.items = [
            OrderItem(
                product_id=line.product_id,
                title=line.title,
                unit_amount=line.unit_amount,
                quantity=line.quantity,
                position=position,
            )
            for position, line in enumerate(cart.items)
        ]
        session.add(order)
        session.flush()  # the collection names the order
        collection_id = record_collection(cart.id, cart.currency, cart.total, order_id=order.id)
        # A session exists unless the cart's PaymentIntent was never recorded (its record lost).
        payment_session_id = record_session(collection_id, intent, "", PaymentSessionStatus.AUTHORIZED)
        payment = Payment(
            payment_collection_id=collection_id,
            payment_session_id=payment_session_id,
            order_id=order.id,
            stripe_payment_intent_id=intent.id,
            stripe_charge_id=intent.latest_charge,
            currency=intent.currency,
            amount=authorized_amount(intent),
            status=PaymentStatus.AUTHORIZED,
            authorized_at=now,
            capture_due_at=order.grace_period_ends_at,
            capture_before=(datetime.fromtimestamp(intent.capture_before, timezone.utc)
                            if intent.capture_before else None),
        )
        session.add(payment)
        notices.order_placed(order)
    return order, payment


def complete_cart(cart_id: str) -> CompletedCart:
    """`POST /store/carts/{id}/complete`: the cart's order once Stripe says the payment is authorized."""
    cart, order = cart_and_order(cart_id)
    if order is not None:
        return CompletedCart(order)
    if not cart.payment_intent_id:
        raise PaymentNotAuthorized("The cart has no payment yet; create a payment intent first.")
    intent = get_gateway().retrieve_payment_intent(cart.payment_intent_id)
    if intent.is_authorized:
        try:
            # No look-up by PaymentIntent first (`place_order`'s): the cart had no order a moment
            # ago, and one placed since by the webhook makes the freeze fail, after which `_place`
            # finds and returns it.
            return _place(intent)
        except PaymentNotPlaceable as exc:
            raise PaymentNotPlaceable(f"The payment cannot be used: {exc.message}. Pay again.") from None
    if intent.status == "requires_payment_method" and intent.last_error_message:
        reason = intent.last_error_decline_code or intent.last_error_code or "declined"
        raise PaymentDeclined(f"The payment failed ({reason}): {intent.last_error_message}")
    raise PaymentNotAuthorized(f"The payment is not authorized yet (PaymentIntent status {intent.status}).")
