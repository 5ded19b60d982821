"""Carts and their line items; totals are computed here, never taken from the client.

Every cart write starts by locking the cart row with a compare-and-set on `completed_at IS
NULL` (`lock_open_cart`), the row the order's placement freezes in its own transaction: on
PostgreSQL the two serialise on the row lock, on SQLite on the write lock. So a cart write
either commits before the order is made (and is in it, or the authorization is refused as
short) or is refused with `cart_completed`; never answered 200 and left out of the order.
"""

from __future__ import annotations

import logging

from sqlalchemy import insert, select, update
from sqlalchemy.orm.attributes import set_committed_value

from app.db_tx import single_statement, write_transaction
from app.extensions import db
from app.ids import new_id
from app.models import Cart, LineItem, Product
from app.models.base import utcnow
from app.money import MAX_AMOUNT
from app.payments.errors import (
    AmountTooLarge,
    CartCompleted,
    CurrencyMismatch,
    LineItemNotFound,
    ProductNotFound,
    QuantityTooLarge,
    TooManyItems,
)
from app.payments.queries import require_cart

log = logging.getLogger(__name__)

MAX_QUANTITY = 1000
MAX_LINE_ITEMS = 100


def get_cart(cart_id: str) -> Cart:
    return require_cart(cart_id)


def create_cart(email: str, currency: str) -> Cart:
    """A new cart: one INSERT, atomic on its own (`single_statement`); the object is the row as written."""
    now = utcnow()
    cart = Cart(id=new_id("cart"), email=email, currency=currency, payment_intent_id=None, completed_at=None,
                failed_payment_intent_creates=0, created_at=now, updated_at=now, items=[])
    columns = ("id", "email", "currency", "payment_intent_id", "completed_at", "failed_payment_intent_creates",
               "created_at", "updated_at")
    with single_statement() as connection:
        connection.execute(insert(Cart), [{name: getattr(cart, name) for name in columns}])
    log.info("cart created", extra={"cart_id": cart.id})
    return cart


def lock_open_cart(cart_id: str, **values) -> Cart:
    """Inside a write transaction: lock the cart row while it is open, or refuse (`cart_completed`).

    One statement locks the row, checks that the cart is open, writes `values` (besides
    `updated_at`) and reads the cart back (`UPDATE ... RETURNING`). Everything the session held is
    expired first, so the cart's items load fresh, under the lock, when they are first read.
    """
    db.session.expire_all()
    cart = db.session.scalars(
        update(Cart)
        .where(Cart.id == cart_id, Cart.completed_at.is_(None))
        .values(updated_at=utcnow(), **values)
        .returning(Cart)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if cart is None:
        get_cart(cart_id)  # 404 for an unknown cart
        raise CartCompleted("The cart was already turned into an order.")
    return cart


def _product_and_items(cart: Cart, product_id: str) -> Product | None:
    """The product, with the (locked) cart's items loaded alongside it: one SELECT where two were."""
    rows = db.session.execute(
        select(Product, LineItem)
        .outerjoin(LineItem, LineItem.cart_id == cart.id)  # every item of the cart, on each product row
        .where(Product.id == product_id)
        .order_by(LineItem.created_at)  # the relationship's order
    ).all()
    if not rows:
        return None
    set_committed_value(cart, "items", [item for _, item in rows if item is not None])
    return rows[0][0]


def _check_total(cart: Cart) -> None:
    if cart.total > MAX_AMOUNT:
        raise AmountTooLarge(f"The cart total may not exceed {MAX_AMOUNT} minor units.")


def add_line_item(cart_id: str, product_id: str, quantity: int) -> Cart:
    """Add a product, or add to the quantity of its existing line."""
    with write_transaction(expire_on_commit=False):
        cart = lock_open_cart(cart_id)
        product = _product_and_items(cart, product_id)
        if product is None:
            raise ProductNotFound(f"No product with id {product_id!r}.")
        if product.currency != cart.currency:
            raise CurrencyMismatch(f"The product is priced in {product.currency}, the cart in {cart.currency}.")
        line = next((item for item in cart.items if item.product_id == product.id), None)
        if line is None:
            if len(cart.items) >= MAX_LINE_ITEMS:
                raise TooManyItems(f"A cart holds at most {MAX_LINE_ITEMS} lines.")
            line = LineItem(product_id=product.id, title=product.title, unit_amount=product.unit_amount, quantity=0)
            cart.items.append(line)
        if line.quantity + quantity > MAX_QUANTITY:
            raise QuantityTooLarge(f"A line's quantity may not exceed {MAX_QUANTITY}.")
        line.quantity += quantity
        _check_total(cart)
    return cart


def _line(cart: Cart, line_id: str) -> LineItem:
    line = next((item for item in cart.items if item.id == line_id), None)
    if line is None:
        raise LineItemNotFound(f"No line item {line_id!r} in this cart.")
    return line


def update_line_item(cart_id: str, line_id: str, quantity: int) -> Cart:
    with write_transaction(expire_on_commit=False):
        cart = lock_open_cart(cart_id)
        _line(cart, line_id).quantity = quantity
        _check_total(cart)
    return cart


def remove_line_item(cart_id: str, line_id: str) -> Cart:
    with write_transaction(expire_on_commit=False):
        cart = lock_open_cart(cart_id)
        cart.items.remove(_line(cart, line_id))
    return cart
