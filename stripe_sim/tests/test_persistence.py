"""A simulator with a state file continues after a restart: objects, idempotent answers, deliveries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import stripe

from stripe_sim.persistence import StateFileError
from stripe_sim.server import SimServer

from .conftest import MANUAL, WEBHOOK_SECRET, WebhookReceiver, make_client


def _restarted(state_file: Path, receiver: WebhookReceiver | None = None, **kwargs) -> SimServer:
    hook = {"webhook_url": receiver.url, "webhook_secret": WEBHOOK_SECRET} if receiver else {}
    return SimServer(port=0, state_file=state_file, **hook, **kwargs).start()


def _event_ids(deliveries: list[dict]) -> list[str]:
    return [json.loads(d["body"])["id"] for d in deliveries]


def test_payment_intent_survives_a_restart_and_captures_after_it(tmp_path: Path) -> None:
    state_file = tmp_path / "sim.json"
    first = _restarted(state_file)
    client, http = make_client(first.url)
    pi = client.v1.payment_intents.create(params=MANUAL)
    client.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_visa"})
    http.close()
    first.stop()

    second = _restarted(state_file)
    try:
        client, http = make_client(second.url)
        assert client.v1.payment_intents.retrieve(pi.id).status == "requires_capture"
        captured = client.v1.payment_intents.capture(pi.id, params={"amount_to_capture": 600})
        assert (captured.status, captured.amount_received) == ("succeeded", 600)
        ops = [op["op"] for op in second.control.ledger()["operations"]]
        assert ops == ["authorize", "capture"]  # the ledger from before the restart is kept too
        http.close()
    finally:
        second.stop()


def test_idempotency_key_replays_the_stored_answer_after_a_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "sim.json"
    first = _restarted(state_file)
    client, http = make_client(first.url)
    created = client.v1.payment_intents.create(params=MANUAL, options={"idempotency_key": "create:cart_1"})
    http.close()
    first.stop()

    second = _restarted(state_file)
    try:
        client, http = make_client(second.url)
        again = client.v1.payment_intents.create(params=MANUAL, options={"idempotency_key": "create:cart_1"})
        assert again.id == created.id
        assert again.last_response.headers.get("Idempotent-Replayed") == "true"
        with pytest.raises(stripe.IdempotencyError):
            client.v1.payment_intents.create(params={**MANUAL, "amount": 2000},
                                             options={"idempotency_key": "create:cart_1"})
        assert len(second.state.payment_intents) == 1
        http.close()
    finally:
        second.stop()


def test_delivered_events_are_not_sent_again_after_a_restart(tmp_path: Path, receiver: WebhookReceiver) -> None:
    state_file = tmp_path / "sim.json"
    first = _restarted(state_file, receiver)
    client, http = make_client(first.url)
    pi = client.v1.payment_intents.create(params=MANUAL)
    client.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_visa"})
    http.close()
    assert first.wait_for_webhooks(5)
    before = _event_ids(receiver.received)
    assert len(before) == 3  # created, charge.succeeded, amount_capturable_updated
    first.stop()

    second = _restarted(state_file, receiver)
    try:
        client, http = make_client(second.url)
        client.v1.payment_intents.capture(pi.id)
        http.close()
        assert second.wait_for_webhooks(5)
        after = _event_ids(receiver.received)[len(before):]
        assert not set(after) & set(before)
        assert sorted(json.loads(d["body"])["type"] for d in receiver.received[len(before):]) == [
            "charge.captured", "payment_intent.succeeded"]
        listed = client.v1.events.list(params={"limit": 100})
        assert {e.id for e in listed.data} >= set(before)  # the event list still has them
    finally:
        second.stop()


def test_an_event_undelivered_at_the_stop_is_delivered_after_the_restart(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    state_file = tmp_path / "sim.json"
    first = _restarted(state_file, receiver)
    first.control.set_delivery(paused=True)  # as if the web process were down when the event was made
    client, http = make_client(first.url)
    pi = client.v1.payment_intents.create(params=MANUAL)
    http.close()
    first.stop()
    assert receiver.received == []

    second = _restarted(state_file, receiver)
    try:
        assert second.wait_for_webhooks(5)
        assert [json.loads(d["body"])["data"]["object"]["id"] for d in receiver.received] == [pi.id]
    finally:
        second.stop()


def test_without_a_state_file_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with SimServer(port=0) as sim:
        client, http = make_client(sim.url)
        client.v1.payment_intents.create(params=MANUAL)
        http.close()
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_state_file_is_refused_clearly(tmp_path: Path) -> None:
    state_file = tmp_path / "sim.json"
    state_file.write_text("{not json")
    with pytest.raises(StateFileError, match="make clean"):
        SimServer(port=0, state_file=state_file)
