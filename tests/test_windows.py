"""The moments between two things (issue W1–W9, docs/reliability.md): each window forced open.

Each test pauses one operation at its dangerous point (a hook or a barrier, never a sleep), runs
the other, releases, and asserts what a customer or the store would notice. Each failed on the
code before the fix it names.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from tests.engine_helpers import captures_at_stripe, queued_capture_ids
from tests.helpers import (
    add_item,
    deliver_and_process,
    event_for,
    filled_cart,
    paid_cart,
    place_order,
    product_ids,
    stripe_intent,
)


def _order(client, order_id: str) -> dict:
    return client.get(f"/store/orders/{order_id}").get_json()["order"]


def _move_deadline(app, order_id: str, seconds_from_now: float) -> None:
    """Time passes (or is set back): the order's deadline becomes now + `seconds_from_now`."""
    from app.extensions import db
    from app.models import Order, Payment
    from app.models.base import utcnow

    with app.app_context():
        when = utcnow() + timedelta(seconds=seconds_from_now)
        db.session.query(Payment).filter_by(order_id=order_id).update({"capture_due_at": when})
        db.session.query(Order).filter_by(id=order_id).update({"grace_period_ends_at": when})
        db.session.commit()


def _payment_row(app, order_id: str):
    from app.extensions import db

    with app.app_context():
        row = db.session.execute(
            text("SELECT status, amount, captured_amount, capture_attempts FROM payments WHERE order_id = :o"),
            {"o": order_id},
        ).one()
        db.session.remove()
    return row


# --- W1, W2: a cart edited while it becomes an order ------------------------------------------------


def test_w1_a_line_added_while_the_cart_becomes_an_order_never_grows_the_order_past_the_authorization(
        app, client, sim, sim_control, monkeypatch):
    from app.payments import placement
    from app.payments.errors import PaymentNotPlaceable
    from app.payments.stripe_gateway import get_gateway

    cart, intent = paid_cart(client, sim_control)
    extra = product_ids(client)[2]
    added = {}
    real_create = placement._create_order

    def add_a_line_first(cart_id, payment_intent):
        # Placement has read the cart and the authorization; the customer's other tab adds a line.
        added["response"] = client.post(f"/store/carts/{cart['id']}/line-items", json={"product_id": extra, "quantity": 1})
        return real_create(cart_id, payment_intent)

    monkeypatch.setattr(placement, "_create_order", add_a_line_first)
    with app.app_context():
        try:
            placement.place_order(get_gateway().retrieve_payment_intent(intent["id"]))
        except PaymentNotPlaceable:
            pass

    order = client.post(f"/store/carts/{cart['id']}/complete")
    if added["response"].status_code == 200:
        # The line is in the cart: no order may be placed with an authorization that does not cover it.
        assert order.status_code == 409
        assert stripe_intent(sim.url, intent["id"])["status"] == "canceled"
    else:
        assert added["response"].get_json()["error"]["code"] == "cart_completed"
        body = order.get_json()["order"]
        assert body["total"] <= body["authorized_amount"]


def test_w2_a_line_whose_add_is_in_flight_when_the_order_is_placed_is_in_the_order_or_refused(
        app, client, sim_control, monkeypatch):
    from app import carts
    from app.payments import placement
    from app.payments.errors import PaymentNotPlaceable
    from app.payments.stripe_gateway import get_gateway

    cart, intent = paid_cart(client, sim_control)
    extra = product_ids(client)[2]
    paused, release = threading.Event(), threading.Event()
    real_check = carts._check_total

    def pause_before_commit(cart_obj):
        real_check(cart_obj)
        paused.set()  # the add has checked the cart is open and written its line, not committed yet
        release.wait(10)

    monkeypatch.setattr(carts, "_check_total", pause_before_commit)
    result = {}

    def add():
        result["add"] = app.test_client().post(
            f"/store/carts/{cart['id']}/line-items", json={"product_id": extra, "quantity": 1})

    def place():
        with app.app_context():
            try:
                result["order"] = placement.place_order(get_gateway().retrieve_payment_intent(intent["id"])).id
            except PaymentNotPlaceable:
                result["order"] = None

    adder = threading.Thread(target=add)
    adder.start()
    assert paused.wait(10)
    placer = threading.Thread(target=place)
    placer.start()
    placer.join(timeout=3)  # the placement runs to completion, or waits for the cart the add holds
    release.set()
    adder.join(10)
    placer.join(30)

    if result["add"].status_code == 200:
        if result["order"] is not None:
            body = _order(client, result["order"])
            assert extra in [item["product_id"] for item in body["items"]]
    else:
        assert result["add"].get_json()["error"]["code"] == "cart_completed"


# --- W3: the cart path never voids an authorization ------------------------------------------------------


def test_w3_a_new_payment_intent_for_a_changed_cart_never_voids_the_authorization_an_order_was_placed_with(
        app, client, sim, sim_control, monkeypatch):
    from app.payments import payment_intents

    products = product_ids(client)
    cart = filled_cart(client)
    cart = add_item(client, cart["id"], products[2], 1)
    first = client.post(f"/store/carts/{cart['id']}/payment-intent").get_json()["payment_intent"]
    line = next(item for item in cart["items"] if item["product_id"] == products[2])
    client.delete(f"/store/carts/{cart['id']}/line-items/{line['id']}")  # the total goes down
    sim_control.confirm(first["id"])  # the customer pays the older, larger amount anyway
    real_cancel_stale = payment_intents._cancel_stale

    def webhook_places_the_order_first(intent_id):
        # /payment-intent decided the old PaymentIntent is stale; the webhook places its order now.
        assert deliver_and_process(client, event_for("payment_intent.amount_capturable_updated", first["id"])).status_code == 200
        return real_cancel_stale(intent_id)

    monkeypatch.setattr(payment_intents, "_cancel_stale", webhook_places_the_order_first)
    response = client.post(f"/store/carts/{cart['id']}/payment-intent")

    assert response.status_code == 409 and response.get_json()["error"]["code"] == "cart_completed"
    assert stripe_intent(sim.url, first["id"])["status"] == "requires_capture"
    order = client.post(f"/store/carts/{cart['id']}/complete").get_json()["order"]
    assert order["payment_status"] == "authorized" and order["status"] == "pending"


# --- W4, W5: an edit whose Stripe call ends after the deadline ---------------------------------------------


def _edit_up(client, order: dict) -> dict:
    products = product_ids(client)
    items = [{"product_id": i["product_id"], "quantity": i["quantity"]} for i in order["items"]]
    items.append({"product_id": products[2], "quantity": 1})
    return client.post(f"/store/orders/{order['id']}/edits", json={"items": items})


def test_w4_an_edit_whose_increment_answers_after_the_deadline_is_not_applied(app, client, sim_control, monkeypatch):
    from app.payments.stripe_gateway import StripeGateway

    order = place_order(client, sim_control)
    real_increment = StripeGateway.increment_authorization

    def deadline_passes_during_the_call(self, *args, **kwargs):
        result = real_increment(self, *args, **kwargs)
        _move_deadline(app, order["id"], -1)
        return result

    monkeypatch.setattr(StripeGateway, "increment_authorization", deadline_passes_during_the_call)
    response = _edit_up(client, order)

    assert response.status_code == 409 and response.get_json()["error"]["code"] == "grace_period_expired"
    assert _order(client, order["id"])["total"] == order["total"]


def test_w5_a_lost_capture_answer_then_a_late_edit_never_leaves_an_uncollected_total_unflagged(
        app, client, sim_control, monkeypatch):
    from app.payments.capture import CaptureRetryLater, capture_order
    from app.payments.provider_errors import ProviderOutcomeUnknown
    from app.payments.stripe_gateway import StripeGateway

    order = place_order(client, sim_control)
    real_increment, real_capture = StripeGateway.increment_authorization, StripeGateway.capture_payment_intent
    real_retrieve = StripeGateway.retrieve_payment_intent

    def answer_lost(self, *args, **kwargs):
        real_capture(self, *args, **kwargs)  # Stripe captures the committed total...
        raise ProviderOutcomeUnknown("read timed out")  # ...and the answer never arrives

    def retrieve_fails(self, *args, **kwargs):
        raise ProviderOutcomeUnknown("Stripe is unavailable")

    def capture_runs_while_the_edit_waits_for_stripe(self, *args, **kwargs):
        result = real_increment(self, *args, **kwargs)
        _move_deadline(app, order["id"], -1)
        with monkeypatch.context() as faults:
            faults.setattr(StripeGateway, "capture_payment_intent", answer_lost)
            faults.setattr(StripeGateway, "retrieve_payment_intent", retrieve_fails)
            with app.app_context(), pytest.raises(CaptureRetryLater):
                capture_order(order["id"], trigger="expiry")
        return result

    monkeypatch.setattr(StripeGateway, "increment_authorization", capture_runs_while_the_edit_waits_for_stripe)
    edit = _edit_up(client, order)
    monkeypatch.setattr(StripeGateway, "increment_authorization", real_increment)
    assert StripeGateway.retrieve_payment_intent is real_retrieve
    with app.app_context():
        capture_order(order["id"], trigger="retry")  # RQ's retry: the same key, Stripe's first answer

    body = _order(client, order["id"])
    assert len(captures_at_stripe(sim_control)) == 1
    if body["captured_amount"] < body["total"]:
        assert body["payment_status"] == "partially_captured" and body["capture"]["status"] == "failed"
    else:
        assert edit.status_code == 409 and body["captured_amount"] == body["total"] == order["total"]
        assert body["payment_status"] == "captured"


def test_a_capture_for_less_than_the_total_is_flagged_with_the_difference(app, client, sim, sim_control):
    from app.extensions import db
    from app.models import Payment
    from tests.helpers import stripe_client

    order = place_order(client, sim_control)
    with app.app_context():
        payment_intent_id = db.session.query(Payment).one().stripe_payment_intent_id
        db.session.remove()
    stripe_client(sim.url).v1.payment_intents.capture(payment_intent_id, params={"amount_to_capture": 500})
    assert deliver_and_process(client, event_for("payment_intent.succeeded", payment_intent_id)).status_code == 200

    body = _order(client, order["id"])
    assert body["payment_status"] == "partially_captured" and body["capture"]["status"] == "failed"
    assert f"{order['total'] - 500} not collected" in body["capture"]["last_error"]
    page = _staff_client(app).get("/admin/orders?show=attention").get_data(as_text=True)
    assert f'data-order-id="{order["id"]}"' in page


def _staff_client(app):
    from app.cli import upsert_staff
    from tests.test_dashboard import STAFF_EMAIL, STAFF_PASSWORD, login

    with app.app_context():
        upsert_staff(STAFF_EMAIL, STAFF_PASSWORD)
    staff = app.test_client()
    assert login(staff).status_code == 302
    return staff


@pytest.fixture
def redis(app):
    return app.extensions["redis"]


# --- W6: a claim has an owner --------------------------------------------------------------------------------


def test_w6_a_worker_that_stalled_past_its_lease_cannot_undo_the_claim_of_the_job_that_replaced_it(
        app, client, sim_control, monkeypatch):
    from app.extensions import db
    from app.payments.capture import CaptureRetryLater, capture_order
    from app.payments.provider_errors import ProviderOutcomeUnknown
    from app.payments.stripe_gateway import StripeGateway
    from app.payments.sweep import recover_stuck_captures

    order = place_order(client, sim_control)
    _move_deadline(app, order["id"], -1)

    def stall_past_the_lease(self, *args, **kwargs):
        with app.app_context():
            # The worker stalls; its claim ages; the sweep releases it; a second job claims the payment
            # and is now talking to Stripe.
            db.session.execute(text("UPDATE payments SET capture_claimed_at = capture_claimed_at - interval '1 hour'")
                               if db.engine.dialect.name == "postgresql" else
                               text("UPDATE payments SET capture_claimed_at = datetime(capture_claimed_at, '-1 hour')"))
            db.session.commit()
            from app.models.base import utcnow
            assert recover_stuck_captures(utcnow()) == 1
            db.session.execute(text("UPDATE payments SET status = 'capturing', capture_attempts = capture_attempts + 1,"
                                    " capture_claimed_at = :now"), {"now": utcnow().replace(tzinfo=None)
                                                                    if db.engine.dialect.name == "sqlite" else utcnow()})
            db.session.commit()
        raise ProviderOutcomeUnknown("read timed out")  # the stalled worker wakes to a lost answer

    def retrieve_fails(self, *args, **kwargs):
        raise ProviderOutcomeUnknown("Stripe is unavailable")

    monkeypatch.setattr(StripeGateway, "capture_payment_intent", stall_past_the_lease)
    monkeypatch.setattr(StripeGateway, "retrieve_payment_intent", retrieve_fails)
    with app.app_context(), pytest.raises(CaptureRetryLater):
        capture_order(order["id"], trigger="expiry")

    row = _payment_row(app, order["id"])
    assert row.status == "capturing" and row.capture_attempts == 2  # the second job's claim stands


# --- W7: a failed cancel restores what was there; a late re-arm captures at once -----------------------------


def test_w7_a_staff_cancel_that_fails_after_the_deadline_leaves_a_failed_capture_failed(app, client, sim_control):
    from app.payments.cancellation import cancel_order
    from app.payments.capture import CaptureOutcome, capture_order
    from app.payments.errors import ProviderUnavailable
    from app.payments.sweep import sweep

    order = place_order(client, sim_control)
    _move_deadline(app, order["id"], -3600 * 2)  # long overdue, so the fallback sweep would take it
    sim_control.set_faults(script=[{"fault": "card_declined", "method": "POST", "path_contains": "/capture", "times": 1}])
    with app.app_context():
        assert capture_order(order["id"], trigger="expiry") == CaptureOutcome.FAILED
    sim_control.set_faults(script=[{"fault": "500", "method": "POST", "path_contains": "/cancel", "times": 10}])
    with app.app_context(), pytest.raises(ProviderUnavailable):
        cancel_order(order["id"], actor="staff", after_deadline=True)
    sim_control.clear_faults()

    assert _payment_row(app, order["id"]).status == "capture_failed"
    with app.app_context():
        sweep()
    assert queued_capture_ids(app) == []  # staff stopped it: nothing captures it behind their back


def test_w7_an_early_trigger_whose_deadline_passes_before_the_re_arm_captures_at_once(
        app, client, sim_control, monkeypatch, redis):
    from app.payments import capture
    from app.payments.capture_intents import intent_key

    order = place_order(client, sim_control)
    _move_deadline(app, order["id"], 3600)
    redis.delete(intent_key(order["id"]))  # the key fired early (lost, re-created wrongly)
    real_rearm = capture._rearm

    def deadline_passes_before_the_re_arm(order_id, payment):
        _move_deadline(app, order_id, -0.001)
        as_read_now = SimpleNamespace(id=payment.id, capture_due_at=payment.capture_due_at - timedelta(hours=2))
        return real_rearm(order_id, as_read_now)

    monkeypatch.setattr(capture, "_rearm", deadline_passes_before_the_re_arm)
    with app.app_context():
        capture.capture_order(order["id"], trigger="expiry")

    captured = _order(client, order["id"])["payment_status"] == "captured"
    assert captured or queued_capture_ids(app) or redis.exists(intent_key(order["id"]))


# --- W8: one clock ---------------------------------------------------------------------------------------------


@pytest.fixture
def skew_clock(monkeypatch):
    """`skew_clock()`: from now on every module of the app reads a clock an hour ahead (a worker or web
    host with a bad clock); returns the real clock."""
    import sys

    from app.models import base

    real = base.utcnow

    def ahead():
        return real() + timedelta(hours=1)

    def skew():
        for name, module in list(sys.modules.items()):
            if (name == "app" or name.startswith("app.")) and getattr(module, "utcnow", None) is real:
                monkeypatch.setattr(module, "utcnow", ahead)
        return real

    return skew


def test_w8_a_worker_whose_clock_runs_ahead_does_not_capture_early(app, client, sim_control, skew_clock):
    from app.payments.capture import capture_order

    order = place_order(client, sim_control)  # deadline an hour from now
    skew_clock()  # the worker's clock says the hour is over
    with app.app_context():
        capture_order(order["id"], trigger="expiry")
    assert captures_at_stripe(sim_control) == []
    assert _order(client, order["id"])["payment_status"] == "authorized"


def test_w8_a_web_host_whose_clock_runs_ahead_sets_the_deadline_by_the_database_clock(
        app, client, sim_control, skew_clock):
    from datetime import datetime

    real_clock = skew_clock()
    order = place_order(client, sim_control)
    ends = datetime.fromisoformat(order["grace_period"]["ends_at"].replace("Z", "+00:00"))
    assert abs((ends - real_clock()).total_seconds() - 3600) < 60


# --- W9: a single lost key -------------------------------------------------------------------------------------


def test_w9_the_next_sweep_re_arms_a_single_lost_key_before_its_deadline(app, client, sim_control, settings, redis):
    from app.payments.capture_intents import intent_key
    from app.payments.sweep import sweep

    settings(grace_period_seconds=240)  # the deadline falls before the sweep after next
    order = place_order(client, sim_control)
    other = place_order(client, sim_control)
    assert redis.exists(intent_key(order["id"])) and redis.exists(intent_key(other["id"]))
    redis.delete(intent_key(order["id"]))  # one key lost (deleted by hand, or its write failed)

    with app.app_context():
        result = sweep()

    assert result.rearmed == 1
    assert 0 < redis.pttl(intent_key(order["id"])) <= 240_000
