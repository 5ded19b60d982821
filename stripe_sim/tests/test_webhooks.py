"""Webhook delivery: signatures verified by stripe-python, retries, duplicates, pause and redelivery."""

from __future__ import annotations

import json
import time

import stripe

from stripe_sim.control import SimControl
from stripe_sim.server import SimServer
from stripe_sim.signing import sign_payload

from .conftest import WEBHOOK_SECRET, WebhookReceiver, authorize


def _types(deliveries: list[dict]) -> list[str]:
    return [json.loads(d["body"])["type"] for d in deliveries]


def test_sign_payload_verifies_with_stripe_library() -> None:
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "x", "data": {"object": {}}}).encode()
    header = sign_payload(payload, WEBHOOK_SECRET, timestamp=int(time.time()))
    event = stripe.Webhook.construct_event(payload, header, WEBHOOK_SECRET)
    assert event.id == "evt_1"
    stale = sign_payload(payload, WEBHOOK_SECRET, timestamp=int(time.time()) - 3600)
    try:
        stripe.Webhook.construct_event(payload, stale, WEBHOOK_SECRET)
    except stripe.SignatureVerificationError:
        pass
    else:
        raise AssertionError("stale signature accepted")


def test_events_delivered_signed(
    sim: SimServer, client: stripe.StripeClient, control: SimControl, receiver: WebhookReceiver
) -> None:
    control.add_webhook(receiver.url, WEBHOOK_SECRET)
    pi = authorize(client)
    deliveries = receiver.wait_for(3)
    assert _types(deliveries) == [
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.amount_capturable_updated",
    ]
    for delivery in deliveries:
        event = stripe.Webhook.construct_event(delivery["body"], delivery["signature"], WEBHOOK_SECRET)
        assert event.object == "event" and event.livemode is False
    last = stripe.Webhook.construct_event(deliveries[-1]["body"], deliveries[-1]["signature"], WEBHOOK_SECRET)
    assert last.data.object["id"] == pi.id and last.data.object["status"] == "requires_capture"
    assert last.pending_webhooks == 1


def test_failed_delivery_is_retried(sim: SimServer, client: stripe.StripeClient, receiver: WebhookReceiver) -> None:
    receiver.fail_first = 2
    sim.control.add_webhook(receiver.url, WEBHOOK_SECRET)
    sim.control.set_delivery(retry_backoff_ms=20)
    client.v1.payment_intents.create(params={"amount": 100, "currency": "usd"})
    deliveries = receiver.wait_for(3)
    assert _types(deliveries) == ["payment_intent.created"] * 3
    assert sim.wait_for_webhooks()
    attempts = sim.control.delivery()["attempts"]
    assert [a["ok"] for a in attempts] == [False, False, True]


def test_duplicates_pause_and_redeliver(
    sim: SimServer, client: stripe.StripeClient, control: SimControl, receiver: WebhookReceiver
) -> None:
    control.add_webhook(receiver.url, WEBHOOK_SECRET)
    control.set_delivery(paused=True, duplicate_rate=1.0, shuffle_window_ms=50)
    pi = client.v1.payment_intents.create(params={"amount": 100, "currency": "usd"})
    time.sleep(0.2)
    assert receiver.received == [] and control.delivery()["pending"] == 2
    control.set_delivery(paused=False)
    deliveries = receiver.wait_for(2)
    assert _types(deliveries) == ["payment_intent.created"] * 2
    event_id = json.loads(deliveries[0]["body"])["id"]
    control.redeliver(event_id)
    assert json.loads(receiver.wait_for(3)[2]["body"])["id"] == event_id
    assert pi.id in deliveries[0]["body"].decode()


def test_webhook_configured_at_start(receiver: WebhookReceiver) -> None:
    with SimServer(port=0, webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET) as sim:
        http_client = stripe.RequestsClient(timeout=5)
        client = stripe.StripeClient("sk_test_1", base_addresses={"api": sim.url}, http_client=http_client)
        try:
            client.v1.payment_intents.create(params={"amount": 100, "currency": "usd"})
        finally:
            http_client.close()
        deliveries = receiver.wait_for(1)
        stripe.Webhook.construct_event(deliveries[0]["body"], deliveries[0]["signature"], WEBHOOK_SECRET)
