"""Incremental authorization and refunds."""

from __future__ import annotations

import pytest
import stripe

from stripe_sim.control import SimControl

from .conftest import MANUAL, authorize


def test_increment_approved(client: stripe.StripeClient, control: SimControl) -> None:
    pi = authorize(client)
    bigger = client.v1.payment_intents.increment_authorization(pi.id, params={"amount": 1800})
    assert bigger.amount == 1800 and bigger.amount_capturable == 1800
    assert client.v1.charges.retrieve(pi.latest_charge).amount == 1800
    captured = client.v1.payment_intents.capture(pi.id)
    assert captured.amount_received == 1800
    ops = control.ledger()["operations"]
    assert [(op["op"], op["amount"]) for op in ops] == [("authorize", 1000), ("increment", 1800), ("capture", 1800)]


def test_increment_declined_leaves_intent_unchanged(client: stripe.StripeClient, control: SimControl) -> None:
    pi = authorize(client)
    control.increment_behavior(pi.id, "decline")
    with pytest.raises(stripe.CardError) as exc:
        client.v1.payment_intents.increment_authorization(pi.id, params={"amount": 1800})
    assert exc.value.code == "card_declined"
    after = client.v1.payment_intents.retrieve(pi.id)
    assert (after.amount, after.amount_capturable, after.status) == (1000, 1000, "requires_capture")
    assert [op["op"] for op in control.ledger()["operations"]] == ["authorize"]


def test_increment_unsupported(client: stripe.StripeClient, control: SimControl) -> None:
    pi = authorize(client)
    control.increment_behavior(pi.id, "unsupported")
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.increment_authorization(pi.id, params={"amount": 1800})
    assert exc.value.code == "incremental_authorization_not_available"
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert charge.payment_method_details.card.incremental_authorization.status == "unavailable"


def test_increment_unavailable_without_request_or_card_support(client: stripe.StripeClient) -> None:
    no_support = authorize(client, pm="pm_card_visa_no_incremental")
    not_requested = authorize(client, payment_method_options={"card": {"request_incremental_authorization": "never"}})
    for pi in (no_support, not_requested):
        card = client.v1.charges.retrieve(pi.latest_charge).payment_method_details.card
        assert card.incremental_authorization.status == "unavailable"
        with pytest.raises(stripe.InvalidRequestError) as exc:
            client.v1.payment_intents.increment_authorization(pi.id, params={"amount": 1800})
        assert exc.value.code == "incremental_authorization_not_available"


def test_increment_must_grow_and_needs_requires_capture(client: stripe.StripeClient) -> None:
    pi = authorize(client)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.increment_authorization(pi.id, params={"amount": 1000})
    assert exc.value.param == "amount"
    client.v1.payment_intents.capture(pi.id)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.increment_authorization(pi.id, params={"amount": 2000})
    assert exc.value.code == "payment_intent_unexpected_state"


def test_partial_then_full_refund(client: stripe.StripeClient, control: SimControl) -> None:
    pi = authorize(client)
    client.v1.payment_intents.capture(pi.id, params={"amount_to_capture": 800})
    first = client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 300, "reason": "requested_by_customer"})
    assert first.id.startswith("re_") and first.status == "succeeded" and first.amount == 300
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert charge.amount_refunded == 300 and charge.refunded is False

    rest = client.v1.refunds.create(params={"payment_intent": pi.id})
    assert rest.amount == 500
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert charge.amount_refunded == 800 and charge.refunded is True
    listed = client.v1.refunds.list(params={"payment_intent": pi.id})
    assert listed.object == "list" and {r.id for r in listed.data} == {first.id, rest.id}
    assert client.v1.refunds.retrieve(first.id).amount == 300
    expanded = client.v1.charges.retrieve(pi.latest_charge, params={"expand": ["refunds"]})
    assert [r.id for r in expanded.refunds.data] == [rest.id, first.id]

    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 1})
    assert exc.value.code == "charge_already_refunded"
    assert [op["amount"] for op in control.ledger()["operations"] if op["op"] == "refund"] == [300, 500]


def test_refund_too_large_and_uncaptured(client: stripe.StripeClient) -> None:
    pi = authorize(client)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.refunds.create(params={"payment_intent": pi.id})
    assert exc.value.code == "payment_intent_unexpected_state"
    client.v1.payment_intents.capture(pi.id)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 1001})
    assert exc.value.code == "amount_too_large" and exc.value.param == "amount"
    by_charge = client.v1.refunds.create(params={"charge": pi.latest_charge, "amount": 1000})
    assert by_charge.payment_intent == pi.id


def test_events_cover_the_lifecycle(client: stripe.StripeClient) -> None:
    pi = authorize(client)
    client.v1.payment_intents.increment_authorization(pi.id, params={"amount": 1200})
    client.v1.payment_intents.capture(pi.id)
    client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 100})
    events = list(reversed(client.v1.events.list(params={"limit": 100}).data))
    assert [e.type for e in events] == [
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.amount_capturable_updated",
        "payment_intent.amount_capturable_updated",
        "charge.captured",
        "payment_intent.succeeded",
        "refund.created",
        "charge.refunded",
    ]
    authorized = events[2]
    assert authorized.id.startswith("evt_") and authorized.data.object["amount_capturable"] == 1000
    assert authorized.request["idempotency_key"]
    assert client.v1.events.retrieve(events[-1].id).data.object["amount_refunded"] == 100
    declined = client.v1.payment_intents.create(params=MANUAL)
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.confirm(declined.id, params={"payment_method": "pm_card_chargeDeclined"})
    assert client.v1.events.list(params={"limit": 1}).data[0].type == "payment_intent.payment_failed"
