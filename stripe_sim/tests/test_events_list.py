"""GET /v1/events as Stripe serves it: every event kept, newest first, filters by date and type, cursors."""

from __future__ import annotations

import json
import time

import pytest
import requests
import stripe

from stripe_sim.control import SimControl
from stripe_sim.server import SimServer

from .conftest import MANUAL, WEBHOOK_SECRET, WebhookReceiver, authorize

DAY = 24 * 3600
EVENT_KEYS = {"id", "object", "type", "created", "data", "livemode", "api_version", "pending_webhooks", "request"}


def test_the_list_has_stripes_shape(sim: SimServer, client: stripe.StripeClient) -> None:
    pi = authorize(client)
    body = requests.get(f"{sim.url}/v1/events", auth=("sk_test_123", ""), timeout=5).json()
    assert body["object"] == "list" and body["url"] == "/v1/events" and body["has_more"] is False
    assert [e["type"] for e in body["data"]] == [
        "payment_intent.amount_capturable_updated", "charge.succeeded", "payment_intent.created",
    ]
    newest = body["data"][0]
    assert set(newest) == EVENT_KEYS and newest["object"] == "event" and newest["id"].startswith("evt_")
    assert newest["data"]["object"]["id"] == pi.id and newest["data"]["object"]["status"] == "requires_capture"
    assert newest["livemode"] is False and newest["request"]["id"].startswith("req_")
    assert [e["created"] for e in body["data"]] == sorted((e["created"] for e in body["data"]), reverse=True)


def test_events_whose_delivery_failed_or_never_happened_are_listed(
    sim: SimServer, client: stripe.StripeClient, control: SimControl, receiver: WebhookReceiver
) -> None:
    undelivered = client.v1.payment_intents.create(params=MANUAL)  # no endpoint configured yet
    receiver.fail_first = 10
    control.add_webhook(receiver.url, WEBHOOK_SECRET)
    control.set_delivery(max_attempts=1)
    failed = client.v1.payment_intents.create(params=MANUAL)
    receiver.wait_for(1)
    assert sim.wait_for_webhooks()
    assert [a["ok"] for a in control.delivery()["attempts"]] == [False]
    listed = [e.data.object["id"] for e in client.v1.events.list(params={"type": "payment_intent.created"}).data]
    assert listed == [failed.id, undelivered.id]


def test_created_range_filters(client: stripe.StripeClient, control: SimControl) -> None:
    old, recent = (client.v1.payment_intents.create(params=MANUAL) for _ in range(2))
    by_intent = {e.data.object["id"]: e for e in client.v1.events.list().data}
    control.backdate_event(by_intent[old.id].id, 3 * DAY)
    now = int(time.time())

    def listed(created: object) -> list[str]:
        return [e.data.object["id"] for e in client.v1.events.list(params={"created": created}).data]

    assert listed({"gte": now - DAY}) == [recent.id]
    assert listed({"lt": now - DAY}) == [old.id]
    assert listed({"gt": now - 4 * DAY, "lte": now + 60}) == [recent.id, old.id]  # newest first, by created
    assert listed(by_intent[old.id].created - 3 * DAY) == [old.id]  # an exact timestamp
    assert listed({"gt": now + 60}) == []
    with pytest.raises(stripe.InvalidRequestError):
        listed({"after": now})


def test_types_and_type_filters(sim: SimServer, client: stripe.StripeClient) -> None:
    pi = authorize(client)
    client.v1.payment_intents.capture(pi.id)
    wanted = ["payment_intent.succeeded", "payment_intent.amount_capturable_updated"]
    assert [e.type for e in client.v1.events.list(params={"types": wanted}).data] == wanted
    # The form stripe-python does not use but Stripe accepts: types[]=...
    raw = requests.get(f"{sim.url}/v1/events", params=[("types[]", t) for t in wanted],
                       auth=("sk_test_123", ""), timeout=5).json()
    assert [e["type"] for e in raw["data"]] == wanted
    assert {e.type for e in client.v1.events.list(params={"type": "charge.*"}).data} == {
        "charge.succeeded", "charge.captured",
    }
    with pytest.raises(stripe.InvalidRequestError, match="not both"):
        client.v1.events.list(params={"type": "charge.captured", "types": wanted})
    with pytest.raises(stripe.InvalidRequestError, match="at most 20"):
        client.v1.events.list(params={"types": [f"x.{i}" for i in range(21)]})


def test_cursor_pagination_and_auto_paging(client: stripe.StripeClient) -> None:
    for _ in range(5):
        client.v1.payment_intents.create(params=MANUAL)
    everything = [e.id for e in client.v1.events.list(params={"limit": 100}).data]
    assert len(everything) == 5

    first = client.v1.events.list(params={"limit": 2})
    assert [e.id for e in first.data] == everything[:2] and first.has_more is True
    second = client.v1.events.list(params={"limit": 2, "starting_after": first.data[-1].id})
    assert [e.id for e in second.data] == everything[2:4] and second.has_more is True
    back = client.v1.events.list(params={"limit": 2, "ending_before": second.data[0].id})
    assert [e.id for e in back.data] == everything[:2]
    paged = client.v1.events.list(params={"limit": 2, "created": {"gte": 0}, "types": ["payment_intent.created"]})
    assert [e.id for e in paged.auto_paging_iter()] == everything

    with pytest.raises(stripe.InvalidRequestError):
        client.v1.events.list(params={"limit": 101})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.events.list(params={"limit": 0})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.events.list(params={"starting_after": "evt_unknown"})


def test_a_cursor_may_name_an_event_the_filters_leave_out(client: stripe.StripeClient) -> None:
    pi = authorize(client)  # created, charge.succeeded, amount_capturable_updated
    newest = client.v1.events.list(params={"limit": 1}).data[0]
    assert newest.type == "payment_intent.amount_capturable_updated"
    page = client.v1.events.list(params={"starting_after": newest.id, "types": ["payment_intent.created"]})
    assert [e.data.object["id"] for e in page.data] == [pi.id]


def test_the_default_page_is_ten_events(client: stripe.StripeClient) -> None:
    for _ in range(11):
        client.v1.payment_intents.create(params=MANUAL)
    page = client.v1.events.list()
    assert len(page.data) == 10 and page.has_more is True
    assert json.loads(json.dumps(page.to_dict()))["object"] == "list"
