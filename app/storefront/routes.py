"""Thin views: parse, call the domain, serialize."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, jsonify
from sqlalchemy import select

from app import carts
from app.carts import MAX_QUANTITY
from app.errors import ApiError, InvalidRequest
from app.extensions import db
from app.models import Product
from app.payments import cancellation, edits, pending_edits
from app.payments.edits import EditLine
from app.payments.payment_intents import ensure_payment_intent
from app.payments.placement import complete_cart
from app.payments.queries import require_order
from app.presenters import cart_json, order_json, pending_edit_json
from app.storefront.validation import currency, email, id_string, json_body, positive_int, reject_unknown

bp = Blueprint("storefront", __name__, url_prefix="/store")


@bp.get("/products")
def list_products():
    """Every product for sale."""
    products = db.session.scalars(select(Product).order_by(Product.currency, Product.title)).all()
    return jsonify(
        {
            "products": [
                {
                    "id": p.id,
                    "title": p.title,
                    "description": p.description,
                    "unit_amount": p.unit_amount,
                    "currency": p.currency,
                }
                for p in products
            ]
        }
    )


@bp.post("/carts")
def create_cart():
    """Open a cart for an email address in one currency."""
    data = json_body()
    reject_unknown(data, {"email", "currency"})
    cart = carts.create_cart(email(data), currency(data))
    return jsonify({"cart": cart_json(cart)}), 201


@bp.get("/carts/<cart_id>")
def get_cart(cart_id: str):
    """A cart with its items and server-computed total."""
    return jsonify({"cart": cart_json(carts.get_cart(cart_id))})


@contextmanager
def _unknown_cart_first(cart_id: str) -> Iterator[None]:
    """An unknown cart answers 404 whatever the body; looked up only when the body is refused (the
    write itself finds an unknown cart, without a lookup of its own first)."""
    try:
        yield
    except ApiError:
        carts.get_cart(cart_id)
        raise


@bp.post("/carts/<cart_id>/line-items")
def add_line_item(cart_id: str):
    """Add a product (or more of it) to the cart."""
    with _unknown_cart_first(cart_id):
        data = json_body()
        reject_unknown(data, {"product_id", "quantity"})
        product_id = id_string(data, "product_id", "prod")
        quantity = positive_int(data, "quantity", MAX_QUANTITY)
    return jsonify({"cart": cart_json(carts.add_line_item(cart_id, product_id, quantity))})


@bp.post("/carts/<cart_id>/line-items/<line_id>")
def update_line_item(cart_id: str, line_id: str):
    """Set a line's quantity."""
    with _unknown_cart_first(cart_id):
        data = json_body()
        reject_unknown(data, {"quantity"})
        quantity = positive_int(data, "quantity", MAX_QUANTITY)
    return jsonify({"cart": cart_json(carts.update_line_item(cart_id, line_id, quantity))})


@bp.delete("/carts/<cart_id>/line-items/<line_id>")
def remove_line_item(cart_id: str, line_id: str):
    """Remove a line from the cart."""
    return jsonify({"cart": cart_json(carts.remove_line_item(cart_id, line_id))})


@bp.post("/carts/<cart_id>/payment-intent")
def create_payment_intent(cart_id: str):
    """The cart's PaymentIntent for its current total (the same one until the total changes)."""
    intent = ensure_payment_intent(cart_id)
    return jsonify(
        {
            "payment_intent": {
                "id": intent.id,
                "client_secret": intent.client_secret,
                "amount": intent.amount,
                "currency": intent.currency,
                "status": intent.status,
            }
        }
    )


@bp.post("/carts/<cart_id>/complete")
def complete(cart_id: str):
    """Turn the cart into an order once its payment is authorized; the same order every time."""
    completed = complete_cart(cart_id)
    # An order this call placed is shown as its transaction wrote it (no pending edit yet).
    return jsonify({"order": order_json(completed.order, completed.payments,
                                        pending_edit_known=completed.payments is not None)})


@bp.get("/orders/<order_id>")
def get_order(order_id: str):
    """An order with its payment, grace period and capture status."""
    return jsonify({"order": order_json(require_order(order_id))})


@bp.post("/orders/<order_id>/edits")
def edit_order(order_id: str):
    """Replace the order's items during the grace period."""
    require_order(order_id)
    data = json_body()
    reject_unknown(data, {"items"})
    raw_items = data.get("items")
    if not isinstance(raw_items, list):
        raise InvalidRequest("`items` must be a list of {product_id, quantity}.")
    lines = []
    for raw in raw_items:
        if not isinstance(raw, dict):
            raise InvalidRequest("Each item must be an object {product_id, quantity}.")
        reject_unknown(raw, {"product_id", "quantity"})
        lines.append(EditLine(id_string(raw, "product_id", "prod"), positive_int(raw, "quantity", MAX_QUANTITY)))
    result = edits.edit_order(order_id, lines)
    if result.pending_edit is not None:
        # The card's authorization cannot be raised: the customer authorizes the difference.
        return jsonify({"order": order_json(result.order, pending_edit=result.pending_edit),
                        "pending_edit": pending_edit_json(result.pending_edit)}), 202
    return jsonify({"order": order_json(result.order)})


@bp.post("/orders/<order_id>/edits/<edit_id>/complete")
def complete_edit(order_id: str, edit_id: str):
    """Apply a pending edit once its PaymentIntent is authorized; the same order every time."""
    require_order(order_id)
    return jsonify({"order": order_json(pending_edits.complete_edit(order_id, edit_id))})


@bp.post("/orders/<order_id>/cancel")
def cancel_order(order_id: str):
    """Cancel the order during its grace period; the authorization is voided."""
    return jsonify({"order": order_json(cancellation.cancel_order(order_id, actor="customer"))})
