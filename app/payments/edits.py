"""Order edits during the grace period: a lower total captures less; a higher one raises an
authorization where the card allows it, or asks the customer for a second payment.

Two phases around Stripe: check and price the edit (nothing written), raise an authorization if
needed (idempotency key from the order id, the edit's version and its total), then commit with
compare-and-sets: every live payment must still be `authorized` with its deadline ahead by the
database's clock (so an edit never interleaves with a capture, and one whose Stripe call ended
after the deadline is refused, however it started), and the order must still be at the version
the edit started from (so two edits never interleave). An increment that Stripe granted for an
edit that then lost is harmless: the capture takes the committed total and the rest of the
authorization is released. When no authorization can be raised (unavailable for the card or the
account, the 10 attempts used, refused by Stripe), the edit is pending until the difference is
authorized (`app.payments.pending_edits`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select, update

from app.carts import MAX_LINE_ITEMS, MAX_QUANTITY
from app.db_clock import read_db_now
from app.db_tx import write_transaction
from app.extensions import db
from app.log import current_trace_id
from app.models import Order, OrderChange, OrderEditStatus, OrderItem, OrderStatus, Payment, PaymentStatus, Product
from app.models.base import utcnow
from app.money import MAX_AMOUNT
from app.notices import outbox as notices
from app.payments import transitions
from app.payments.errors import (
    AmountTooLarge,
    CurrencyMismatch,
    DuplicateProduct,
    EditConflict,
    GracePeriodOver,
    IncreaseDeclined,
    InvalidItems,
    OrderCanceled,
    ProductNotFound,
    ProviderUnavailable,
    TooManyItems,
)
from app.payments.provider_errors import CardDeclined, IdempotencyConflict, PaymentProviderError, ProviderRefused
from app.payments.order_payments import payments_for_order
from app.payments.pending_edits import EditResult, create_pending_edit, retire_pending, snapshot, void_edit_intents
from app.payments.queries import require_order
from app.payments.stripe_gateway import get_gateway

log = logging.getLogger(__name__)

# Stripe allows at most 10 increment_authorization attempts per PaymentIntent, declines included.
MAX_INCREMENT_ATTEMPTS = 10


@dataclass(frozen=True)
class EditLine:
    product_id: str
    quantity: int


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


def _require_editable(order: Order, payments: list[Payment]) -> None:
    """The early refusal (before Stripe is asked); the commit's compare-and-set is what holds."""
    if order.status == OrderStatus.CANCELED:
        raise OrderCanceled("The order was canceled.")
    live = [p for p in payments if p.status != PaymentStatus.CANCELED]
    if (
        not live
        or any(p.status != PaymentStatus.AUTHORIZED for p in live)
        or order.status != OrderStatus.PENDING
        or min(p.capture_due_at for p in live) <= read_db_now(db.session)
    ):
        raise GracePeriodOver("The grace period is over; the order can no longer be edited.")


def edit_order(order_id: str, lines: list[EditLine]) -> EditResult:
    """Replace the order's items (totals recomputed here); 409/402 leave the order unchanged.

    A higher total raises an authorization when the card allows it; otherwise the answer is a
    pending edit (`app.payments.pending_edits`) and the order stays as it is until the customer
    has authorized the difference.
    """
    order = require_order(order_id)
    payments = payments_for_order(order_id)
    _require_editable(order, payments)
    new_items = _price(order, lines)
    new_total = sum(item.total for item in new_items)
    version = order.version
    live = [p for p in payments if p.status != PaymentStatus.CANCELED]
    old_total, old_authorized = order.total, sum(p.amount for p in live)
    items_before = snapshot(order.items)
    raised: tuple[str, int] | None = None  # (payment id, its new authorized amount)

    if new_total > old_authorized:
        raised = _raise_an_authorization(live, new_total - old_authorized, order_id, version, new_total)
        if raised is None:
            return create_pending_edit(order, new_items, new_total, old_authorized, version)
    new_authorized = old_authorized
    if raised is not None:
        raised_id, raised_to = raised
        new_authorized += raised_to - next(p.amount for p in live if p.id == raised_id)

    with write_transaction() as session:
        transitions.lock_order(order_id)
        if not transitions.payments_still_editable(order_id):
            raise GracePeriodOver("The grace period ended while the edit was in progress; the edit was not applied.")
        if raised is not None:
            session.execute(
                update(Payment).where(Payment.id == raised[0]).values(amount=raised[1])
                .execution_options(synchronize_session=False)
            )
        same_version = session.execute(
            update(Order)
            .where(Order.id == order_id, Order.version == version, Order.status == OrderStatus.PENDING)
            .values(version=version + 1, total=new_total, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        if not same_version:
            raise EditConflict("The order was changed meanwhile; reload it and edit again.")
        superseded = retire_pending(order_id, OrderEditStatus.SUPERSEDED, f"superseded by edit version {version + 1}")
        session.expire_all()
        fresh = session.get(Order, order_id)
        fresh.items = new_items
        if fresh.payment_collection is not None:
            fresh.payment_collection.amount = new_total
        session.add(
            OrderChange(
                order_id=order_id,
                version=version + 1,
                items_before=items_before,
                items_after=snapshot(new_items),
                total_before=old_total,
                total_after=new_total,
                authorized_before=old_authorized,
                authorized_after=new_authorized,
                trace_id=current_trace_id(),
            )
        )
        notices.order_edited(fresh, version + 1, old_total, new_items)
    void_edit_intents(superseded)
    log.info("order edited", extra={"order_id": order_id, "version": version + 1, "total": new_total,
                                     "authorized": new_authorized})
    return EditResult(db.session.get(Order, order_id))


def _raise_an_authorization(live: list[Payment], difference: int, order_id: str, version: int,
                            new_total: int) -> tuple[str, int] | None:
    """Raise one authorization by `difference`, the cheap way, where Stripe allows it: the newest
    payment whose charge reports incremental authorization available and that has attempts left.
    Returns (payment id, new amount), or None when no authorization can be raised (a pending edit
    then asks for a second payment). A decline is the customer's answer: 402, order unchanged."""
    gateway = get_gateway()
    for payment in reversed(live):
        if payment.increment_attempts >= MAX_INCREMENT_ATTEMPTS:
            continue
        try:
            current = gateway.retrieve_payment_intent(payment.stripe_payment_intent_id)
        except PaymentProviderError as exc:
            raise ProviderUnavailable("Stripe is unavailable; the order was not changed. Try again.") from exc
        if not current.is_authorized:
            raise GracePeriodOver("The payment is no longer authorized; the order can no longer be edited.")
        if current.incremental_authorization == "unavailable":
            continue
        if not _take_increment_attempt(payment.id):
            continue
        target = payment.amount + difference
        first = payment is live[0]
        # The key names the edit (order, version), its amount and, past the first payment, the
        # payment: retrying this edit is safe, and a different edit after a lost answer is not
        # refused as an idempotency conflict.
        key = f"edit:{order_id}:{version + 1}:{new_total}" + ("" if first else f":{payment.id}")
        amount = _increment(payment, target, key)
        if amount is not None:
            return payment.id, amount
    return None


def _take_increment_attempt(payment_id: str) -> bool:
    """Count the attempt before making it (Stripe counts declines too): at most 10 per PaymentIntent."""
    with write_transaction() as session:
        return session.execute(
            update(Payment)
            .where(Payment.id == payment_id, Payment.increment_attempts < MAX_INCREMENT_ATTEMPTS)
            .values(increment_attempts=Payment.increment_attempts + 1)
            .execution_options(synchronize_session=False)
        ).rowcount == 1


def _increment(payment: Payment, target: int, key: str) -> int | None:
    """Raise the authorization to `target` at Stripe; its new amount, or None when Stripe cannot raise it."""
    gateway = get_gateway()
    try:
        intent = gateway.increment_authorization(payment.stripe_payment_intent_id, amount=target, idempotency_key=key)
    except CardDeclined as exc:
        raise IncreaseDeclined(f"The card issuer declined the higher amount: {exc.message}") from exc
    except IdempotencyConflict as exc:
        raise EditConflict("Another edit of this order is in progress; reload and try again.") from exc
    except ProviderRefused as exc:
        # Unavailable for this card or account, the attempt limit reached, or a state Stripe will not
        # raise from: ask Stripe what the PaymentIntent is now.
        try:
            current = gateway.retrieve_payment_intent(payment.stripe_payment_intent_id)
        except PaymentProviderError as lookup:
            raise ProviderUnavailable("Stripe is unavailable; the order was not changed. Try again.") from lookup
        if not current.is_authorized:
            raise GracePeriodOver(f"Stripe refused to raise the authorization: {exc.message}") from exc
        if exc.code == "amount_too_small" and current.amount_capturable >= target:
            return current.amount_capturable  # an earlier increment whose answer was lost covers it
        log.info("authorization cannot be raised", extra={"payment_id": payment.id, "code": exc.code})
        return None
    except PaymentProviderError as exc:
        raise ProviderUnavailable("Stripe is unavailable; the order was not changed. Try again.") from exc
    return intent.amount_capturable or intent.amount
