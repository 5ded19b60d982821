"""PaymentIntent per cart with a stable key, and cart completion into exactly one order."""

import hashlib
import threading

import pytest

from tests.helpers import (
    add_item,
    filled_cart,
    new_cart,
    paid_cart,
    payment_intent,
    place_order,
    product_ids,
    stripe_client,
    stripe_intent,
)


def test_payment_intent_is_manual_capture_with_cart_metadata(client, sim):
    cart = filled_cart(client)
    intent = payment_intent(client, cart["id"])
    assert intent["amount"] == cart["total"] and intent["currency"] == "usd"
    assert intent["status"] == "requires_payment_method" and intent["client_secret"]
    stored = stripe_intent(sim.url, intent["id"])
    assert stored["capture_method"] == "manual"
    # Says who made it: on a shared Stripe account, other integrations' PaymentIntents lack this.
    assert stored["metadata"] == {"cart_id": cart["id"], "created_by": "delayed-capture-engine"}
    assert stored["payment_method_types"] == ["card"]
    assert stored["payment_method_options"]["card"]["request_incremental_authorization"] == "if_available"


def test_payment_intent_key_is_sha256_of_cart_amount_currency(client, sim):
    cart = filled_cart(client)
    intent = payment_intent(client, cart["id"])
    expected = hashlib.sha256(f"{cart['id']}:{cart['total']}:usd".encode()).hexdigest()
    # Stripe answers a repeat of the same key and parameters with the original PaymentIntent.
    replay = stripe_client(sim.url).v1.payment_intents.create(
        params={
            "amount": cart["total"],
            "currency": "usd",
            "capture_method": "manual",
            "metadata": {"cart_id": cart["id"], "created_by": "delayed-capture-engine"},
            "payment_method_types": ["card"],
            "payment_method_options": {"card": {"request_incremental_authorization": "if_available"}},
        },
        options={"idempotency_key": expected},
    )
    assert replay.id == intent["id"]


def test_unchanged_cart_gets_the_same_payment_intent(client):
    cart = filled_cart(client)
    assert payment_intent(client, cart["id"])["id"] == payment_intent(client, cart["id"])["id"]


def test_changed_total_gets_a_new_intent_and_the_stale_one_is_canceled(client, sim):
    cart = filled_cart(client)
    first = payment_intent(client, cart["id"])
    add_item(client, cart["id"], product_ids(client)[0], 1)
    second = payment_intent(client, cart["id"])
    assert second["id"] != first["id"] and second["amount"] > first["amount"]
    assert stripe_intent(sim.url, first["id"])["status"] == "canceled"
    assert client.get(f"/store/carts/{cart['id']}").get_json()["cart"]["payment_intent_id"] == second["id"]


def test_a_canceled_intent_does_not_lock_the_customer_out(client, sim):
    cart = filled_cart(client)
    first = payment_intent(client, cart["id"])
    stripe_client(sim.url).v1.payment_intents.cancel(first["id"])
    second = payment_intent(client, cart["id"])
    assert second["id"] != first["id"] and second["status"] == "requires_payment_method"
    # and it stays stable afterwards
    assert payment_intent(client, cart["id"])["id"] == second["id"]


def test_empty_cart_cannot_pay(client):
    cart = new_cart(client)
    response = client.post(f"/store/carts/{cart['id']}/payment-intent")
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "cart_empty"


def test_complete_before_authorization_is_409(client):
    cart = filled_cart(client)
    no_intent = client.post(f"/store/carts/{cart['id']}/complete")
    assert no_intent.status_code == 409 and no_intent.get_json()["error"]["code"] == "payment_not_authorized"
    payment_intent(client, cart["id"])
    unpaid = client.post(f"/store/carts/{cart['id']}/complete")
    assert unpaid.status_code == 409 and unpaid.get_json()["error"]["code"] == "payment_not_authorized"


def test_declined_card_makes_complete_402_with_the_reason(client, sim_control):
    cart, _ = paid_cart(client, sim_control, card="pm_card_chargeDeclinedInsufficientFunds")
    response = client.post(f"/store/carts/{cart['id']}/complete")
    assert response.status_code == 402
    error = response.get_json()["error"]
    assert error["code"] == "payment_declined" and "insufficient_funds" in error["message"]


def test_complete_creates_an_authorized_order_with_its_payment_records(client, sim_control, db_session):
    from app.models import Payment, PaymentCollection

    order = place_order(client, sim_control)
    assert order["id"].startswith("order_") and order["status"] == "pending"
    assert order["payment_status"] == "authorized"
    assert order["authorized_amount"] == order["total"] and order["captured_amount"] == 0
    assert order["capture"]["status"] == "scheduled"
    assert order["grace_period"]["editable"] is True
    assert 3590 <= order["grace_period"]["remaining_seconds"] <= 3600
    payment = db_session.query(Payment).one()
    assert payment.order_id == order["id"] and payment.status == "authorized"
    assert db_session.query(PaymentCollection).one().order_id == order["id"]
    assert client.get(f"/store/orders/{order['id']}").get_json()["order"] == order


def test_complete_twice_returns_the_same_order(client, sim_control):
    cart, _ = paid_cart(client, sim_control)
    first = client.post(f"/store/carts/{cart['id']}/complete").get_json()["order"]
    second = client.post(f"/store/carts/{cart['id']}/complete").get_json()["order"]
    assert first["id"] == second["id"] and first["display_id"] == second["display_id"]


def test_an_order_placed_by_the_other_path_between_two_lookups_is_returned_not_voided(
        app, client, sim, sim_control, monkeypatch):
    # The webhook looks for an order of its PaymentIntent, finds none, and before it looks for an
    # order of the cart, /complete commits that very order: the webhook must find it, not void it.
    from app.payments import placement
    from app.payments.stripe_gateway import get_gateway

    cart, intent = paid_cart(client, sim_control)
    order = client.post(f"/store/carts/{cart['id']}/complete").get_json()["order"]
    lookups = []
    real_lookup = placement.order_for_payment_intent

    def first_lookup_before_the_commit(payment_intent_id):
        lookups.append(payment_intent_id)
        return None if len(lookups) == 1 else real_lookup(payment_intent_id)

    monkeypatch.setattr(placement, "order_for_payment_intent", first_lookup_before_the_commit)
    with app.app_context():
        placed = placement.place_order(get_gateway().retrieve_payment_intent(intent["id"]))
        assert placed.id == order["id"]
    assert stripe_intent(sim.url, intent["id"])["status"] == "requires_capture"
    assert client.get(f"/store/orders/{order['id']}").get_json()["order"]["payment_status"] == "authorized"


def test_completed_cart_can_no_longer_change(client, sim_control):
    cart, _ = paid_cart(client, sim_control)
    client.post(f"/store/carts/{cart['id']}/complete")
    response = client.post(
        f"/store/carts/{cart['id']}/line-items", json={"product_id": product_ids(client)[0], "quantity": 1}
    )
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "cart_completed"
    assert client.get(f"/store/carts/{cart['id']}").get_json()["cart"]["total"] == cart["total"]


def test_order_placed_signal_fires_once_after_commit(app, client, sim_control):
    from app.signals import order_placed

    seen = []

    def record(sender, order_id, trace_id):
        from app.extensions import db
        from app.models import Order

        # Emitted after the commit: a fresh session can already read the order.
        with app.app_context():
            seen.append(db.session.get(Order, order_id) is not None)

    order_placed.connect(record)
    try:
        cart, _ = paid_cart(client, sim_control)
        client.post(f"/store/carts/{cart['id']}/complete")
        client.post(f"/store/carts/{cart['id']}/complete")
    finally:
        order_placed.disconnect(record)
    assert seen == [True]


def test_zero_and_three_decimal_currencies_keep_exact_amounts(client, sim_control):
    yen = place_order(client, sim_control, currency="jpy", quantities=(3,))
    assert yen["total"] == 3 * 3200 and yen["authorized_amount"] == 9600
    dinar = place_order(client, sim_control, currency="kwd", quantities=(2,))
    assert dinar["total"] == 9500 and dinar["currency"] == "kwd"


def test_unknown_order_is_404(client):
    response = client.get("/store/orders/order_missing")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_concurrent_completes_of_one_cart_give_one_order(app, client, sim_control, db_session):
    from app.models import Order, Payment

    cart, _ = paid_cart(client, sim_control)
    results, barrier = [], threading.Barrier(6)

    def complete():
        with app.test_client() as own_client:
            barrier.wait()
            response = own_client.post(f"/store/carts/{cart['id']}/complete")
            results.append((response.status_code, response.get_json()["order"]["id"]))

    threads = [threading.Thread(target=complete) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {status for status, _ in results} == {200}
    assert len({order_id for _, order_id in results}) == 1
    assert db_session.query(Order).count() == 1 and db_session.query(Payment).count() == 1


@pytest.mark.parametrize("path", ["payment-intent", "complete"])
def test_unknown_cart_is_404_for_payment_routes(client, path):
    response = client.post(f"/store/carts/cart_missing/{path}")
    assert response.status_code == 404
