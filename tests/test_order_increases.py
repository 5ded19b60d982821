"""Order increases on cards whose authorization cannot be raised: a second payment for the difference.

The contract's *Order increases*: a 202 with a pending edit, the customer's browser confirms its
PaymentIntent, the webhook or `complete` applies it once, and at the deadline the final total is
captured across both PaymentIntents, oldest first, each at most once. Races are forced with hooks.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.engine_helpers import captures_at_stripe
from tests.helpers import deliver_and_process, event_for, paid_cart, product_ids, stripe_intent

NO_INCREMENT = "pm_card_visa_no_incremental"


def _placed(client, sim_control, card: str = NO_INCREMENT, quantities=(1,)) -> dict:
    cart, _ = paid_cart(client, sim_control, quantities=quantities, card=card)
    response = client.post(f"/store/carts/{cart['id']}/complete")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["order"]


def _edit(client, order: dict, quantity: int):
    return client.post(f"/store/orders/{order['id']}/edits",
                       json={"items": [{"product_id": order["items"][0]["product_id"], "quantity": quantity}]})


def _order(client, order_id: str) -> dict:
    return client.get(f"/store/orders/{order_id}").get_json()["order"]


def _complete(client, order_id: str, edit_id: str):
    return client.post(f"/store/orders/{order_id}/edits/{edit_id}/complete")


def _pending(client, sim_control, order: dict, quantity: int) -> dict:
    response = _edit(client, order, quantity)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["pending_edit"]


def _paid_increase(client, sim_control, order: dict, quantity: int) -> dict:
    """Edit up, the customer confirms the second PaymentIntent, `complete` applies it."""
    pending = _pending(client, sim_control, order, quantity)
    sim_control.confirm(pending["payment_intent"]["id"], payment_method=NO_INCREMENT)
    response = _complete(client, order["id"], pending["id"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()["order"]


def _move_deadline(app, order_id: str, seconds_from_now: float) -> None:
    from app.extensions import db
    from app.models import Order, OrderEdit, Payment
    from app.models.base import utcnow

    with app.app_context():
        when = utcnow() + timedelta(seconds=seconds_from_now)
        db.session.query(Payment).filter_by(order_id=order_id).update({"capture_due_at": when})
        db.session.query(OrderEdit).filter_by(order_id=order_id).update({"expires_at": when})
        db.session.query(Order).filter_by(id=order_id).update({"grace_period_ends_at": when})
        db.session.commit()
        db.session.remove()


def _capture(app, order_id: str) -> str:
    from app.payments.capture import capture_order

    with app.app_context():
        return capture_order(order_id, trigger="expiry")


def _ops(sim_control, op: str, payment_intent_id: str | None = None) -> list[dict]:
    return [o for o in sim_control.ledger()["operations"]
            if o["op"] == op and (payment_intent_id is None or o["payment_intent"] == payment_intent_id)]


# --- the cheap way first, then the 202 ------------------------------------------------------------


def test_a_card_that_cannot_be_incremented_gets_a_pending_edit_and_the_order_waits(client, sim, sim_control):
    order = _placed(client, sim_control)
    unit = order["items"][0]["unit_amount"]
    response = _edit(client, order, 3)
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    pending = body["pending_edit"]
    assert pending["id"].startswith("oedit_") and pending["status"] == "requires_payment"
    assert (pending["total"], pending["amount_due"]) == (3 * unit, 2 * unit)
    assert pending["payment_intent"]["amount"] == 2 * unit and pending["payment_intent"]["client_secret"]
    assert pending["expires_at"] == order["grace_period"]["ends_at"]
    # The order keeps its committed items and total until the difference is authorized.
    assert body["order"]["total"] == order["total"] and body["order"]["items"] == order["items"]
    assert _order(client, order["id"])["pending_edit"] == pending
    # No increment was attempted: the charge said it is unavailable.
    assert _ops(sim_control, "increment") == []
    intent = stripe_intent(sim.url, pending["payment_intent"]["id"])
    assert intent["capture_method"] == "manual" and intent["payment_method_types"] == ["card"]
    assert intent["metadata"]["order_id"] == order["id"] and intent["metadata"]["order_edit_id"] == pending["id"]
    assert intent["payment_method_options"]["card"]["request_incremental_authorization"] == "if_available"
    assert intent["amount"] == 2 * unit and intent["currency"] == order["currency"]


def test_complete_applies_the_edit_once_with_a_second_authorized_payment(client, sim_control, db_session):
    from app.models import OrderChange

    order = _placed(client, sim_control)
    pending = _pending(client, sim_control, order, 3)
    early = _complete(client, order["id"], pending["id"])
    assert early.status_code == 409 and early.get_json()["error"]["code"] == "payment_not_authorized"
    sim_control.confirm(pending["payment_intent"]["id"])
    first = _complete(client, order["id"], pending["id"])
    again = _complete(client, order["id"], pending["id"])
    assert first.status_code == again.status_code == 200
    edited = first.get_json()["order"]
    assert again.get_json()["order"] == edited
    assert edited["total"] == pending["total"] and edited["authorized_amount"] == pending["total"]
    assert [p["payment_intent_id"] for p in edited["payments"]][1] == pending["payment_intent"]["id"]
    assert [(p["amount"], p["status"]) for p in edited["payments"]] == [
        (order["total"], "authorized"), (pending["amount_due"], "authorized")]
    assert edited["pending_edit"] is None and edited["payment_status"] == "authorized"
    assert [c.version for c in db_session.query(OrderChange).all()] == [2]


def test_the_webhook_applies_the_edit_and_a_redelivery_or_complete_changes_nothing(client, sim_control, db_session):
    from app.models import OrderChange, Payment

    order = _placed(client, sim_control)
    pending = _pending(client, sim_control, order, 2)
    pi = pending["payment_intent"]["id"]
    sim_control.confirm(pi)
    event = event_for("payment_intent.amount_capturable_updated", pi)
    assert deliver_and_process(client, event).status_code == 200
    assert _order(client, order["id"])["total"] == pending["total"]
    assert deliver_and_process(client, {**event, "id": event["id"] + "x"}).status_code == 200  # Stripe delivers twice
    assert _complete(client, order["id"], pending["id"]).get_json()["order"]["total"] == pending["total"]
    db_session.expire_all()
    assert db_session.query(Payment).count() == 2 and db_session.query(OrderChange).count() == 1


def test_a_standard_pricing_account_gets_pending_edits_for_every_card(client, sim_control):
    sim_control.set_account(incremental_authorization=False)
    order = _placed(client, sim_control, card="pm_card_visa")
    assert _edit(client, order, 2).status_code == 202
    assert _ops(sim_control, "increment") == []


def test_when_stripe_refuses_the_increment_the_edit_becomes_pending(client, sim_control, db_session):
    from app.models import Payment

    order = _placed(client, sim_control, card="pm_card_visa")
    # The charge still says available; Stripe answers that it is not (a merchant category, a country).
    sim_control.increment_behavior(db_session.query(Payment).one().stripe_payment_intent_id, "approve")
    sim_control.set_account(incremental_authorization=False)
    response = _edit(client, order, 2)
    assert response.status_code == 202, response.get_json()
    assert _order(client, order["id"])["total"] == order["total"]


def test_after_ten_increment_attempts_the_next_increase_is_a_pending_edit(client, sim_control, db_session):
    from app.models import Payment

    order = _placed(client, sim_control, card="pm_card_visa")
    pi = db_session.query(Payment).one().stripe_payment_intent_id
    sim_control.increment_behavior(pi, "decline")
    for quantity in range(2, 12):
        declined = _edit(client, order, quantity)
        assert declined.status_code == 402 and declined.get_json()["error"]["code"] == "authorization_increase_declined"
    sim_control.increment_behavior(pi, "approve")
    response = _edit(client, order, 12)
    assert response.status_code == 202, response.get_json()
    assert sim_control.payment_intent(pi)["_sim"]["increment_attempts"] == 10  # none beyond Stripe's cap


def test_an_increase_on_a_card_that_supports_it_is_still_a_200(client, sim_control):
    order = _placed(client, sim_control, card="pm_card_visa")
    response = _edit(client, order, 3)
    assert response.status_code == 200 and response.get_json()["order"]["pending_edit"] is None
    assert len(_ops(sim_control, "increment")) == 1 and len(response.get_json()["order"]["payments"]) == 1


# --- capture across two payments --------------------------------------------------------------------


def test_the_deadline_captures_exactly_the_final_total_across_both_payments(app, client, sim_control):
    order = _placed(client, sim_control)
    edited = _paid_increase(client, sim_control, order, 3)
    _move_deadline(app, order["id"], -1)
    assert _capture(app, order["id"]) == "captured"
    captures = captures_at_stripe(sim_control)
    assert sorted((c["payment_intent"], c["amount"]) for c in captures) == sorted(
        (p["payment_intent_id"], p["amount"]) for p in edited["payments"])
    assert sum(c["amount"] for c in captures) == edited["total"]
    after = _order(client, order["id"])
    assert after["payment_status"] == "captured" and after["captured_amount"] == edited["total"]
    assert after["status"] == "completed" and after["capture"]["status"] == "succeeded"
    assert _capture(app, order["id"]) == "already_captured" and len(captures_at_stripe(sim_control)) == 2


def test_an_edit_down_after_a_second_payment_voids_the_unneeded_one(app, client, sim_control):
    order = _placed(client, sim_control, quantities=(2,))
    edited = _paid_increase(client, sim_control, order, 4)
    second = edited["payments"][1]["payment_intent_id"]
    down = _edit(client, order, 1)
    assert down.status_code == 200
    _move_deadline(app, order["id"], -1)
    assert _capture(app, order["id"]) == "captured"
    [capture] = captures_at_stripe(sim_control)
    assert capture["amount"] == down.get_json()["order"]["total"] and capture["payment_intent"] != second
    assert [o["payment_intent"] for o in _ops(sim_control, "cancel")] == [second]
    after = _order(client, order["id"])
    assert [p["status"] for p in after["payments"]] == ["captured", "canceled"]
    assert after["payment_status"] == "captured" and after["status"] == "completed"


def test_an_edit_down_between_the_two_captures_less_from_the_second(app, client, sim_control):
    order = _placed(client, sim_control, quantities=(1,))
    unit = order["items"][0]["unit_amount"]
    _paid_increase(client, sim_control, order, 4)
    assert _edit(client, order, 3).status_code == 200
    _move_deadline(app, order["id"], -1)
    _capture(app, order["id"])
    assert sorted(c["amount"] for c in captures_at_stripe(sim_control)) == [unit, 2 * unit]


def test_one_payment_captured_and_the_other_failing_is_visible_and_retried_alone(app, client, sim_control):
    from app.payments.capture import CaptureRetryLater

    order = _placed(client, sim_control)
    edited = _paid_increase(client, sim_control, order, 2)
    second = edited["payments"][1]["payment_intent_id"]
    sim_control.set_faults(script=[{"fault": "500", "method": "POST", "path_contains": f"{second}/capture",
                                    "times": 3}])
    _move_deadline(app, order["id"], -1)
    with pytest.raises(CaptureRetryLater):
        _capture(app, order["id"])
    partial = _order(client, order["id"])
    assert [p["status"] for p in partial["payments"]] == ["captured", "authorized"]
    assert partial["payment_status"] == "partially_captured" and partial["capture"]["status"] == "in_progress"
    assert partial["status"] == "pending"
    sim_control.clear_faults()
    assert _capture(app, order["id"]) == "captured"
    assert [c["payment_intent"] for c in captures_at_stripe(sim_control)].count(edited["payments"][0]["payment_intent_id"]) == 1
    assert _order(client, order["id"])["payment_status"] == "captured"


# --- the ways out: lapse, supersede, cancel ------------------------------------------------------------


def test_a_pending_edit_not_paid_by_the_deadline_lapses_and_the_order_captures_its_committed_total(
        app, client, sim, sim_control):
    order = _placed(client, sim_control)
    pending = _pending(client, sim_control, order, 3)
    _move_deadline(app, order["id"], -1)
    _capture(app, order["id"])
    [capture] = captures_at_stripe(sim_control)
    assert capture["amount"] == order["total"]
    assert stripe_intent(sim.url, pending["payment_intent"]["id"])["status"] == "canceled"
    late = _complete(client, order["id"], pending["id"])
    assert late.status_code == 409 and late.get_json()["error"]["code"] == "grace_period_expired"
    assert _order(client, order["id"])["pending_edit"] is None


def test_the_sweep_lapses_a_pending_edit_past_its_expiry(app, client, sim, sim_control):
    from app.payments.sweep import sweep

    order = _placed(client, sim_control)
    pending = _pending(client, sim_control, order, 3)
    _move_deadline(app, order["id"], -1)
    with app.app_context():
        assert sweep().resolved["edits"] == 1
    assert stripe_intent(sim.url, pending["payment_intent"]["id"])["status"] == "canceled"


def test_a_newer_edit_supersedes_a_pending_one_and_voids_its_authorization(client, sim, sim_control):
    order = _placed(client, sim_control)
    first = _pending(client, sim_control, order, 3)
    sim_control.confirm(first["payment_intent"]["id"])  # authorized, not yet applied (no webhook, no complete)
    second = _pending(client, sim_control, order, 4)
    assert stripe_intent(sim.url, first["payment_intent"]["id"])["status"] == "canceled"
    stale = _complete(client, order["id"], first["id"])
    assert stale.status_code == 409 and stale.get_json()["error"]["code"] == "edit_conflict"
    assert _order(client, order["id"])["pending_edit"]["id"] == second["id"]
    sim_control.confirm(second["payment_intent"]["id"])
    assert _complete(client, order["id"], second["id"]).get_json()["order"]["total"] == second["total"]


def test_a_direct_edit_supersedes_a_pending_one(client, sim, sim_control):
    order = _placed(client, sim_control, quantities=(2,))
    pending = _pending(client, sim_control, order, 5)
    assert _edit(client, order, 1).status_code == 200
    assert stripe_intent(sim.url, pending["payment_intent"]["id"])["status"] == "canceled"
    assert _order(client, order["id"])["pending_edit"] is None


def test_cancel_voids_both_payments_and_a_pending_edit(client, sim, sim_control):
    order = _placed(client, sim_control)
    edited = _paid_increase(client, sim_control, order, 2)
    pending = _pending(client, sim_control, order, 4)
    response = client.post(f"/store/orders/{order['id']}/cancel")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()["order"]
    assert body["status"] == "canceled" and body["payment_status"] == "canceled"
    assert [p["status"] for p in body["payments"]] == ["canceled", "canceled"]
    for pi in [p["payment_intent_id"] for p in edited["payments"]] + [pending["payment_intent"]["id"]]:
        assert stripe_intent(sim.url, pi)["status"] == "canceled"
    assert captures_at_stripe(sim_control) == []


def test_refunds_are_split_over_the_captured_payments_newest_first(app, client, sim_control):
    from app.payments.errors import RefundExceedsCaptured
    from app.payments.refunds import refund_order

    order = _placed(client, sim_control)
    edited = _paid_increase(client, sim_control, order, 3)
    first_pi, second_pi = (p["payment_intent_id"] for p in edited["payments"])
    _move_deadline(app, order["id"], -1)
    _capture(app, order["id"])
    unit = order["items"][0]["unit_amount"]
    with app.app_context():
        [part] = refund_order(order["id"], unit, actor="staff:ops@example.com")
        assert part.amount == unit
        parts = refund_order(order["id"], 2 * unit, actor="staff:ops@example.com", request_token="r" * 24)
        assert [p.amount for p in parts] == [unit, unit]
        again = refund_order(order["id"], 2 * unit, actor="staff:ops@example.com", request_token="r" * 24)
        assert [p.id for p in again] == [p.id for p in parts]  # the same confirmation posted twice
        with pytest.raises(RefundExceedsCaptured):
            refund_order(order["id"], 1, actor="staff:ops@example.com")
    refunds = _ops(sim_control, "refund")
    assert [(r["payment_intent"], r["amount"]) for r in refunds] == [(second_pi, unit), (second_pi, unit),
                                                                     (first_pi, unit)]
    assert _order(client, order["id"])["payment_status"] == "refunded"


# --- races, forced --------------------------------------------------------------------------------------


@pytest.mark.parametrize("capture_runs", [True, False], ids=["and the capture runs", "capture not yet"])
def test_a_supplementary_authorization_that_arrives_after_the_deadline_is_voided_never_captured(
        app, client, sim, sim_control, monkeypatch, capture_runs):
    from app.payments import pending_edits

    order = _placed(client, sim_control)
    pending = _pending(client, sim_control, order, 3)
    sim_control.confirm(pending["payment_intent"]["id"])
    real_apply = pending_edits._apply

    def deadline_passes_first(edit_id, intent):
        # `complete` has Stripe's word that it is authorized; meanwhile the deadline passes (and the capture runs).
        _move_deadline(app, order["id"], -1)
        if capture_runs:
            _capture(app, order["id"])
        return real_apply(edit_id, intent)

    monkeypatch.setattr(pending_edits, "_apply", deadline_passes_first)
    response = _complete(client, order["id"], pending["id"])
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "grace_period_expired"
    _capture(app, order["id"])
    [capture] = captures_at_stripe(sim_control)
    assert capture["amount"] == order["total"]
    assert stripe_intent(sim.url, pending["payment_intent"]["id"])["status"] == "canceled"
    assert len(_order(client, order["id"])["payments"]) == 1


def test_a_supplementary_authorization_racing_another_edit_is_voided(app, client, sim, sim_control, monkeypatch):
    from app.payments import pending_edits

    order = _placed(client, sim_control, quantities=(2,))
    pending = _pending(client, sim_control, order, 5)
    sim_control.confirm(pending["payment_intent"]["id"])
    real_apply = pending_edits._apply
    answers = {}

    def another_edit_first(edit_id, intent):
        answers["edit"] = _edit(client, order, 1)  # the customer's other tab edits the order down
        return real_apply(edit_id, intent)

    monkeypatch.setattr(pending_edits, "_apply", another_edit_first)
    response = _complete(client, order["id"], pending["id"])
    assert answers["edit"].status_code == 200
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "edit_conflict"
    after = _order(client, order["id"])
    assert after["total"] == answers["edit"].get_json()["order"]["total"] and len(after["payments"]) == 1
    assert stripe_intent(sim.url, pending["payment_intent"]["id"])["status"] == "canceled"


def test_a_payment_added_just_before_the_deadline_is_captured_too(app, client, sim_control, monkeypatch):
    from app.payments import capture

    order = _placed(client, sim_control)
    pending = _pending(client, sim_control, order, 3)
    sim_control.confirm(pending["payment_intent"]["id"])
    real_read = capture.payments_for_order
    reads = []

    def edit_applies_then_deadline(order_id):
        payments = real_read(order_id)
        # The capture job has read the order's payments (one); the edit applies, then the deadline passes.
        if not reads:
            assert _complete(client, order["id"], pending["id"]).status_code == 200
            _move_deadline(app, order["id"], -1)
        reads.append(len(payments))
        return payments

    monkeypatch.setattr(capture, "payments_for_order", edit_applies_then_deadline)
    assert _capture(app, order["id"]) == "captured"
    assert reads[0] == 1
    assert sum(c["amount"] for c in captures_at_stripe(sim_control)) == pending["total"]
    assert len(captures_at_stripe(sim_control)) == 2


def test_an_unknown_edit_is_404(client, sim_control):
    order = _placed(client, sim_control)
    response = _complete(client, order["id"], "oedit_nope")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    other = _placed(client, sim_control)
    pending = _pending(client, sim_control, other, 2)
    assert _complete(client, order["id"], pending["id"]).status_code == 404
    assert product_ids(client)  # the catalog is untouched


# --- what staff see ----------------------------------------------------------------------------------


def test_the_dashboard_shows_each_payment_and_the_pending_increase(app, client, sim_control):
    import html
    import re

    from app.cli import upsert_staff
    from tests.test_dashboard import STAFF_EMAIL, STAFF_PASSWORD, login

    with app.app_context():
        upsert_staff(STAFF_EMAIL, STAFF_PASSWORD)
    order = _placed(client, sim_control)
    edited = _paid_increase(client, sim_control, order, 3)
    pending = _pending(client, sim_control, order, 5)
    staff = app.test_client()
    assert login(staff).status_code == 302

    listing = html.unescape(staff.get("/admin/orders").get_data(as_text=True))
    row = re.search(rf'<tr data-order-id="{order["id"]}".*?</tr>', listing, re.S).group(0)
    assert "2 payments" in row
    page = html.unescape(staff.get(f"/admin/orders/{order['id']}").get_data(as_text=True))
    for payment in edited["payments"]:
        assert payment["payment_intent_id"] in page
    step = re.search(r"data-next-step>([^<]+)<", page).group(1)
    total = edited["total"]
    assert step.startswith(f"Will capture {total // 100}.{total % 100:02d} USD across 2 payments at ")
    shares = re.findall(r"<td class=\"num\" data-share>([^<]+)<", page)
    assert shares == [f"{p['amount'] // 100}.{p['amount'] % 100:02d} USD" for p in edited["payments"]]
    notice = re.search(rf'data-pending-edit="{pending["id"]}">(.*?)</p>', page, re.S).group(1)
    due = pending["amount_due"]
    assert f"{due // 100}.{due % 100:02d} USD more" in notice and pending["payment_intent"]["id"] in notice
