"""Nothing stays stuck (issue S1–S9, docs/reliability.md): every intermediate state has a way out.

A process dies mid-webhook, mid-refund or mid-void; Stripe answers late, never, or with an error
it stores under the key; an event is about someone else's PaymentIntent. Each test forces the
moment, then lets the sweep (or Stripe's retry) do what it does in production, and asserts what
the customer and the store would see.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest

from tests.engine_helpers import captures_at_stripe
from tests.helpers import (
    deliver_and_process, event_for, paid_cart, place_order, signed_delivery, stripe_client, stripe_intent,
)


class ProcessDied(BaseException):
    """The process was killed at this line (a deploy, the OOM killer): nothing after it runs."""


def _order(client, order_id: str) -> dict:
    return client.get(f"/store/orders/{order_id}").get_json()["order"]


def _age(app, model, hours: float = 1, **columns_by_filter) -> None:
    """Time passes: the rows' timestamp columns move `hours` into the past."""
    from app.extensions import db
    from app.models.base import utcnow

    with app.app_context():
        past = utcnow() - timedelta(hours=hours)
        db.session.query(model).update({getattr(model, column): past for column in columns_by_filter["columns"]})
        db.session.commit()


def _sweep(app):
    from app.payments.sweep import sweep

    with app.app_context():
        return sweep()


def _captured_order(app, client, sim_control) -> dict:
    from app.payments.capture import capture_now

    order = place_order(client, sim_control)
    with app.app_context():
        assert capture_now(order["id"], actor="staff:ops@example.com") == "captured"
    return _order(client, order["id"])


def _ledger(sim_control, op: str) -> list[dict]:
    return [o for o in sim_control.ledger()["operations"] if o["op"] == op]


# --- S1: a 2xx means the event will be processed, even if the process that answered dies --------------


def test_s1_a_delivery_that_died_mid_processing_is_not_acknowledged_by_its_retry_and_the_sweep_finishes_it(
        app, client, sim_control, db_session):
    from app.models import Order, WebhookEvent
    from app.webhooks.store import insert_event

    cart, intent = paid_cart(client, sim_control)
    event = event_for("payment_intent.amount_capturable_updated", intent["id"])
    with app.app_context():
        # The first delivery stored and claimed the event, then its worker was killed.
        insert_event(event, json.dumps(event).encode(), None, handled=True, claim=True)

    retry = signed_delivery(client, event)  # Stripe's retry, within the dead delivery's lease
    assert retry.status_code == 409  # not 2xx: Stripe keeps the event and retries
    assert db_session.query(Order).count() == 0

    _age(app, WebhookEvent, columns=["received_at", "processing_started_at"])
    assert _sweep(app).resolved["events"] == 1
    db_session.expire_all()
    assert db_session.query(Order).one().cart_id == cart["id"]
    assert signed_delivery(client, event).get_json() == {"received": True, "duplicate": True}


# --- S2: a Stripe account shared with other integrations ---------------------------------------------------


def test_s2_events_about_payment_intents_of_other_integrations_are_stored_ignored_and_answered_200(
        client, sim, sim_control, db_session):
    from app.models import Order, WebhookEvent

    other_app = stripe_client(sim.url)
    foreign = other_app.v1.payment_intents.create(params={
        "amount": 5000, "currency": "usd", "capture_method": "manual", "metadata": {"invoice": "in_123"}})
    sim_control.confirm(foreign.id)
    other_app.v1.payment_intents.capture(foreign.id)
    for event_type in ("payment_intent.amount_capturable_updated", "payment_intent.succeeded",
                       "payment_intent.canceled", "charge.refunded"):
        obj = {"payment_intent": foreign.id} if event_type.startswith("charge") else None
        response = deliver_and_process(client, event_for(event_type, foreign.id, obj=obj))
        assert response.status_code == 200, (event_type, response.get_json())
    assert db_session.query(Order).count() == 0
    assert db_session.query(WebhookEvent).filter(WebhookEvent.processed_at.is_(None)).count() == 0


# --- S3, S4, S7: refunds -------------------------------------------------------------------------------------


def test_s3_a_refund_whose_stripe_call_failed_before_stripe_ran_it_is_made_by_the_sweep(
        app, client, sim_control):
    from app.models import Refund
    from app.payments.errors import ProviderUnavailable
    from app.payments.refunds import refund_order

    order = _captured_order(app, client, sim_control)
    sim_control.set_faults(script=[{"fault": "429", "method": "POST", "path_contains": "/refunds", "times": 10}])
    with app.app_context(), pytest.raises(ProviderUnavailable):
        refund_order(order["id"], 700, actor="staff:ops@example.com")
    sim_control.clear_faults()
    assert _order(client, order["id"])["refunded_amount"] == 700  # reserved while pending
    assert _ledger(sim_control, "refund") == []

    _age(app, Refund, columns=["created_at"])
    assert _sweep(app).resolved["refunds"] == 1
    body = _order(client, order["id"])
    assert body["refunded_amount"] == 700 and body["payment_status"] == "partially_refunded"
    assert [op["amount"] for op in _ledger(sim_control, "refund")] == [700]


def test_s3_a_refund_whose_answer_was_lost_is_completed_by_the_sweep_without_a_second_refund(
        app, client, sim_control, db_session):
    from app.models import Refund, RefundStatus
    from app.payments.errors import ProviderUnavailable
    from app.payments.refunds import refund_order

    order = _captured_order(app, client, sim_control)
    sim_control.set_faults(script=[{"fault": "lost_response", "method": "POST", "path_contains": "/refunds",
                                    "times": 10}])
    with app.app_context(), pytest.raises(ProviderUnavailable):
        refund_order(order["id"], None, actor="staff:ops@example.com")
    sim_control.clear_faults()

    _age(app, Refund, columns=["created_at"])
    _sweep(app)
    db_session.expire_all()
    assert db_session.query(Refund).one().status == RefundStatus.SUCCEEDED
    assert len(_ledger(sim_control, "refund")) == 1
    assert _order(client, order["id"])["payment_status"] == "refunded"


def test_s4_the_same_refund_confirmation_posted_twice_refunds_once(app, client, sim_control):
    from tests.test_windows import _staff_client

    order = _captured_order(app, client, sim_control)
    staff = _staff_client(app)
    page = staff.get(f"/admin/orders/{order['id']}/refund?amount=5.00").get_data(as_text=True)
    form = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', page))
    assert {"csrf_token", "confirmed", "amount", "request_token"} <= set(form)
    for _ in range(2):  # a double click, or the browser resubmitting the page
        assert staff.post(f"/admin/orders/{order['id']}/refund", data=form).status_code == 302

    assert [op["amount"] for op in _ledger(sim_control, "refund")] == [500]
    assert _order(client, order["id"])["refunded_amount"] == 500


def test_s7_a_refund_that_fails_after_it_succeeded_gives_its_amount_back(app, client, sim_control, db_session):
    from app.models import OrderTransaction, Payment, Refund, RefundStatus
    from app.payments.refunds import refund_order

    order = _captured_order(app, client, sim_control)
    with app.app_context():
        [refund] = refund_order(order["id"], 500, actor="staff:ops@example.com")
        stripe_refund_id = refund.stripe_refund_id
    payment_intent_id = db_session.query(Payment).one().stripe_payment_intent_id
    sim_control.fail_refund(stripe_refund_id)  # the card was closed: Stripe reports the refund failed
    event = event_for("refund.failed", stripe_refund_id, obj={"payment_intent": payment_intent_id})
    assert deliver_and_process(client, event).status_code == 200

    body = _order(client, order["id"])
    assert body["refunded_amount"] == 0 and body["payment_status"] == "captured"
    db_session.expire_all()
    assert db_session.query(Refund).one().status == RefundStatus.FAILED
    assert sum(t.amount for t in db_session.query(OrderTransaction)) == body["captured_amount"]


# --- S5, S9: cancels ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("died", ["before Stripe voided it", "after Stripe voided it"])
def test_s5_a_payment_left_canceling_by_a_process_that_died_mid_void_is_resolved_by_the_sweep(
        app, client, sim, sim_control, monkeypatch, died):
    from app.models import Payment
    from app.payments.cancellation import cancel_order
    from app.payments.stripe_gateway import StripeGateway

    order = place_order(client, sim_control)
    real_cancel = StripeGateway.cancel_payment_intent

    def killed(self, *args, **kwargs):
        if died == "after Stripe voided it":
            real_cancel(self, *args, **kwargs)
        raise ProcessDied()

    monkeypatch.setattr(StripeGateway, "cancel_payment_intent", killed)
    with app.app_context(), pytest.raises(ProcessDied):
        cancel_order(order["id"], actor="customer")
    monkeypatch.setattr(StripeGateway, "cancel_payment_intent", real_cancel)
    assert client.post(f"/store/orders/{order['id']}/cancel").get_json()["error"]["code"] == "order_busy"

    _age(app, Payment, columns=["updated_at"])
    assert _sweep(app).resolved["cancels"] == 1
    if died == "after Stripe voided it":
        assert _order(client, order["id"])["status"] == "canceled"
    else:  # nothing happened at Stripe: the order is as it was, and the customer's retry now works
        assert _order(client, order["id"])["payment_status"] == "authorized"
        assert client.post(f"/store/orders/{order['id']}/cancel").status_code == 200
    assert stripe_intent(sim.url, _payment_intent_of(app, order["id"]))["status"] == "canceled"


def _payment_intent_of(app, order_id: str) -> str:
    from app.extensions import db
    from app.models import Payment

    with app.app_context():
        value = db.session.query(Payment).filter_by(order_id=order_id).one().stripe_payment_intent_id
        db.session.remove()
    return value


def test_s9_a_cancel_whose_answer_was_lost_says_what_actually_happened(app, client, sim, sim_control):
    order = place_order(client, sim_control)
    sim_control.set_faults(script=[{"fault": "lost_response", "method": "POST", "path_contains": "/cancel",
                                    "times": 10}])
    response = client.post(f"/store/orders/{order['id']}/cancel")
    sim_control.clear_faults()
    # Stripe voided it; only its answer was lost: the customer is told it is canceled, because it is.
    assert response.status_code == 200 and response.get_json()["order"]["status"] == "canceled"
    assert stripe_intent(sim.url, _payment_intent_of(app, order["id"]))["status"] == "canceled"


def test_s9_a_second_payment_for_an_ordered_cart_captured_elsewhere_is_refunded_in_full(
        app, client, sim, sim_control):
    cart, _ = paid_cart(client, sim_control)
    order = client.post(f"/store/carts/{cart['id']}/complete").get_json()["order"]
    # The customer paid again in another tab, and someone captured that payment in Stripe's dashboard.
    dashboard = stripe_client(sim.url)
    second = dashboard.v1.payment_intents.create(params={
        "amount": cart["total"], "currency": "usd", "capture_method": "manual", "metadata": {"cart_id": cart["id"]}})
    sim_control.confirm(second.id)
    dashboard.v1.payment_intents.capture(second.id)
    assert deliver_and_process(client, event_for("payment_intent.succeeded", second.id)).status_code == 200

    refunds = [op for op in _ledger(sim_control, "refund") if op["payment_intent"] == second.id]
    assert [op["amount"] for op in refunds] == [cart["total"]]
    assert _order(client, order["id"])["payment_status"] == "authorized"  # the real order is untouched
    assert len(captures_at_stripe(sim_control)) == 1


# --- S8: authorizations expire ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "432001"])
def test_s8_a_grace_period_outside_1_to_432000_seconds_is_refused_at_start(monkeypatch, value):
    from app.config import ConfigError, Settings

    monkeypatch.setenv("GRACE_PERIOD_SECONDS", value)
    with pytest.raises(ConfigError, match="GRACE_PERIOD_SECONDS must be between 1 and 432000"):
        Settings.from_env()


def test_s8_the_authorizations_expiry_is_kept_and_staff_are_warned_a_day_ahead(app, client, sim_control, db_session):
    from app.models import Payment
    from app.models.base import utcnow
    from tests.test_windows import _staff_client

    place_order(client, sim_control)
    payment = db_session.query(Payment).one()
    days_left = (payment.capture_before - utcnow()).total_seconds() / 86400
    assert 6.9 < days_left <= 7  # Stripe's capture_before for an online card payment
    staff = _staff_client(app)
    page = staff.get("/admin/operations").get_data(as_text=True)
    assert re.search(r"Authorizations expiring.*?>\s*0\s*<", page, re.S)
    payment.capture_before = utcnow() + timedelta(hours=3)
    db_session.commit()
    page = staff.get("/admin/operations").get_data(as_text=True)
    assert re.search(r"Authorizations expiring.*?>\s*1\s*<", page, re.S)


def test_s8_an_expired_authorization_cancels_the_order_visibly(app, client, sim_control, db_session):
    from app.models import Payment

    order = place_order(client, sim_control)
    payment = db_session.query(Payment).one()
    sim_control.expire(payment.stripe_payment_intent_id)
    event = event_for("charge.expired", payment.stripe_charge_id or "ch_x",
                      obj={"payment_intent": payment.stripe_payment_intent_id})
    assert deliver_and_process(client, event).status_code == 200
    body = _order(client, order["id"])
    assert body["status"] == "canceled" and body["payment_status"] == "canceled"
    db_session.expire_all()
    assert db_session.query(Payment).one().cancellation_reason == "automatic"
    from tests.test_windows import _staff_client

    page = _staff_client(app).get(f"/admin/orders/{order['id']}").get_data(as_text=True)
    assert "expired before it was captured" in page


# --- found by the chaos run (docs/reliability.md, F8–F12) ---------------------------------------------------


def test_f8_a_dead_deliverys_lease_is_stuck_operation_seconds_for_redeliveries_too(
        app, client, sim_control, settings, db_session):
    from app.models import Order, WebhookEvent
    from app.webhooks.store import insert_event

    settings(stuck_operation_seconds=5)
    _, intent = paid_cart(client, sim_control)
    event = event_for("payment_intent.amount_capturable_updated", intent["id"])
    with app.app_context():
        insert_event(event, json.dumps(event).encode(), None, handled=True, claim=True)  # then the process died
    _age(app, WebhookEvent, hours=10 / 3600, columns=["received_at", "processing_started_at"])
    assert signed_delivery(client, event).status_code == 200  # past the lease: this delivery finishes it
    assert db_session.query(Order).count() == 1


def test_f9_a_refund_answered_with_a_500_stripe_stored_is_made_under_a_new_key(app, client, sim_control):
    from app.models import Refund
    from app.payments.errors import ProviderUnavailable
    from app.payments.refunds import refund_order

    order = _captured_order(app, client, sim_control)
    sim_control.set_faults(script=[{"fault": "500", "method": "POST", "path_contains": "/refunds", "times": 1}])
    with app.app_context(), pytest.raises(ProviderUnavailable):
        refund_order(order["id"], 700, actor="staff:ops@example.com")
    _age(app, Refund, columns=["created_at"])
    _sweep(app)  # Stripe replays the 500 under the first key for 24 h; the sweep's attempt uses the next
    assert [op["amount"] for op in _ledger(sim_control, "refund")] == [700]
    assert _order(client, order["id"])["payment_status"] == "partially_refunded"


def test_f10_a_second_authorization_whose_void_got_a_stored_500_is_voided_on_the_next_delivery(
        app, client, sim, sim_control):
    cart, _ = paid_cart(client, sim_control)
    client.post(f"/store/carts/{cart['id']}/complete")
    second = stripe_client(sim.url).v1.payment_intents.create(params={
        "amount": cart["total"], "currency": "usd", "capture_method": "manual", "metadata": {"cart_id": cart["id"]}})
    sim_control.confirm(second.id)  # the customer paid twice
    sim_control.set_faults(script=[{"fault": "500", "method": "POST", "path_contains": "/cancel", "times": 1}])
    event = event_for("payment_intent.amount_capturable_updated", second.id)
    assert deliver_and_process(client, event).status_code == 200  # stored; its job got the 500 (RQ retries it)
    assert stripe_intent(sim.url, second.id)["status"] == "requires_capture"
    assert signed_delivery(client, event).status_code == 200  # Stripe's redelivery after the failed attempt
    assert stripe_intent(sim.url, second.id)["status"] == "canceled"


def test_f11_a_checkout_whose_payment_intent_creation_got_a_stored_500_works_on_the_next_try(client, sim_control):
    from tests.helpers import filled_cart

    cart = filled_cart(client)
    sim_control.set_faults(script=[{"fault": "500", "method": "POST", "path_contains": "/v1/payment_intents",
                                    "times": 1}])
    assert client.post(f"/store/carts/{cart['id']}/payment-intent").status_code == 503
    retry = client.post(f"/store/carts/{cart['id']}/payment-intent")
    assert retry.status_code == 200 and retry.get_json()["payment_intent"]["amount"] == cart["total"]


def test_f12_a_full_refund_posted_twice_at_once_tells_both_posts_it_was_refunded(
        app, client, sim_control, monkeypatch):
    import threading

    from app.payments import refunds
    from app.payments.refunds import refund_order

    order = _captured_order(app, client, sim_control)
    barrier, results = threading.Barrier(2), []
    real_id_for = refunds.refund_id_for
    waited = threading.local()

    def both_posts_arrive_before_either_writes(order_id, token, part=0):
        if not getattr(waited, "done", False):
            waited.done = True
            barrier.wait(10)
        return real_id_for(order_id, token, part)

    monkeypatch.setattr(refunds, "refund_id_for", both_posts_arrive_before_either_writes)

    def post():
        with app.app_context():
            try:
                results.append(refund_order(order["id"], None, actor="staff", request_token="t" * 24)[0].status)
            except Exception as exc:  # noqa: BLE001 (the assertion below names it)
                results.append(type(exc).__name__)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["succeeded", "succeeded"]
    assert len(_ledger(sim_control, "refund")) == 1
