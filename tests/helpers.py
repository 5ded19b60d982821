"""Storefront steps shared by the tests, written as a customer's client would call the API."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient


def product_ids(client: FlaskClient, currency: str = "usd") -> list[str]:
    products = client.get("/store/products").get_json()["products"]
    return [p["id"] for p in products if p["currency"] == currency]


def new_cart(client: FlaskClient, currency: str = "usd", email: str = "ada@example.com") -> dict[str, Any]:
    response = client.post("/store/carts", json={"email": email, "currency": currency})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["cart"]


def add_item(client: FlaskClient, cart_id: str, product_id: str, quantity: int = 1) -> dict[str, Any]:
    response = client.post(f"/store/carts/{cart_id}/line-items", json={"product_id": product_id, "quantity": quantity})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["cart"]


def filled_cart(client: FlaskClient, currency: str = "usd", quantities: tuple[int, ...] = (2, 1)) -> dict[str, Any]:
    cart = new_cart(client, currency)
    for product_id, quantity in zip(product_ids(client, currency), quantities):
        cart = add_item(client, cart["id"], product_id, quantity)
    return cart


def payment_intent(client: FlaskClient, cart_id: str) -> dict[str, Any]:
    response = client.post(f"/store/carts/{cart_id}/payment-intent")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["payment_intent"]


def paid_cart(client: FlaskClient, sim_control, currency: str = "usd", quantities=(2, 1), card: str = "pm_card_visa"):
    """A cart whose PaymentIntent the customer has confirmed at Stripe; returns (cart, intent)."""
    cart = filled_cart(client, currency, quantities)
    intent = payment_intent(client, cart["id"])
    sim_control.confirm(intent["id"], payment_method=card)
    return cart, intent


def place_order(client: FlaskClient, sim_control, currency: str = "usd", quantities=(2, 1)) -> dict[str, Any]:
    """Checkout end to end through /complete; returns the Order JSON."""
    cart, _ = paid_cart(client, sim_control, currency, quantities)
    response = client.post(f"/store/carts/{cart['id']}/complete")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["order"]


def stripe_client(sim_url: str):
    """The real stripe library pointed at the simulator, for what a store does in Stripe's dashboard."""
    import stripe

    return stripe.StripeClient("sk_test_dashboard", base_addresses={"api": sim_url})


def signed_delivery(client: FlaskClient, event: dict, *, secret: str | None = None, timestamp: int | None = None,
                    headers: dict | None = None):
    """POST an event to the webhook endpoint, signed the way Stripe signs."""
    import json

    from stripe_sim.signing import sign_payload
    from tests.conftest import WEBHOOK_SECRET

    payload = json.dumps(event)
    signature = sign_payload(payload, secret or WEBHOOK_SECRET, timestamp)
    return client.post(
        "/webhooks/stripe",
        data=payload,
        content_type="application/json",
        headers={"Stripe-Signature": signature, **(headers or {})},
    )


def deliver_and_process(client: FlaskClient, event: dict, **kwargs):
    """Deliver the event signed (`signed_delivery`), then run its queued processing job, as a worker would.

    The endpoint only stores the event and queues its job; the effects come with the worker."""
    from tests.engine_helpers import process_queued_events

    response = signed_delivery(client, event, **kwargs)
    process_queued_events(client.application)
    return response


def event_for(event_type: str, object_id: str, event_id: str | None = None, obj: dict | None = None) -> dict:
    """A Stripe-shaped event about one object (handlers retrieve its current state anyway)."""
    import secrets

    return {
        "id": event_id or f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "type": event_type,
        "created": 1_700_000_000,
        "livemode": False,
        "data": {"object": {"id": object_id, **(obj or {})}},
    }


def stripe_intent(sim_url: str, payment_intent_id: str) -> dict:
    """The PaymentIntent as Stripe reports it."""
    return stripe_client(sim_url).v1.payment_intents.retrieve(payment_intent_id).to_dict()
