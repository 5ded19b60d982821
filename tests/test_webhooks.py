"""Stripe webhooks: verified, stored once, idempotent, retried on failure, traced."""

import threading
import time

import pytest

from tests.conftest import WEBHOOK_SECRET
from tests.engine_helpers import process_queued_events, run_event_retries_now
from tests.helpers import (
    deliver_and_process, event_for, paid_cart, place_order, signed_delivery, stripe_client, stripe_intent,
)


def _count(db_session, model):
    db_session.expire_all()
    return db_session.query(model).count()


def test_missing_or_bad_signature_is_400_and_stores_nothing(client, db_session):
    from app.models import WebhookEvent

    event = event_for("payment_intent.succeeded", "pi_x")
    unsigned = client.post("/webhooks/stripe", json=event)
    assert unsigned.status_code == 400 and unsigned.get_json()["error"]["code"] == "invalid_signature"
    forged = signed_delivery(client, event, secret="whsec_someone_else")
    assert forged.status_code == 400
    assert _count(db_session, WebhookEvent) == 0


def test_replayed_old_delivery_is_refused(client):
    stale = signed_delivery(client, event_for("charge.refunded", "ch_x"), timestamp=int(time.time()) - 301)
    assert stale.status_code == 400 and stale.get_json()["error"]["code"] == "invalid_signature"


def test_signed_but_malformed_body_is_400(client):
    from stripe_sim.signing import sign_payload

    payload = "{not json"
    response = client.post(
        "/webhooks/stripe", data=payload, content_type="application/json",
        headers={"Stripe-Signature": sign_payload(payload, WEBHOOK_SECRET)},
    )
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "malformed_json"
    no_id = signed_delivery(client, {"type": "charge.refunded", "data": {"object": {}}})
    assert no_id.status_code == 400 and no_id.get_json()["error"]["code"] == "invalid_event"


def test_unknown_event_type_is_stored_and_answered_200(client, db_session):
    from app.models import WebhookEvent

    event = event_for("customer.created", "cus_1", event_id="evt_unknown_type")
    response = signed_delivery(client, event)
    assert response.status_code == 200 and response.get_json()["duplicate"] is False
    again = signed_delivery(client, event)
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert db_session.query(WebhookEvent).count() == 1
    row = db_session.get(WebhookEvent, "evt_unknown_type")
    assert row.type == "customer.created" and row.processed_at is not None


def test_authorization_webhook_places_the_order_and_a_duplicate_returns_early(client, sim_control, db_session):
    from app.models import Order, Payment, WebhookEvent

    cart, intent = paid_cart(client, sim_control)
    event = event_for("payment_intent.amount_capturable_updated", intent["id"], event_id="evt_auth_1")
    first = deliver_and_process(client, event, headers={"X-Request-Id": "trace-first"})
    second = deliver_and_process(client, event)
    assert first.status_code == 200 and first.get_json()["duplicate"] is False
    assert second.status_code == 200 and second.get_json()["duplicate"] is True
    assert _count(db_session, Order) == 1 and _count(db_session, Payment) == 1
    row = db_session.get(WebhookEvent, "evt_auth_1")
    assert row.attempts == 1 and row.trace_id == "trace-first"
    # the storefront's complete finds the same order
    completed = client.post(f"/store/carts/{cart['id']}/complete").get_json()["order"]
    assert completed["id"] == db_session.query(Order).one().id


def test_capture_made_in_stripes_dashboard_is_recorded_once(client, sim, sim_control, db_session):
    from app.models import Capture, OrderTransaction, Payment

    order = place_order(client, sim_control)
    payment = db_session.query(Payment).one()
    stripe_client(sim.url).v1.payment_intents.capture(payment.stripe_payment_intent_id, params={"amount_to_capture": 1000})
    event = event_for("payment_intent.succeeded", payment.stripe_payment_intent_id)
    assert deliver_and_process(client, event).status_code == 200
    assert deliver_and_process(client, event_for("payment_intent.succeeded", payment.stripe_payment_intent_id)).status_code == 200
    body = client.get(f"/store/orders/{order['id']}").get_json()["order"]
    assert body["captured_amount"] == 1000 and body["status"] == "completed"
    # Less than the order's total: recorded as Stripe has it, never shown as a plain success.
    missing = body["total"] - 1000
    assert body["payment_status"] == "partially_captured" and body["capture"]["status"] == "failed"
    assert f"{missing} not collected" in body["capture"]["last_error"]
    assert _count(db_session, Capture) == 1 and _count(db_session, OrderTransaction) == 1


def test_succeeded_before_amount_capturable_updated_still_gives_one_captured_order(client, sim, sim_control, db_session):
    from app.models import Capture, Order

    cart, intent = paid_cart(client, sim_control)
    stripe_client(sim.url).v1.payment_intents.capture(intent["id"])
    assert deliver_and_process(client, event_for("payment_intent.succeeded", intent["id"])).status_code == 200
    assert deliver_and_process(client, event_for("payment_intent.amount_capturable_updated", intent["id"])).status_code == 200
    order = db_session.query(Order).one()
    body = client.get(f"/store/orders/{order.id}").get_json()["order"]
    assert body["payment_status"] == "captured" and body["captured_amount"] == cart["total"]
    assert _count(db_session, Capture) == 1


def test_canceled_authorization_cancels_the_order_and_its_capture_intent(app, client, sim_control, db_session):
    from app.extensions import get_redis
    from app.models import Payment

    order = place_order(client, sim_control)
    with app.app_context():
        assert get_redis().exists(f"capture_intent:{order['id']}") == 1
    payment = db_session.query(Payment).one()
    sim_control.expire(payment.stripe_payment_intent_id)
    assert deliver_and_process(client, event_for("payment_intent.canceled", payment.stripe_payment_intent_id)).status_code == 200
    body = client.get(f"/store/orders/{order['id']}").get_json()["order"]
    assert body["status"] == "canceled" and body["payment_status"] == "canceled"
    assert body["capture"]["status"] == "canceled"
    with app.app_context():
        assert get_redis().exists(f"capture_intent:{order['id']}") == 0


def test_payment_failed_is_recorded_with_stripes_reason(client, sim_control, db_session):
    from app.models import PaymentSession

    _, intent = paid_cart(client, sim_control, card="pm_card_chargeDeclined")
    assert deliver_and_process(client, event_for("payment_intent.payment_failed", intent["id"])).status_code == 200
    session = db_session.query(PaymentSession).one()
    assert session.status == "error" and "generic_decline" in session.last_error


def test_refund_made_at_stripe_is_recorded_once_per_refund_id(client, sim, sim_control, db_session):
    from app.models import OrderTransaction, Payment, Refund

    order = place_order(client, sim_control)
    payment = db_session.query(Payment).one()
    stripe = stripe_client(sim.url)
    stripe.v1.payment_intents.capture(payment.stripe_payment_intent_id)
    deliver_and_process(client, event_for("payment_intent.succeeded", payment.stripe_payment_intent_id))
    refund = stripe.v1.refunds.create(params={"payment_intent": payment.stripe_payment_intent_id, "amount": 500})
    for _ in range(2):
        response = deliver_and_process(client, event_for("charge.refunded", refund.charge, obj={"payment_intent": payment.stripe_payment_intent_id}))
        assert response.status_code == 200
    assert _count(db_session, Refund) == 1
    body = client.get(f"/store/orders/{order['id']}").get_json()["order"]
    assert body["refunded_amount"] == 500 and body["payment_status"] == "partially_refunded"
    amounts = sorted(t.amount for t in db_session.query(OrderTransaction))
    assert amounts == [-500, order["total"]]


def test_customer_paying_twice_gets_the_second_authorization_voided(client, sim, sim_control, db_session):
    from app.models import Order

    cart, intent = paid_cart(client, sim_control)
    client.post(f"/store/carts/{cart['id']}/complete")
    second = stripe_client(sim.url).v1.payment_intents.create(
        params={"amount": cart["total"], "currency": "usd", "capture_method": "manual", "metadata": {"cart_id": cart["id"]}}
    )
    sim_control.confirm(second.id)
    assert deliver_and_process(client, event_for("payment_intent.amount_capturable_updated", second.id)).status_code == 200
    assert stripe_intent(sim.url, second.id)["status"] == "canceled"
    assert stripe_intent(sim.url, intent["id"])["status"] == "requires_capture"
    assert _count(db_session, Order) == 1


def test_failing_handler_is_retried_by_the_worker_and_a_redelivery_answers_500_if_it_fails_again(
        app, client, sim_control, db_session, monkeypatch):
    from app.models import Order, WebhookEvent
    from app.webhooks import handlers

    _, intent = paid_cart(client, sim_control)
    real = handlers.HANDLERS["payment_intent.amount_capturable_updated"]
    calls = []

    def flaky(event):
        calls.append(event["id"])
        if len(calls) <= 2:
            raise RuntimeError("database hiccup")
        real(event)

    monkeypatch.setitem(handlers.HANDLERS, "payment_intent.amount_capturable_updated", flaky)
    event = event_for("payment_intent.amount_capturable_updated", intent["id"], event_id="evt_flaky")
    # Stored and queued: 200 at once, the handler runs in the worker.
    first = deliver_and_process(client, event)
    assert first.status_code == 200 and first.get_json() == {"received": True, "duplicate": False}
    row = db_session.get(WebhookEvent, "evt_flaky")
    assert row.processed_at is None and "database hiccup" in row.last_error and row.attempts == 1
    assert _count(db_session, Order) == 0
    # Stripe redelivers after that failed attempt: processed in the request as before, 500 when it fails again.
    redelivered = signed_delivery(client, event)
    assert redelivered.status_code == 500 and redelivered.get_json()["error"]["code"] == "processing_failed"
    assert _count(db_session, Order) == 0
    # RQ's retry (with backoff; run now) succeeds.
    assert run_event_retries_now(app) == 1
    assert process_queued_events(app) == 1
    db_session.expire_all()
    row = db_session.get(WebhookEvent, "evt_flaky")
    assert row.processed_at is not None and row.last_error is None and row.attempts == 3
    assert _count(db_session, Order) == 1
    assert signed_delivery(client, event).get_json() == {"received": True, "duplicate": True}


def test_the_request_only_stores_the_event_and_the_worker_places_the_order(app, client, sim_control, db_session):
    from app.models import Order, WebhookEvent

    cart, intent = paid_cart(client, sim_control)
    event = event_for("payment_intent.amount_capturable_updated", intent["id"], event_id="evt_off_path")
    response = signed_delivery(client, event)
    assert response.status_code == 200 and response.get_json() == {"received": True, "duplicate": False}
    assert _count(db_session, Order) == 0  # not placed by the request
    row = db_session.get(WebhookEvent, "evt_off_path")
    assert row.processed_at is None and row.processing_started_at is None and row.attempts == 0
    from app.queues import EVENT_QUEUE, event_job_id, queue

    with app.app_context():
        assert queue(EVENT_QUEUE).get_job_ids() == [event_job_id("evt_off_path")]
    assert process_queued_events(app) == 1
    assert _count(db_session, Order) == 1
    db_session.expire_all()
    row = db_session.get(WebhookEvent, "evt_off_path")
    assert row.processed_at is not None and row.attempts == 1
    assert db_session.query(Order).one().cart_id == cart["id"]


def test_redis_down_at_enqueue_still_answers_200_and_the_sweep_processes_the_event(
        app, client, sim_control, db_session, monkeypatch):
    from datetime import timedelta

    from redis.exceptions import ConnectionError as RedisConnectionError

    from app.models import Order, WebhookEvent
    from app.models.base import utcnow
    from app.payments.sweep import sweep
    from app.webhooks import processing

    _, intent = paid_cart(client, sim_control)

    def redis_down(event_id):
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(processing, "enqueue_event_processing", redis_down, raising=False)
    event = event_for("payment_intent.amount_capturable_updated", intent["id"], event_id="evt_no_redis")
    response = signed_delivery(client, event)
    assert response.status_code == 200 and response.get_json()["duplicate"] is False
    assert db_session.get(WebhookEvent, "evt_no_redis").processed_at is None
    monkeypatch.undo()
    assert process_queued_events(app) == 0 and _count(db_session, Order) == 0  # no job exists
    with app.app_context():
        sweep()  # within the lease: not yet
    assert _count(db_session, Order) == 0
    lease = app.config["ENGINE"].stuck_operation_seconds
    with app.app_context():
        sweep(now=utcnow() + timedelta(seconds=lease + 1))
    assert _count(db_session, Order) == 1
    db_session.expire_all()
    assert db_session.get(WebhookEvent, "evt_no_redis").processed_at is not None


def test_a_duplicate_delivery_while_the_job_is_queued_answers_200_and_is_processed_once(
        app, client, sim_control, db_session):
    from app.models import Order, WebhookEvent
    from app.queues import EVENT_QUEUE, queue

    _, intent = paid_cart(client, sim_control)
    event = event_for("payment_intent.amount_capturable_updated", intent["id"], event_id="evt_twice_queued")
    assert signed_delivery(client, event).get_json() == {"received": True, "duplicate": False}
    again = signed_delivery(client, event)
    assert again.status_code == 200 and again.get_json() == {"received": True, "duplicate": True}
    with app.app_context():
        assert queue(EVENT_QUEUE).count == 1  # one job (its id is the event's)
    assert process_queued_events(app) == 1
    assert _count(db_session, Order) == 1 and _count(db_session, WebhookEvent) == 1
    assert db_session.get(WebhookEvent, "evt_twice_queued").attempts == 1
    assert signed_delivery(client, event).get_json() == {"received": True, "duplicate": True}
    assert process_queued_events(app) == 0  # a redelivery of a processed event queues nothing


def test_operator_lists_failed_events_and_replays_one(client, runner, sim_control, monkeypatch, db_session):
    from app.models import Order
    from app.webhooks import handlers

    _, intent = paid_cart(client, sim_control)
    real = handlers.HANDLERS["payment_intent.amount_capturable_updated"]

    def broken(event):
        raise RuntimeError("downstream outage")

    monkeypatch.setitem(handlers.HANDLERS, "payment_intent.amount_capturable_updated", broken)
    deliver_and_process(client, event_for("payment_intent.amount_capturable_updated", intent["id"], event_id="evt_replay"))
    listing = runner.invoke(args=["webhooks", "failed"])
    assert "evt_replay" in listing.output and "downstream outage" in listing.output
    monkeypatch.setitem(handlers.HANDLERS, "payment_intent.amount_capturable_updated", real)
    replay = runner.invoke(args=["webhooks", "replay", "evt_replay"])
    assert replay.exit_code == 0, replay.output
    assert _count(db_session, Order) == 1
    assert "0 failed event(s)" in runner.invoke(args=["webhooks", "failed"]).output


def test_webhook_and_complete_racing_give_one_order(app, client, sim_control, db_session):
    from app.models import Order

    cart, intent = paid_cart(client, sim_control)
    barrier = threading.Barrier(4)
    statuses = []

    def via_webhook():
        with app.test_client() as own:
            barrier.wait()
            statuses.append(signed_delivery(own, event_for("payment_intent.amount_capturable_updated", intent["id"])).status_code)

    def via_complete():
        with app.test_client() as own:
            barrier.wait()
            statuses.append(own.post(f"/store/carts/{cart['id']}/complete").status_code)

    threads = [threading.Thread(target=fn) for fn in (via_webhook, via_complete, via_webhook, via_complete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(200) == 4
    process_queued_events(app)
    assert _count(db_session, Order) == 1


def test_concurrent_duplicate_deliveries_process_once(app, client, sim_control, db_session):
    from app.models import Order, WebhookEvent

    _, intent = paid_cart(client, sim_control)
    event = event_for("payment_intent.amount_capturable_updated", intent["id"], event_id="evt_concurrent")
    barrier, statuses = threading.Barrier(5), []

    def deliver():
        with app.test_client() as own:
            barrier.wait()
            statuses.append(signed_delivery(own, event).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Every delivery stores it or finds it stored and waiting for its job: 200 (one job, by its id).
    assert statuses == [200] * 5
    assert process_queued_events(app) == 1
    assert _count(db_session, WebhookEvent) == 1 and _count(db_session, Order) == 1
    assert db_session.get(WebhookEvent, "evt_concurrent").attempts == 1
    assert signed_delivery(client, event).get_json() == {"received": True, "duplicate": True}


def test_simulator_deliveries_place_orders_without_complete(app, client, sim, sim_control, live_server, db_session):
    from app.models import Order

    sim_control.add_webhook(f"{live_server}/webhooks/stripe", WEBHOOK_SECRET)
    cart, _ = paid_cart(client, sim_control)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _count(db_session, Order) == 0:
        process_queued_events(app)  # the worker
        time.sleep(0.1)
    order = db_session.query(Order).one()
    assert order.cart_id == cart["id"]


@pytest.mark.parametrize("body", [b"", b"x" * 300_000])
def test_empty_or_oversized_webhook_bodies_are_refused(client, body):
    response = client.post("/webhooks/stripe", data=body, content_type="application/json",
                           headers={"Stripe-Signature": "t=1,v1=abc"})
    assert response.status_code in (400, 413)
    assert "error" in response.get_json()
