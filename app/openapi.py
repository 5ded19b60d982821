"""`GET /openapi.json`: the OpenAPI 3 document of the storefront API (the contract's shapes)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from app.money import SUPPORTED_CURRENCIES

bp = Blueprint("openapi", __name__)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict:
    return {"description": description, "content": _json(_ref("Error"))}


ID = {"type": "string", "minLength": 1, "maxLength": 64}
AMOUNT = {"type": "integer", "minimum": 0}
CURRENCY = {"type": "string", "pattern": "^[a-z]{3}$"}
ACCEPTED_CURRENCY = {"type": "string", "enum": sorted(SUPPORTED_CURRENCIES)}
TIME = {"type": "string", "format": "date-time"}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Product": {
        "type": "object",
        "required": ["id", "title", "description", "unit_amount", "currency"],
        "properties": {"id": ID, "title": {"type": "string"}, "description": {"type": "string"},
                       "unit_amount": AMOUNT, "currency": CURRENCY},
    },
    "LineItem": {
        "type": "object",
        "required": ["id", "product_id", "title", "quantity", "unit_amount", "total"],
        "properties": {"id": ID, "product_id": ID, "title": {"type": "string"},
                       "quantity": {"type": "integer", "minimum": 1}, "unit_amount": AMOUNT, "total": AMOUNT},
    },
    "Cart": {
        "type": "object",
        "required": ["id", "email", "currency", "items", "total", "payment_intent_id"],
        "properties": {"id": ID, "email": {"type": "string"}, "currency": CURRENCY,
                       "items": {"type": "array", "items": _ref("LineItem")}, "total": AMOUNT,
                       "payment_intent_id": {"type": ["string", "null"]}},
    },
    "PaymentIntent": {
        "type": "object",
        "required": ["id", "client_secret", "amount", "currency", "status"],
        "properties": {"id": {"type": "string"}, "client_secret": {"type": ["string", "null"]},
                       "amount": AMOUNT, "currency": CURRENCY, "status": {"type": "string"}},
    },
    "Order": {
        "type": "object",
        "required": ["id", "display_id", "email", "currency", "status", "items", "total", "payment_status",
                     "authorized_amount", "captured_amount", "refunded_amount", "grace_period", "capture",
                     "created_at"],
        "properties": {
            "id": ID,
            "display_id": {"type": "integer"},
            "email": {"type": "string"},
            "currency": CURRENCY,
            "status": {"type": "string", "enum": ["pending", "completed", "canceled"]},
            "items": {"type": "array", "items": _ref("LineItem")},
            "total": AMOUNT,
            "payment_status": {"type": "string", "enum": [
                "not_paid", "awaiting", "authorized", "partially_authorized", "captured", "partially_captured",
                "partially_refunded", "refunded", "canceled", "requires_action"]},
            "authorized_amount": AMOUNT,
            "captured_amount": AMOUNT,
            "refunded_amount": AMOUNT,
            "grace_period": {
                "type": "object",
                "required": ["ends_at", "remaining_seconds", "editable"],
                "properties": {"ends_at": TIME, "remaining_seconds": {"type": "integer", "minimum": 0},
                               "editable": {"type": "boolean"}},
            },
            "capture": {
                "type": "object",
                "required": ["status", "captured_at", "last_error"],
                "properties": {
                    "status": {"type": "string",
                               "enum": ["scheduled", "in_progress", "succeeded", "failed", "canceled"]},
                    "captured_at": {"anyOf": [TIME, {"type": "null"}]},
                    "last_error": {"type": ["string", "null"]},
                },
            },
            "payments": {"type": "array", "items": _ref("Payment")},
            "pending_edit": {"anyOf": [_ref("PendingEdit"), {"type": "null"}]},
            "created_at": TIME,
        },
    },
    "Payment": {
        "type": "object",
        "required": ["id", "payment_intent_id", "amount", "captured_amount", "refunded_amount", "status"],
        "properties": {"id": ID, "payment_intent_id": {"type": "string"}, "amount": AMOUNT,
                       "captured_amount": AMOUNT, "refunded_amount": AMOUNT, "status": {"type": "string", "enum": [
                           "authorized", "capturing", "capture_failed", "captured", "canceling", "canceled"]}},
    },
    "PendingEdit": {
        "type": "object",
        "description": "An increase the card's authorization cannot be raised to: the customer confirms "
                       "`payment_intent` (for `amount_due`), then the edit applies.",
        "required": ["id", "status", "items", "total", "amount_due", "payment_intent", "expires_at"],
        "properties": {
            "id": ID,
            "status": {"type": "string", "enum": ["requires_payment"]},
            "items": {"type": "array", "items": {
                "type": "object",
                "required": ["id", "product_id", "title", "quantity", "unit_amount", "total"],
                "properties": {"id": {"type": "null"}, "product_id": ID, "title": {"type": "string"},
                               "quantity": {"type": "integer", "minimum": 1}, "unit_amount": AMOUNT,
                               "total": AMOUNT}}},
            "total": AMOUNT,
            "amount_due": AMOUNT,
            "payment_intent": _ref("PaymentIntent"),
            "expires_at": TIME,
        },
    },
    "NewCart": {
        "type": "object",
        "required": ["email", "currency"],
        "additionalProperties": False,
        "properties": {"email": {"type": "string", "format": "email", "maxLength": 254}, "currency": ACCEPTED_CURRENCY},
    },
    "NewLineItem": {
        "type": "object",
        "required": ["product_id", "quantity"],
        "additionalProperties": False,
        "properties": {"product_id": ID, "quantity": {"type": "integer", "minimum": 1, "maximum": 1000}},
    },
    "Quantity": {
        "type": "object",
        "required": ["quantity"],
        "additionalProperties": False,
        "properties": {"quantity": {"type": "integer", "minimum": 1, "maximum": 1000}},
    },
    "OrderEdit": {
        "type": "object",
        "required": ["items"],
        "additionalProperties": False,
        "properties": {"items": {"type": "array", "minItems": 1, "items": _ref("NewLineItem")}},
    },
}

COMMON_ERRORS = {
    "400": _error("Malformed JSON"),
    "404": _error("Unknown cart, order, product or line item"),
    "413": _error("Body too large"),
    "415": _error("Body is not JSON"),
    "422": _error("Invalid request"),
}


def _op(summary: str, ok: dict, *, body: str | None = None, extra: dict | None = None, status: str = "200") -> dict:
    op = {"summary": summary, "responses": {status: {"description": "OK", "content": _json(ok)}, **COMMON_ERRORS}}
    if body:
        op["requestBody"] = {"required": True, "content": _json(_ref(body))}
    for code, description in (extra or {}).items():
        op["responses"][code] = _error(description)
    return op


def _with_pending_edit(op: dict) -> dict:
    """The edit's 202: the order unchanged, and the pending edit the customer must pay."""
    accepted = {"type": "object", "required": ["order", "pending_edit"],
                "properties": {"order": _ref("Order"), "pending_edit": _ref("PendingEdit")}}
    op["responses"]["202"] = {"description": "The increase waits for a second payment", "content": _json(accepted)}
    return op


def _wrapped(key: str, schema: str) -> dict:
    return {"type": "object", "required": [key], "properties": {key: _ref(schema)}}


CART_ID = {"name": "cart_id", "in": "path", "required": True, "schema": ID}
ORDER_ID = {"name": "order_id", "in": "path", "required": True, "schema": ID}
LINE_ID = {"name": "line_id", "in": "path", "required": True, "schema": ID}
EDIT_ID = {"name": "edit_id", "in": "path", "required": True, "schema": ID}
CART = _wrapped("cart", "Cart")
ORDER = _wrapped("order", "Order")

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "Delayed-capture storefront API", "version": "1.0.0",
             "description": "Amounts are integers in the currency's minor unit; currencies lowercase ISO 4217."},
    "paths": {
        "/store/products": {"get": _op("List products", {"type": "object", "required": ["products"], "properties": {
            "products": {"type": "array", "items": _ref("Product")}}})},
        "/store/carts": {"post": _op("Create a cart", CART, body="NewCart", status="201")},
        "/store/carts/{cart_id}": {"parameters": [CART_ID], "get": _op("Get a cart", CART)},
        "/store/carts/{cart_id}/line-items": {
            "parameters": [CART_ID],
            "post": _op("Add a product to the cart", CART, body="NewLineItem", extra={"409": "Cart already completed"}),
        },
        "/store/carts/{cart_id}/line-items/{line_id}": {
            "parameters": [CART_ID, LINE_ID],
            "post": _op("Set a line's quantity", CART, body="Quantity", extra={"409": "Cart already completed"}),
            "delete": _op("Remove a line", CART, extra={"409": "Cart already completed"}),
        },
        "/store/carts/{cart_id}/payment-intent": {
            "parameters": [CART_ID],
            "post": _op("Get the cart's PaymentIntent", _wrapped("payment_intent", "PaymentIntent"),
                        extra={"409": "Cart already completed", "503": "Stripe unavailable"}),
        },
        "/store/carts/{cart_id}/complete": {
            "parameters": [CART_ID],
            "post": _op("Complete the cart into an order", ORDER,
                        extra={"402": "Payment declined", "409": "Payment not authorized", "503": "Stripe unavailable"}),
        },
        "/store/orders/{order_id}": {"parameters": [ORDER_ID], "get": _op("Get an order", ORDER)},
        "/store/orders/{order_id}/edits": {
            "parameters": [ORDER_ID],
            "post": _with_pending_edit(_op("Replace the order's items during the grace period", ORDER, body="OrderEdit",
                                           extra={"402": "Authorization increase declined",
                                                  "409": "Grace period expired", "503": "Stripe unavailable"})),
        },
        "/store/orders/{order_id}/edits/{edit_id}/complete": {
            "parameters": [ORDER_ID, EDIT_ID],
            "post": _op("Apply a pending edit once its PaymentIntent is authorized", ORDER,
                        extra={"409": "Payment not authorized, grace period expired, or the edit was superseded",
                               "503": "Stripe unavailable"}),
        },
        "/store/orders/{order_id}/cancel": {
            "parameters": [ORDER_ID],
            "post": _op("Cancel the order during the grace period", ORDER,
                        extra={"409": "Grace period expired", "503": "Stripe unavailable"}),
        },
    },
    "components": {"schemas": SCHEMAS},
}


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI 3 document of the storefront API."""
    return jsonify(DOCUMENT)
