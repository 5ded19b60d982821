"""Order edits during the grace period: a higher total increments the authorization, a lower one captures less.

Two phases around Stripe: check and price the edit (nothing written), increment the
authorization if needed (idempotency key from the order id and the edit's version), then
commit with two compare-and-sets — the payment must still be `authorized` and its deadline
still ahead by the database's clock (so an edit never interleaves with a capture, and one whose
Stripe call ended after the deadline is refused, however it started), and the order must still
be at the version the edit started from (so two edits never interleave). An increment that
Stripe granted for an edit that then lost is harmless: the capture takes the committed total
and the rest of the authorization is released.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select, update

from app.carts import MAX_LINE_ITEMS, MAX_QUANTITY
from app.db_clock import db_now, read_db_now
from app.db_tx import write_transaction
from app.extensions import db
from app.log import current_trace_id
from app.models import Order, OrderChange, OrderItem, OrderStatus, Payment, PaymentStatus, Product
from app.models.base import utcnow
from app.money import MAX_AMOUNT
from app.payments.errors import (
    AmountTooLarge,
    CurrencyMismatch,
    DuplicateProduct,
    EditConflict,
    GracePeriodOver,
    IncreaseDeclined,
    IncreaseUnsupported,
    InvalidItems,
    OrderCanceled,
    ProductNotFound,
    ProviderUnavailable,
    TooManyItems,
)
from app.payments.provider_errors import CardDeclined, IdempotencyConflict, PaymentProviderError, ProviderRefused
from app.payments.queries import payment_for_order, require_order
from app.payments.stripe_gateway import get_gateway

log = logging.getLogger(__name__)

UNSUPPORTED_CODES = {"incremental_authorization_not_available", "payment_intent_incremental_authorization_not_available"}


@dataclass(frozen=True)
class EditLine:
    product_id: str
    quantity: int


def _snapshot(items) -> list[dict]:
    return [
        {"product_id": i.product_id, "title": i.title, "unit_amount": i.unit_amount, "quantity": i.quantity}
        for i in items
    ]


def _price(order: Order, lines: list[EditLine]) -> list[OrderItem]:
    if not lines:
        raise InvalidItems("An order needs at least one item; cancel the order instead.")
    if len(lines) > MAX_LINE_ITEMS:
        raise TooManyItems(f"An order holds at most {MAX_LINE_ITEMS} lines.")
    ids = [line.product_id for line in lines]
    if len(set(ids)) != len(ids):
        raise DuplicateProduct("Each product may appear once; set its quantity instead.")
    products = {p.id: p for p in db.session.scalars(select(Product).where(Product.id.in_(ids)))}
    items = []
    for position, line in enumerate(lines):
        product = products.get(line.product_id)
        if product is None:
            raise ProductNotFound(f"No product with id {line.product_id!r}.")
        if product.currency != order.currency:
            raise CurrencyMismatch(f"The product is priced in {product.currency}, the order in {order.currency}.")
        if not 1 <= line.quantity <= MAX_QUANTITY:
            raise InvalidItems(f"Quantities must be between 1 and {MAX_QUANTITY}.")
        items.append(OrderItem(product_id=product.id, title=product.title, unit_amount=product.unit_amount,
                               quantity=line.quantity, position=position))
    if sum(item.total for item in items) > MAX_AMOUNT:
        raise AmountTooLarge(f"The order total may not exceed {MAX_AMOUNT} minor units.")
    return items


def _require_editable(order: Order, payment: Payment | None) -> None:
    """The early refusal (before Stripe is asked); the commit's compare-and-set is what holds."""
    if order.status == OrderStatus.CANCELED:
        raise OrderCanceled("The order was canceled.")
    if (
        payment is None
        or payment.status != PaymentStatus.AUTHORIZED
        or order.status != OrderStatus.PENDING
        or payment.capture_due_at <= read_db_now(db.session)
    ):
        raise GracePeriodOver("The grace period is over; the order can no longer be edited.")


def edit_order(order_id: str, lines: list[EditLine]) -> Order:
    """Replace the order's items (totals recomputed here); 409/402 leave the order unchanged."""
    order = require_order(order_id)
    payment = payment_for_order(order_id)
    _require_editable(order, payment)
    new_items = _price(order, lines)
    new_total = sum(item.total for item in new_items)
    version = order.version
    old_total, old_authorized = order.total, payment.amount
    items_before = _snapshot(order.items)
    new_authorized = old_authorized

    if new_total > old_authorized:
        new_authorized = _increment(payment, new_total, order_id, version)

    with write_transaction() as session:
        still_editable = session.execute(
            update(Payment)
            .where(Payment.id == payment.id, Payment.status == PaymentStatus.AUTHORIZED,
                   Payment.capture_due_at > db_now())
            .values(amount=new_authorized, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        if not still_editable:
            raise GracePeriodOver("The grace period ended while the edit was in progress; the edit was not applied.")
        same_version = session.execute(
            update(Order)
            .where(Order.id == order_id, Order.version == version, Order.status == OrderStatus.PENDING)
            .values(version=version + 1, total=new_total, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        if not same_version:
            raise EditConflict("The order was changed meanwhile; reload it and edit again.")
        session.expire_all()
        fresh = session.get(Order, order_id)
        fresh.items = new_items
        session.add(
            OrderChange(
                order_id=order_id,
                version=version + 1,
                items_before=items_before,
                items_after=_snapshot(new_items),
                total_before=old_total,
                total_after=new_total,
                authorized_before=old_authorized,
                authorized_after=new_authorized,
                trace_id=current_trace_id(),
            )
        )
    log.info("order edited", extra={"order_id": order_id, "version": version + 1, "total": new_total,
                                     "authorized": new_authorized})
    return db.session.get(Order, order_id)


def _increment(payment: Payment, new_total: int, order_id: str, version: int) -> int:
    """Raise the authorization to `new_total` at Stripe; returns the new authorized amount."""
    gateway = get_gateway()
    try:
        # The key names the edit (order, version) and its amount: retrying this edit is safe, and a
        # different edit after a lost answer is not refused as an idempotency conflict.
        intent = gateway.increment_authorization(
            payment.stripe_payment_intent_id,
            amount=new_total,
            idempotency_key=f"edit:{order_id}:{version + 1}:{new_total}",
        )
    except CardDeclined as exc:
        raise IncreaseDeclined(f"The card issuer declined the higher amount: {exc.message}") from exc
    except IdempotencyConflict as exc:
        raise EditConflict("Another edit of this order is in progress; reload and try again.") from exc
    except ProviderRefused as exc:
        if exc.code == "amount_too_small":
            # An earlier increment whose answer was lost may already cover this total.
            current = gateway.retrieve_payment_intent(payment.stripe_payment_intent_id)
            if current.status == "requires_capture" and current.amount_capturable >= new_total:
                return current.amount_capturable
        if exc.code in UNSUPPORTED_CODES:
            raise IncreaseUnsupported("The card does not support raising the authorized amount.") from exc
        raise GracePeriodOver(f"Stripe refused to raise the authorization: {exc.message}") from exc
    except PaymentProviderError as exc:
        raise ProviderUnavailable("Stripe is unavailable; the order was not changed. Try again.") from exc
    return intent.amount_capturable or intent.amount
