"""Reconciliation with Stripe's event list: events Stripe never delivered are found and processed once.

The suite's simulator has no webhook endpoint unless a test adds one, so every event it emits is
one Stripe "never delivered".
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import WEBHOOK_SECRET
from tests.engine_helpers import process_queued_events
from tests.helpers import paid_cart, place_order, stripe_client

DAY = 24 * 3600
AUTHORIZED = "payment_intent.amount_capturable_updated"


def _reconcile(app, since=None, **kwargs):
    from app.webhooks.reconciliation import reconcile

    with app.app_context():
        return reconcile(since, **kwargs)


def _figures(result) -> tuple[int, int, int, int]:
    return result.found, result.new, result.processed, result.failed


def _event_of(sim_url: str, payment_intent_id: str, event_type: str = AUTHORIZED) -> str:
    events = stripe_client(sim_url).v1.events.list(params={"type": event_type, "limit": 100}).data
    return next(e.id for e in events if e.data.object["id"] == payment_intent_id)


def test_an_authorization_never_delivered_places_the_order_and_a_second_run_processes_nothing(
    app, client, sim, sim_control, db_session
):
    from app.models import Order, Payment, ReconciliationRun, WebhookEvent
    from app.webhooks.reconciliation import OVERLAP

    cart, intent = paid_cart(client, sim_control)
    assert db_session.query(Order).count() == 0  # nothing told the engine

    first = _reconcile(app)
    assert _figures(first) == (1, 1, 1, 0)  # payment_intent.created and charge.succeeded are not acted on
    order = db_session.query(Order).one()
    assert order.cart_id == cart["id"]
    assert db_session.query(Payment).one().stripe_payment_intent_id == intent["id"]
    row = db_session.query(WebhookEvent).one()
    assert row.id == _event_of(sim.url, intent["id"]) and row.processed_at is not None and row.attempts == 1
    body = client.get(f"/store/orders/{order.id}").get_json()["order"]
    assert body["payment_status"] == "authorized" and body["grace_period"]["editable"] is True

    second = _reconcile(app)
    assert _figures(second) == (1, 0, 0, 0)  # found again (the window overlaps), stored: not processed again
    assert second.since == first.until - OVERLAP
    assert db_session.query(Order).count() == 1
    db_session.expire_all()
    assert db_session.get(WebhookEvent, row.id).attempts == 1
    assert db_session.query(ReconciliationRun).count() == 2


def test_a_capture_whose_webhook_the_endpoint_refused_is_recorded(
    app, client, sim, sim_control, live_server, db_session
):
    from app.models import Capture, Payment, WebhookEvent

    order = place_order(client, sim_control)  # through /complete
    payment_intent_id = db_session.query(Payment).one().stripe_payment_intent_id
    # An endpoint that answers 400 to every delivery (a rotated signing secret), and Stripe gives up.
    sim_control.add_webhook(f"{live_server}/webhooks/stripe", "whsec_rotated_elsewhere")
    sim_control.set_delivery(max_attempts=1)
    stripe_client(sim.url).v1.payment_intents.capture(payment_intent_id)  # in Stripe's dashboard
    assert sim.wait_for_webhooks()
    attempts = sim_control.delivery()["attempts"]
    assert attempts and all(a["status"] == 400 for a in attempts)
    assert db_session.query(WebhookEvent).count() == 0

    result = _reconcile(app)
    assert _figures(result) == (2, 2, 2, 0)  # the authorization (placed already) and the capture
    body = client.get(f"/store/orders/{order['id']}").get_json()["order"]
    assert body["payment_status"] == "captured" and body["captured_amount"] == order["total"]
    assert body["status"] == "completed" and db_session.query(Capture).count() == 1


def test_an_event_the_webhook_already_delivered_is_counted_not_processed(
    app, client, sim, sim_control, live_server, db_session
):
    from app.models import Order, WebhookEvent

    sim_control.add_webhook(f"{live_server}/webhooks/stripe", WEBHOOK_SECRET)
    paid_cart(client, sim_control)
    assert sim.wait_for_webhooks()
    process_queued_events(app)  # the worker
    assert db_session.query(Order).count() == 1
    stored = {row.id: row.attempts for row in db_session.query(WebhookEvent).all()}

    assert _figures(_reconcile(app)) == (1, 0, 0, 0)
    db_session.expire_all()
    assert {row.id: row.attempts for row in db_session.query(WebhookEvent).all()} == stored


def test_every_page_is_listed_and_the_missing_events_go_oldest_first(app, client, sim_control, db_session, monkeypatch):
    from app.models import Order
    from app.payments.stripe_gateway import StripeGateway

    carts = [paid_cart(client, sim_control)[0]["id"] for _ in range(5)]
    pages = []
    list_events = StripeGateway.list_events

    def counted(self, **kwargs):
        page = list_events(self, **kwargs)
        pages.append((kwargs["starting_after"], len(page.events), page.has_more))
        return page

    monkeypatch.setattr(StripeGateway, "list_events", counted)
    assert _figures(_reconcile(app, page_size=2)) == (5, 5, 5, 0)
    assert [(n, more) for _, n, more in pages] == [(2, True), (2, True), (1, False)]
    assert pages[0][0] is None and pages[1][0] is not None
    placed = [order.cart_id for order in db_session.query(Order).order_by(Order.display_id)]
    assert placed == carts  # placed in the order Stripe would have delivered them


def test_since_is_honoured_and_never_more_than_30_days_back(app, client, sim, sim_control, db_session):
    from app.models import Order

    old_cart, old_intent = paid_cart(client, sim_control)
    sim_control.backdate_event(_event_of(sim.url, old_intent["id"]), 3 * DAY)
    _, expired_intent = paid_cart(client, sim_control)
    sim_control.backdate_event(_event_of(sim.url, expired_intent["id"]), 31 * DAY)
    recent_cart, _ = paid_cart(client, sim_control)
    now = datetime.now(timezone.utc)

    one_day = _reconcile(app, now - timedelta(days=1))
    assert _figures(one_day) == (1, 1, 1, 0) and one_day.since == now - timedelta(days=1)
    assert [o.cart_id for o in db_session.query(Order)] == [recent_cart["id"]]

    far_back = _reconcile(app, now - timedelta(days=90))
    assert far_back.since == far_back.until - timedelta(days=30)  # Stripe keeps events 30 days
    assert _figures(far_back) == (2, 1, 1, 0)
    assert {o.cart_id for o in db_session.query(Order)} == {recent_cart["id"], old_cart["id"]}


def test_the_first_run_looks_30_days_back(app):
    from app.webhooks.reconciliation import EVENT_RETENTION

    result = _reconcile(app)
    assert result.since == result.until - EVENT_RETENTION and _figures(result) == (0, 0, 0, 0)


def test_a_failed_handler_is_stored_with_its_error_and_left_to_replay(app, client, sim, sim_control, db_session, runner):
    from app.models import Order, WebhookEvent

    paid_cart(client, sim_control)
    # Stripe answers 500 to the handler's retrieve (and to stripe-python's two retries of it).
    sim_control.set_faults(script=[{"fault": "500", "method": "GET", "path_contains": "/v1/payment_intents/", "times": 3}])
    assert _figures(_reconcile(app)) == (1, 1, 0, 1)
    row = db_session.query(WebhookEvent).one()
    assert row.processed_at is None and "ProviderOutcomeUnknown" in row.last_error
    assert db_session.query(Order).count() == 0

    assert _figures(_reconcile(app)) == (1, 0, 0, 0)  # stored: a redelivery or replay finishes it, as for any
    assert runner.invoke(args=["webhooks", "replay", row.id]).exit_code == 0
    assert db_session.query(Order).count() == 1


def test_when_stripe_cannot_list_nothing_is_recorded(app, client, sim_control, runner, db_session):
    from app.models import ReconciliationRun
    from app.payments.provider_errors import ProviderOutcomeUnknown

    paid_cart(client, sim_control)
    sim_control.set_faults(script=[{"fault": "500", "method": "GET", "path_contains": "/v1/events", "times": 6}])
    with pytest.raises(ProviderOutcomeUnknown):
        _reconcile(app)
    result = runner.invoke(args=["reconcile"])
    assert result.exit_code == 1 and "could not list Stripe's events" in result.output
    assert db_session.query(ReconciliationRun).count() == 0  # the next run lists the same window


def test_the_command_prints_the_figures(app, client, sim, sim_control, runner, db_session):
    from app.models import Order, ReconciliationRun

    paid_cart(client, sim_control)
    result = runner.invoke(args=["reconcile", "--since", "2026-01-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    run = db_session.query(ReconciliationRun).one()
    since = run.since.isoformat(timespec="seconds").replace("+00:00", "Z")
    assert result.output.strip() == f"found 1 event(s) since {since}: 1 new, 1 processed, 0 failed"
    assert db_session.query(Order).count() == 1

    again = runner.invoke(args=["reconcile"])
    assert again.exit_code == 0 and again.output.strip().endswith(": 0 new, 0 processed, 0 failed")
    assert again.output.startswith("found 1 event(s) since ")


def test_the_command_takes_iso_times(app, runner):
    from app.models import ReconciliationRun

    recent = (datetime.now(timezone.utc) - timedelta(hours=2)).replace(microsecond=0)
    for text in (recent.isoformat(), recent.strftime("%Y-%m-%dT%H:%M:%SZ"), recent.replace(tzinfo=None).isoformat()):
        result = runner.invoke(args=["reconcile", "--since", text])
        assert result.exit_code == 0, result.output
        assert f"since {recent.strftime('%Y-%m-%dT%H:%M:%SZ')}:" in result.output
    bad = runner.invoke(args=["reconcile", "--since", "yesterday"])
    assert bad.exit_code == 2 and "ISO 8601" in bad.output
    with app.app_context():
        from app.extensions import db

        assert db.session.query(ReconciliationRun).count() == 3
