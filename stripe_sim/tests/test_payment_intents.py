"""PaymentIntent lifecycle through the real stripe client: create, confirm, capture, cancel, declines."""

from __future__ import annotations

import pytest
import stripe

from stripe_sim.control import SimControl
from stripe_sim.server import SimServer

from .conftest import MANUAL, authorize


def test_create_returns_stripe_shaped_intent(client: stripe.StripeClient) -> None:
    pi = client.v1.payment_intents.create(params=MANUAL, options={"idempotency_key": "create-1"})
    assert pi.object == "payment_intent"
    assert pi.id.startswith("pi_") and len(pi.id) > 20
    assert pi.status == "requires_payment_method"
    assert pi.client_secret.startswith(f"{pi.id}_secret_")
    assert pi.metadata["cart_id"] == "cart_1"
    assert pi.payment_method_options["card"]["request_incremental_authorization"] == "if_available"
    assert pi.livemode is False and isinstance(pi.created, int)
    assert client.v1.payment_intents.retrieve(pi.id).id == pi.id


def test_create_with_payment_method_requires_confirmation(client: stripe.StripeClient) -> None:
    pi = client.v1.payment_intents.create(params={"amount": 500, "currency": "USD", "payment_method": "pm_card_visa"})
    assert pi.status == "requires_confirmation"
    assert pi.currency == "usd"


def test_automatic_capture_succeeds_on_confirm(client: stripe.StripeClient) -> None:
    pi = client.v1.payment_intents.create(
        params={"amount": 2500, "currency": "eur", "payment_method": "pm_card_mastercard", "confirm": True}
    )
    assert pi.status == "succeeded"
    assert pi.amount_received == 2500
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert charge.captured is True and charge.amount_captured == 2500


def test_manual_authorize_then_full_capture(client: stripe.StripeClient, control: SimControl) -> None:
    pi = authorize(client)
    assert pi.status == "requires_capture"
    assert pi.amount_capturable == 1000
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert charge.id.startswith("ch_")
    assert (charge.captured, charge.amount, charge.amount_captured, charge.amount_refunded) == (False, 1000, 0, 0)
    assert charge.refunded is False and charge.status == "succeeded" and charge.payment_intent == pi.id
    assert charge.payment_method_details.card.incremental_authorization.status == "available"

    captured = client.v1.payment_intents.capture(pi.id, params={"expand": ["latest_charge"]})
    assert captured.status == "succeeded"
    assert captured.amount_received == 1000 and captured.amount_capturable == 0
    assert captured.latest_charge.captured is True and captured.latest_charge.amount_captured == 1000
    assert [op["op"] for op in control.ledger()["operations"]] == ["authorize", "capture"]


def test_partial_capture_releases_the_rest(client: stripe.StripeClient) -> None:
    pi = authorize(client)
    captured = client.v1.payment_intents.capture(pi.id, params={"amount_to_capture": 600})
    assert captured.status == "succeeded"
    assert captured.amount_received == 600 and captured.amount_capturable == 0
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert charge.amount_captured == 600 and charge.captured is True


def test_capture_more_than_capturable_is_rejected(client: stripe.StripeClient) -> None:
    pi = authorize(client)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.capture(pi.id, params={"amount_to_capture": 1001})
    assert exc.value.param == "amount_to_capture"
    assert client.v1.payment_intents.retrieve(pi.id).status == "requires_capture"


def test_capture_requires_requires_capture(client: stripe.StripeClient) -> None:
    pi = client.v1.payment_intents.create(params=MANUAL)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.capture(pi.id)
    assert exc.value.code == "payment_intent_unexpected_state"


def test_cancel_authorized_intent(client: stripe.StripeClient, control: SimControl) -> None:
    pi = authorize(client)
    canceled = client.v1.payment_intents.cancel(pi.id, params={"cancellation_reason": "abandoned"})
    assert canceled.status == "canceled"
    assert canceled.cancellation_reason == "abandoned"
    assert canceled.canceled_at is not None and canceled.amount_capturable == 0
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.cancel(pi.id)
    assert exc.value.code == "payment_intent_unexpected_state"
    assert [op["op"] for op in control.ledger()["operations"]] == ["authorize", "cancel"]


def test_cancel_succeeded_intent_fails(client: stripe.StripeClient) -> None:
    pi = authorize(client)
    client.v1.payment_intents.capture(pi.id)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.cancel(pi.id)
    assert exc.value.code == "payment_intent_unexpected_state"


def test_decline_then_retry_with_good_card(client: stripe.StripeClient, control: SimControl) -> None:
    pi = client.v1.payment_intents.create(params=MANUAL)
    with pytest.raises(stripe.CardError) as exc:
        client.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_chargeDeclined"})
    assert exc.value.code == "card_declined"
    error = exc.value.error
    assert error is not None and error.decline_code == "generic_decline"
    assert error.payment_intent["id"] == pi.id
    assert error.payment_intent["status"] == "requires_payment_method"
    failed = client.v1.payment_intents.retrieve(pi.id)
    assert failed.last_payment_error.decline_code == "generic_decline"

    with pytest.raises(stripe.CardError) as exc:
        client.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_chargeDeclinedInsufficientFunds"})
    assert exc.value.error is not None and exc.value.error.decline_code == "insufficient_funds"

    ok = client.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_visa"})
    assert ok.status == "requires_capture" and ok.last_payment_error is None
    assert [op["op"] for op in control.ledger()["operations"]] == ["authorize"]


def test_confirm_in_wrong_state(client: stripe.StripeClient) -> None:
    pi = authorize(client)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_visa"})
    assert exc.value.code == "payment_intent_unexpected_state"


def test_unknown_payment_method_and_missing_intent(client: stripe.StripeClient) -> None:
    pi = client.v1.payment_intents.create(params=MANUAL)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_nope"})
    assert exc.value.code == "resource_missing" and exc.value.param == "payment_method"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.retrieve("pi_doesnotexist")
    assert exc.value.http_status == 404 and exc.value.code == "resource_missing"


def test_parameter_validation(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.create(params={**MANUAL, "amout": 5})  # type: ignore[typeddict-unknown-key]
    assert exc.value.code == "parameter_unknown" and exc.value.param == "amout"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.create(params={"amount": 0, "currency": "usd"})
    assert exc.value.param == "amount"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.payment_intents.create(params={"amount": 100})  # type: ignore[typeddict-item]
    assert exc.value.code == "parameter_missing" and exc.value.param == "currency"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.create(params={"amount": 100, "currency": "dollars"})


def test_bad_api_key_is_rejected(sim: SimServer) -> None:
    http_client = stripe.RequestsClient(timeout=5)
    bad = stripe.StripeClient("pk_test_nope", base_addresses={"api": sim.url}, http_client=http_client)
    try:
        with pytest.raises(stripe.AuthenticationError):
            bad.v1.payment_intents.list()
    finally:
        http_client.close()


def test_list_intents_and_expire(client: stripe.StripeClient, control: SimControl) -> None:
    first = authorize(client)
    second = client.v1.payment_intents.create(params=MANUAL)
    page = client.v1.payment_intents.list(params={"limit": 1})
    assert [pi.id for pi in page.data] == [second.id] and page.has_more is True
    expired = control.expire(first.id)
    assert expired["status"] == "canceled" and expired["cancellation_reason"] == "automatic"
    types = [e.type for e in client.v1.events.list(params={"limit": 3}).data]
    assert types[0] == "payment_intent.canceled"
    assert control.ledger()["operations"][-1]["op"] == "expire"
