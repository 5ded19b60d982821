"""Edits, cancel and refunds, during the grace period and after it."""

import threading
import time

import pytest

from tests.engine_helpers import captures_at_stripe
from tests.helpers import paid_cart, place_order, product_ids


def _edit(client, order_id, items):
    return client.post(f"/store/orders/{order_id}/edits", json={"items": items})


def _payment(db_session):
    from app.models import Payment

    db_session.expire_all()
    return db_session.query(Payment).one()


def _ledger_ops(sim_control, op):
    return [o for o in sim_control.ledger()["operations"] if o["op"] == op]


def test_lower_total_edit_changes_the_order_and_the_capture_takes_less(app, client, sim_control, settings, db_session):
    from app.models import OrderChange
    from app.payments.capture import capture_order

    settings(grace_period_seconds=2)
    order = place_order(client, sim_control, quantities=(2, 1))
    first = order["items"][0]
    response = _edit(client, order["id"], [{"product_id": first["product_id"], "quantity": 1}])
    assert response.status_code == 200, response.get_json()
    edited = response.get_json()["order"]
    assert edited["total"] == first["unit_amount"] and edited["authorized_amount"] == order["total"]
    assert [i["quantity"] for i in edited["items"]] == [1]
    change = db_session.query(OrderChange).one()
    assert (change.version, change.total_before, change.total_after) == (2, order["total"], edited["total"])
    time.sleep(2.1)
    with app.app_context():
        capture_order(order["id"], trigger="expiry")
    [capture] = captures_at_stripe(sim_control)
    assert capture["amount"] == edited["total"]


def test_higher_total_edit_increments_the_authorization(client, sim_control):
    order = place_order(client, sim_control, quantities=(1,))
    first = order["items"][0]
    response = _edit(client, order["id"], [{"product_id": first["product_id"], "quantity": 3}])
    assert response.status_code == 200, response.get_json()
    edited = response.get_json()["order"]
    assert edited["total"] == 3 * first["unit_amount"] == edited["authorized_amount"]
    [increment] = _ledger_ops(sim_control, "increment")
    assert increment["amount"] == edited["total"] and increment["idempotency_key"] == f"edit:{order['id']}:2:{edited['total']}"


def test_declined_increment_leaves_the_order_unchanged(client, sim_control, db_session):
    # (An increment Stripe cannot make is a pending edit: tests/test_order_increases.py.)
    order = place_order(client, sim_control, quantities=(1,))
    sim_control.increment_behavior(_payment(db_session).stripe_payment_intent_id, "decline")
    response = _edit(client, order["id"], [{"product_id": order["items"][0]["product_id"], "quantity": 5}])
    assert response.status_code == 402 and response.get_json()["error"]["code"] == "authorization_increase_declined"
    assert client.get(f"/store/orders/{order['id']}").get_json()["order"] == order


def test_edit_exactly_at_the_deadline_is_refused(client, sim_control, settings, db_session):
    from app.models import Order

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    deadline = db_session.get(Order, order["id"]).grace_period_ends_at
    while time.time() < deadline.timestamp():
        time.sleep(0.01)
    response = _edit(client, order["id"], [{"product_id": order["items"][0]["product_id"], "quantity": 1}])
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "grace_period_expired"
    assert client.get(f"/store/orders/{order['id']}").get_json()["order"]["total"] == order["total"]


@pytest.mark.parametrize(
    "items, status",
    [([], 422), ([{"product_id": "prod_nope", "quantity": 1}], 404), ([{"product_id": "x", "quantity": 1}], 422),
     ("not a list", 422), ([{"product_id": "prod_a", "quantity": 0}], 422)],
)
def test_bad_edits_are_refused_and_change_nothing(client, sim_control, items, status):
    order = place_order(client, sim_control)
    response = client.post(f"/store/orders/{order['id']}/edits", json={"items": items})
    assert response.status_code == status
    assert client.get(f"/store/orders/{order['id']}").get_json()["order"] == order


def test_edit_with_foreign_currency_or_duplicate_product_is_refused(client, sim_control):
    order = place_order(client, sim_control)
    yen = product_ids(client, "jpy")[0]
    foreign = _edit(client, order["id"], [{"product_id": yen, "quantity": 1}])
    assert foreign.status_code == 422 and foreign.get_json()["error"]["code"] == "currency_mismatch"
    pid = order["items"][0]["product_id"]
    duplicate = _edit(client, order["id"], [{"product_id": pid, "quantity": 1}, {"product_id": pid, "quantity": 2}])
    assert duplicate.status_code == 422


def test_cancel_voids_the_authorization_and_twice_is_harmless(app, client, sim_control, db_session):
    order = place_order(client, sim_control)
    first = client.post(f"/store/orders/{order['id']}/cancel")
    assert first.status_code == 200
    body = first.get_json()["order"]
    assert body["status"] == "canceled" and body["payment_status"] == "canceled"
    assert body["grace_period"]["editable"] is False
    second = client.post(f"/store/orders/{order['id']}/cancel")
    assert second.status_code == 200 and second.get_json()["order"]["status"] == "canceled"
    assert len(_ledger_ops(sim_control, "cancel")) == 1
    assert app.extensions["redis"].exists(f"capture_intent:{order['id']}") == 0
    edit = _edit(client, order["id"], [{"product_id": order["items"][0]["product_id"], "quantity": 1}])
    assert edit.status_code == 409


def test_cancel_after_the_deadline_is_refused(client, sim_control, settings):
    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    time.sleep(1.1)
    response = client.post(f"/store/orders/{order['id']}/cancel")
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "grace_period_expired"
    assert _ledger_ops(sim_control, "cancel") == []


def _captured_order(app, client, sim_control, settings, currency="usd", quantities=(2, 1)):
    from app.payments.capture import capture_order

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control, currency=currency, quantities=quantities)
    time.sleep(1.1)
    with app.app_context():
        capture_order(order["id"], trigger="expiry")
    return client.get(f"/store/orders/{order['id']}").get_json()["order"]


def test_partial_and_full_refunds_never_exceed_what_was_captured(app, client, sim_control, settings, db_session):
    from app.payments.errors import StateConflict as Conflict
    from app.models import OrderTransaction, Refund
    from app.payments.refunds import refund_order

    order = _captured_order(app, client, sim_control, settings)
    total = order["captured_amount"]
    with app.app_context():
        refund_order(order["id"], 1000, actor="staff:ops@example.com")
        with pytest.raises(Conflict) as too_much:
            refund_order(order["id"], total, actor="staff:ops@example.com")
        assert too_much.value.code == "refund_exceeds_captured"
        refund_order(order["id"], None, actor="staff:ops@example.com")  # the rest
    body = client.get(f"/store/orders/{order['id']}").get_json()["order"]
    assert body["refunded_amount"] == total and body["payment_status"] == "refunded"
    assert sorted(r.amount for r in db_session.query(Refund)) == sorted([1000, total - 1000])
    assert sum(t.amount for t in db_session.query(OrderTransaction)) == 0
    assert sum(op["amount"] for op in _ledger_ops(sim_control, "refund")) == total


def test_charge_refunded_webhook_for_our_refund_adds_no_second_row(app, client, sim_control, settings, db_session):
    from app.models import Payment, Refund
    from app.payments.refunds import refund_order
    from tests.helpers import deliver_and_process, event_for

    order = _captured_order(app, client, sim_control, settings)
    with app.app_context():
        refund_order(order["id"], 700, actor="staff:ops@example.com")
    payment = db_session.query(Payment).one()
    event = event_for("charge.refunded", payment.stripe_charge_id or "ch_x",
                      obj={"payment_intent": payment.stripe_payment_intent_id})
    assert deliver_and_process(client, event).status_code == 200
    assert db_session.query(Refund).count() == 1
    assert client.get(f"/store/orders/{order['id']}").get_json()["order"]["refunded_amount"] == 700


def test_refund_before_capture_is_refused(app, client, sim_control):
    from app.payments.errors import StateConflict as Conflict
    from app.payments.refunds import refund_order

    order = place_order(client, sim_control)
    with app.app_context(), pytest.raises(Conflict):
        refund_order(order["id"], 100, actor="staff:ops@example.com")


@pytest.mark.parametrize("currency, quantities", [("jpy", (3,)), ("kwd", (2,))])
def test_zero_and_three_decimal_currencies_are_exact_end_to_end(app, client, sim_control, settings, currency, quantities):
    from app.payments.refunds import refund_order

    order = _captured_order(app, client, sim_control, settings, currency=currency, quantities=quantities)
    assert order["captured_amount"] == order["total"]
    [capture] = captures_at_stripe(sim_control)
    assert capture["amount"] == order["total"]
    with app.app_context():
        refund_order(order["id"], 1, actor="staff:ops@example.com")  # one yen, one fils
    body = client.get(f"/store/orders/{order['id']}").get_json()["order"]
    assert body["refunded_amount"] == 1 and body["currency"] == currency


def test_edits_and_capture_never_interleave(app, client, sim_control, settings, db_session):
    """Editors hammer the order across its deadline while the capture runs: it takes the last committed total."""
    from app.models import Capture, Order, OrderChange
    from app.payments.capture import capture_order

    settings(grace_period_seconds=2)
    order = place_order(client, sim_control, quantities=(1,))
    product = order["items"][0]["product_id"]
    deadline = db_session.get(Order, order["id"]).grace_period_ends_at.timestamp()
    stop = threading.Event()
    accepted, refused = [], []

    def editor(offset):
        quantity = 1 + offset
        with app.test_client() as own:
            while not stop.is_set():
                quantity = quantity % 3 + 1  # totals go up (increments) and down
                response = own.post(f"/store/orders/{order['id']}/edits",
                                    json={"items": [{"product_id": product, "quantity": quantity}]})
                # 202: Stripe's 10 increment attempts are used up, the increase waits for a second payment
                # (never paid here, so it lapses at the deadline); the order is unchanged meanwhile.
                (accepted if response.status_code == 200 else refused).append(response.status_code)

    def capturer():
        while time.time() < deadline:
            time.sleep(0.005)
        with app.app_context():
            while capture_order(order["id"], trigger="expiry") not in ("captured", "already_captured"):
                time.sleep(0.01)

    editors = [threading.Thread(target=editor, args=(i,)) for i in range(3)]
    for thread in editors:
        thread.start()
    capture_thread = threading.Thread(target=capturer)
    capture_thread.start()
    capture_thread.join(timeout=30)
    time.sleep(0.2)
    stop.set()
    for thread in editors:
        thread.join(timeout=30)

    db_session.expire_all()
    final = db_session.get(Order, order["id"])
    capture = db_session.query(Capture).one()
    changes = db_session.query(OrderChange).order_by(OrderChange.version).all()
    assert accepted and refused and set(refused) <= {409, 202}
    assert len(changes) == len(accepted) and final.version == 1 + len(accepted)
    assert capture.amount == final.total == changes[-1].total_after
    [at_stripe] = captures_at_stripe(sim_control)
    assert at_stripe["amount"] == final.total


def test_edit_then_cancel_then_complete_still_shows_one_order(client, sim_control):
    cart, _ = paid_cart(client, sim_control)
    order = client.post(f"/store/carts/{cart['id']}/complete").get_json()["order"]
    client.post(f"/store/orders/{order['id']}/cancel")
    again = client.post(f"/store/carts/{cart['id']}/complete").get_json()["order"]
    assert again["id"] == order["id"] and again["status"] == "canceled"


def test_a_canceled_or_captured_order_has_no_grace_period_left(app, client, sim_control):
    from app.payments.capture import capture_now

    canceled = place_order(client, sim_control)
    body = client.post(f"/store/orders/{canceled['id']}/cancel").get_json()["order"]
    assert body["grace_period"] == {**body["grace_period"], "remaining_seconds": 0, "editable": False}
    captured = place_order(client, sim_control)
    with app.app_context():
        capture_now(captured["id"], actor="staff:ops@example.com")
    body = client.get(f"/store/orders/{captured['id']}").get_json()["order"]
    assert body["grace_period"]["remaining_seconds"] == 0 and body["grace_period"]["editable"] is False
