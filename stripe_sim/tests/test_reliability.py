"""Idempotency semantics, injected faults and rate limiting."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests
import stripe

from stripe_sim.control import SimControl, SimControlError
from stripe_sim.server import SimServer

from .conftest import MANUAL, authorize

AUTH = {"Authorization": "Bearer sk_test_123"}


def _post(sim: SimServer, path: str, data: dict[str, Any], key: str | None = None) -> requests.Response:
    headers = dict(AUTH)
    if key:
        headers["Idempotency-Key"] = key
    return requests.post(f"{sim.url}{path}", data=data, headers=headers, timeout=10)


def test_idempotent_replay_is_byte_for_byte(sim: SimServer, control: SimControl) -> None:
    body = {"amount": "1000", "currency": "usd", "metadata[cart_id]": "c1"}
    first = _post(sim, "/v1/payment_intents", body, key="same")
    again = _post(sim, "/v1/payment_intents", body, key="same")
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(sim.state.payment_intents) == 1


def test_idempotency_key_reuse_with_other_params_or_endpoint(client: stripe.StripeClient) -> None:
    pi = client.v1.payment_intents.create(params=MANUAL, options={"idempotency_key": "k"})
    replay = client.v1.payment_intents.create(params=MANUAL, options={"idempotency_key": "k"})
    assert replay.id == pi.id
    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.create(params={**MANUAL, "amount": 999}, options={"idempotency_key": "k"})
    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.cancel(pi.id, options={"idempotency_key": "k"})


def test_error_responses_are_replayed(client: stripe.StripeClient, control: SimControl) -> None:
    pi = client.v1.payment_intents.create(params=MANUAL)
    params = {"payment_method": "pm_card_chargeDeclined"}
    with pytest.raises(stripe.CardError) as first:
        client.v1.payment_intents.confirm(pi.id, params=params, options={"idempotency_key": "decl"})
    events_before = len(client.v1.events.list(params={"limit": 100}).data)
    with pytest.raises(stripe.CardError) as second:
        client.v1.payment_intents.confirm(pi.id, params=params, options={"idempotency_key": "decl"})
    assert second.value.http_body == first.value.http_body
    assert second.value.headers is not None and second.value.headers["Idempotent-Replayed"] == "true"
    assert len(client.v1.events.list(params={"limit": 100}).data) == events_before


def test_validation_errors_are_not_stored(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError):
        incomplete: dict = {"amount": 100}
        client.v1.payment_intents.create(params=incomplete, options={"idempotency_key": "v"})  # type: ignore[arg-type]
    pi = client.v1.payment_intents.create(params={"amount": 100, "currency": "usd"}, options={"idempotency_key": "v"})
    assert pi.status == "requires_payment_method"


def test_in_flight_key_conflicts_with_409(sim: SimServer, control: SimControl) -> None:
    control.set_faults(script=[{"fault": "slow", "path_contains": "/v1/payment_intents", "seconds": 1.0}])
    results: dict[str, requests.Response] = {}
    body = {"amount": "1000", "currency": "usd"}
    slow = threading.Thread(target=lambda: results.__setitem__("slow", _post(sim, "/v1/payment_intents", body, "busy")))
    slow.start()
    try:
        for _ in range(100):  # wait until the slow request holds the key
            if control.faults()["counts"]["slow"]:
                break
            threading.Event().wait(0.01)
        conflict = _post(sim, "/v1/payment_intents", body, key="busy")
    finally:
        slow.join()
    assert conflict.status_code == 409
    assert conflict.headers["Stripe-Should-Retry"] == "true"
    assert conflict.json()["error"]["type"] == "idempotency_error"
    assert results["slow"].status_code == 200
    assert len(sim.state.payment_intents) == 1


def test_a_500_once_execution_began_is_stored_under_its_key_and_replayed(
        client: stripe.StripeClient, control: SimControl) -> None:
    """As Stripe documents: the first answer under a key is saved once the endpoint began, 500s included."""
    pi = authorize(client)
    control.set_faults(script=[{"fault": "500", "method": "POST", "path_contains": "/capture", "times": 1}])
    with pytest.raises(stripe.APIError) as first:
        client.v1.payment_intents.capture(pi.id, options={"idempotency_key": "cap-500"})
    assert first.value.headers.get("stripe-should-retry") == "false"  # the library does not retry it
    with pytest.raises(stripe.APIError):  # the same key, later: the same 500, not a capture
        client.v1.payment_intents.capture(pi.id, options={"idempotency_key": "cap-500"})
    assert client.v1.payment_intents.retrieve(pi.id).status == "requires_capture"
    captured = client.v1.payment_intents.capture(pi.id, options={"idempotency_key": "cap-500-next"})
    assert captured.status == "succeeded"
    ledger = control.ledger()
    assert [op["op"] for op in ledger["operations"]].count("capture") == 1
    assert ledger["faults"]["500"] == 1


def test_500_without_retries_surfaces_api_error(sim: SimServer, control: SimControl) -> None:
    from .conftest import make_client

    client, http_client = make_client(sim.url, retries=0)
    try:
        control.set_faults(script=[{"fault": "500", "path_contains": "/v1/payment_intents"}])
        with pytest.raises(stripe.APIError):
            client.v1.payment_intents.create(params=MANUAL)
        assert control.ledger()["operations"] == [] and not sim.state.payment_intents
    finally:
        http_client.close()


def test_lost_response_then_retry_with_same_key_captures_once(
    fast_client: stripe.StripeClient, control: SimControl
) -> None:
    pi = authorize(fast_client)
    control.set_faults(script=[{"fault": "lost_response", "path_contains": "/capture"}])
    captured = fast_client.v1.payment_intents.capture(pi.id, options={"idempotency_key": "cap-1"})
    assert captured.status == "succeeded"
    ledger = control.ledger()
    captures = [op for op in ledger["operations"] if op["op"] == "capture"]
    assert len(captures) == 1 and captures[0]["idempotency_key"] == "cap-1"
    assert ledger["faults"]["lost_response"] == 1


def test_lost_response_past_client_timeout(fast_client: stripe.StripeClient, control: SimControl) -> None:
    pi = authorize(fast_client)
    control.set_faults(script=[{"fault": "lost_response", "path_contains": "/capture", "seconds": 0.8}])
    captured = fast_client.v1.payment_intents.capture(pi.id)
    assert captured.status == "succeeded"
    assert [op["op"] for op in control.ledger()["operations"]].count("capture") == 1


def test_timeout_does_not_perform(fast_client: stripe.StripeClient, control: SimControl) -> None:
    pi = authorize(fast_client)
    control.set_faults(timeout_seconds=0.8, script=[{"fault": "timeout", "path_contains": "/capture"}])
    captured = fast_client.v1.payment_intents.capture(pi.id)  # first attempt times out, the retry performs
    assert captured.status == "succeeded"
    ledger = control.ledger()
    assert [op["op"] for op in ledger["operations"]].count("capture") == 1
    assert ledger["faults"]["timeout"] == 1


def test_injected_429_and_enforced_rate_limit(client: stripe.StripeClient, control: SimControl) -> None:
    control.set_faults(script=[{"fault": "429", "method": "POST"}])
    with pytest.raises(stripe.RateLimitError):
        client.v1.payment_intents.create(params=MANUAL)
    control.set_faults()
    control.set_rate_limit(requests_per_second=2, burst=2)
    with pytest.raises(stripe.RateLimitError) as exc:
        for _ in range(5):
            client.v1.payment_intents.list()
    assert exc.value.http_status == 429
    ledger = control.ledger()
    assert ledger["faults"]["429"] == 1 and ledger["faults"]["rate_limited"] >= 1


def test_probabilistic_faults_are_seeded_and_counted(sim: SimServer, control: SimControl) -> None:
    from .conftest import make_client

    client, http_client = make_client(sim.url, retries=0)
    try:
        control.set_faults(error_500_rate=0.5, seed=7)
        outcomes = []
        for _ in range(12):
            try:
                client.v1.payment_intents.create(params=MANUAL)
                outcomes.append("ok")
            except stripe.APIError:
                outcomes.append("500")
    finally:
        http_client.close()
    ledger = control.ledger()
    assert ledger["faults"]["500"] == outcomes.count("500") >= 1
    assert len(sim.state.payment_intents) == outcomes.count("ok") >= 1
    assert ledger["requests"] == 12
    with pytest.raises(SimControlError):
        control.set_faults(error_500_rate=2)
