"""Review scratch tests (delete after each run)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.engine_helpers import captures_at_stripe
from tests.helpers import stripe_intent
from tests.test_order_increases import (
    NO_INCREMENT, _capture, _complete, _edit, _move_deadline, _order, _paid_increase, _pending, _placed,
)


def _payments(db_session, order_id):
    from app.models import Payment
    db_session.expire_all()
    return [(p.status, p.amount) for p in db_session.query(Payment).filter_by(order_id=order_id)
            .order_by(Payment.created_at)]


# R1: the cancel reads the order's payments before its transaction; an edit applied in between
# adds a payment that the cancel never voids.
def test_r1_cancel_misses_a_payment_applied_meanwhile(app, client, sim, sim_control, monkeypatch, db_session):
    from app.payments import cancellation

    order = _placed(client, sim_control)
    pending = _pending(client, sim_control, order, 3)
    sim_control.confirm(pending["payment_intent"]["id"])
    real = cancellation.payments_for_order
    seen = []

    def apply_lands_first(order_id):
        payments = real(order_id)
        if not seen:
            seen.append(len(payments))
            r = _complete(app.test_client(), order["id"], pending["id"])  # the webhook / other tab
            seen.append(r.status_code)
        return payments

    monkeypatch.setattr(cancellation, "payments_for_order", apply_lands_first)
    response = client.post(f"/store/orders/{order['id']}/cancel")
    body = response.get_json()
    print("\nseen:", seen, "cancel:", response.status_code, body["order"]["status"] if "order" in body else body,
          body.get("order", {}).get("payment_status"))
    print("payments after cancel:", _payments(db_session, order["id"]))
    print("second PI at Stripe:", stripe_intent(sim.url, pending["payment_intent"]["id"])["status"])
    _move_deadline(app, order["id"], -1)
    print("capture at deadline:", _capture(app, order["id"]))
    print("captures at Stripe:", [(c["payment_intent"][-6:], c["amount"]) for c in captures_at_stripe(sim_control)])
    print("order after:", {k: _order(client, order["id"])[k] for k in ("status", "payment_status", "captured_amount")})
    assert captures_at_stripe(sim_control) == [], "money captured on an order the customer canceled (200)"


# R3: a cancel whose second void fails leaves the first payment voided and the second capturable.
def test_r3_cancel_partial_failure_half_cancels(app, client, sim, sim_control, db_session):
    order = _placed(client, sim_control)
    edited = _paid_increase(client, sim_control, order, 3)
    second = edited["payments"][1]["payment_intent_id"]
    sim_control.set_faults(script=[{"fault": "500", "method": "POST", "path_contains": f"{second}/cancel",
                                    "times": 10}])
    response = client.post(f"/store/orders/{order['id']}/cancel")
    print("\ncancel:", response.status_code, response.get_json())
    sim_control.clear_faults()
    print("payments:", _payments(db_session, order["id"]))
    o = _order(client, order["id"])
    print("order:", o["status"], o["payment_status"], o["grace_period"])
    _move_deadline(app, order["id"], -1)
    print("capture:", _capture(app, order["id"]))
    print("captures:", [(c["payment_intent"][-6:], c["amount"]) for c in captures_at_stripe(sim_control)])
    o = _order(client, order["id"])
    print("order after:", o["status"], o["payment_status"], o["captured_amount"], o["total"], o["capture"])
    assert captures_at_stripe(sim_control) == []


# R3b: the process dies between the two voids; the sweep's way out for the second is "capture it".
def test_r3b_process_dies_between_the_voids(app, client, sim, sim_control, monkeypatch, db_session):
    from datetime import timedelta

    from app.models.base import utcnow
    from app.payments import cancellation
    from app.payments.janitor import resolve_stuck_cancels

    order = _placed(client, sim_control)
    edited = _paid_increase(client, sim_control, order, 3)
    real_void = cancellation._void
    calls = []

    class Died(BaseException):
        pass

    def die_on_second(payment, began_from, actor):
        calls.append(payment.id)
        if len(calls) == 2:
            raise Died()
        return real_void(payment, began_from, actor)

    monkeypatch.setattr(cancellation, "_void", die_on_second)
    with pytest.raises(Died):
        client.post(f"/store/orders/{order['id']}/cancel")
    monkeypatch.setattr(cancellation, "_void", real_void)
    print("\npayments after the crash:", _payments(db_session, order["id"]))
    with app.app_context():
        print("janitor resolved:", resolve_stuck_cancels(utcnow() + timedelta(hours=1), timedelta(seconds=60)))
    print("payments after the janitor:", _payments(db_session, order["id"]))
    _move_deadline(app, order["id"], -1)
    print("capture:", _capture(app, order["id"]))
    print("captures:", [(c["payment_intent"][-6:], c["amount"]) for c in captures_at_stripe(sim_control)])
    assert captures_at_stripe(sim_control) == []


# R2 (PostgreSQL): the apply locks the edit row, then the payments; the cancel / a superseding edit
# lock the payments, then the edit row: a deadlock, answered 500.
@pytest.mark.parametrize("other", ["cancel", "edit_down", "new_pending"])
def test_r2_apply_deadlocks_with_a_cancel_or_an_edit(app, client, sim, sim_control, monkeypatch, db_session,
                                                      is_postgres, other):
    if not is_postgres:
        pytest.skip("PostgreSQL row locks")
    from sqlalchemy import text

    from app.payments import transitions

    order = _placed(client, sim_control, quantities=(2,))
    pending = _pending(client, sim_control, order, 5)
    sim_control.confirm(pending["payment_intent"]["id"])
    real = transitions.payments_still_editable
    answers = {}
    main = threading.get_ident()

    def run_other():
        c = app.test_client()
        try:
            if other == "cancel":
                answers["other"] = c.post(f"/store/orders/{order['id']}/cancel").status_code
            elif other == "edit_down":
                answers["other"] = _edit(c, order, 1).status_code
            else:
                answers["other"] = _edit(c, order, 7).status_code
        except Exception as exc:  # noqa
            answers["other"] = repr(exc)

    def interleave(order_id):
        if threading.get_ident() == main and "started" not in answers:
            answers["started"] = True
            thread = threading.Thread(target=run_other)
            thread.start()
            answers["thread"] = thread
            # Wait (bounded) until the other transaction is blocked on a row lock (the edit row we hold).
            for _ in range(200):
                waiting = db_session.execute(text(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                    "and datname = current_database()")).scalar()
                if waiting:
                    break
                time.sleep(0.05)
            answers["other_blocked"] = bool(waiting)
        return real(order_id)

    monkeypatch.setattr(transitions, "payments_still_editable", interleave)
    response = _complete(client, order["id"], pending["id"])
    answers["thread"].join(timeout=30)
    print(f"\n[{other}] other blocked on our lock: {answers['other_blocked']}; complete -> {response.status_code}"
          f" {response.get_json().get('error')}; {other} -> {answers['other']}")
    print("payments:", _payments(db_session, order["id"]))
    assert response.status_code < 500 and answers["other"] < 500


# R4: staff cancel on an order whose first payment is captured and whose second failed to capture:
# only the second is voided, the order is "completed" with the first's money kept, and the
# dashboard says "Order canceled; the authorization was voided."
def test_r4_staff_cancel_of_a_partially_captured_order(app, client, sim, sim_control, db_session):
    from app.payments.cancellation import cancel_order
    from app.payments.capture import CaptureRetryLater

    order = _placed(client, sim_control)
    edited = _paid_increase(client, sim_control, order, 3)
    second = edited["payments"][1]["payment_intent_id"]
    sim_control.set_faults(script=[{"fault": "500", "method": "POST", "path_contains": f"{second}/capture",
                                    "times": 10}])
    _move_deadline(app, order["id"], -1)
    with pytest.raises(CaptureRetryLater):
        _capture(app, order["id"])
    sim_control.clear_faults()
    before = _order(client, order["id"])
    print("\nbefore staff cancel:", before["status"], before["payment_status"],
          [(p["status"], p["captured_amount"]) for p in before["payments"]])
    from app.dashboard.views import available_actions
    from app.dashboard.queries import load_order_detail
    with app.app_context():
        print("dashboard actions:", available_actions(load_order_detail(order["id"])))
        result = cancel_order(order["id"], actor="staff:ops@example.com", after_deadline=True)
        print("cancel_order returned order status:", result.status)
    after = _order(client, order["id"])
    print("after staff cancel:", after["status"], after["payment_status"], after["captured_amount"],
          [(p["status"], p["captured_amount"]) for p in after["payments"]])
    assert after["status"] == "canceled" or after["captured_amount"] == 0


# R5 (PostgreSQL): a direct edit waiting on the payment row an apply holds is answered
# 409 grace_period_expired although the grace period runs.
def test_r5_edit_during_apply_is_told_the_grace_period_is_over(app, client, sim, sim_control, monkeypatch,
                                                              db_session, is_postgres):
    if not is_postgres:
        pytest.skip("PostgreSQL row locks")
    from sqlalchemy import text

    from app.payments import transitions

    order = _placed(client, sim_control, quantities=(2,))
    pending = _pending(client, sim_control, order, 5)
    sim_control.confirm(pending["payment_intent"]["id"])
    real = transitions.payments_still_editable
    answers = {}
    main = threading.get_ident()

    def run_other():
        r = _edit(app.test_client(), order, 1)
        answers["other"] = (r.status_code, r.get_json().get("error"))

    def interleave(order_id):
        result = real(order_id)  # the apply now holds the payment row
        if threading.get_ident() == main and "started" not in answers:
            answers["started"] = True
            thread = threading.Thread(target=run_other)
            thread.start()
            answers["thread"] = thread
            for _ in range(200):
                if db_session.execute(text("select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                                           "and datname = current_database()")).scalar():
                    break
                time.sleep(0.05)
        return result

    monkeypatch.setattr(transitions, "payments_still_editable", interleave)
    response = _complete(client, order["id"], pending["id"])
    answers["thread"].join(timeout=30)
    print("\ncomplete ->", response.status_code, "; edit ->", answers["other"])
    o = _order(client, order["id"])
    print("order after:", o["total"], o["grace_period"])
    assert answers["other"][1]["code"] != "grace_period_expired"


def test_r6_bad_input(client, sim_control):
    order = _placed(client, sim_control)
    pending = _pending(client, sim_control, order, 3)
    for edit_id in ["x" * 5000, "oedit_%C3%A9", "%FF%FE", "oedit_" + "a" * 41, "..", "%20"]:
        r = client.post(f"/store/orders/{order['id']}/edits/{edit_id}/complete")
        print("complete", edit_id[:20], r.status_code)
        assert r.status_code < 500
    r = client.post(f"/store/orders/{order['id']}/edits/{pending['id']}/complete", data="garbage",
                    content_type="application/json")
    print("complete with garbage body", r.status_code)
    r = client.get(f"/store/orders/{order['id']}")
    print("pending_edit PI status shown:", r.get_json()["order"]["pending_edit"]["payment_intent"]["status"])
    sim_control.confirm(pending["payment_intent"]["id"])
    r = client.get(f"/store/orders/{order['id']}")
    print("after confirm, PI status shown:", r.get_json()["order"]["pending_edit"]["payment_intent"]["status"])


# R7 (PostgreSQL): the cancel locks the payments one by one, oldest first; the edit's
# payments_still_editable locks them in one UPDATE, in the order the scan meets them.
@pytest.mark.parametrize("edits_before", [0, 2, "p1_alone"])
def test_r7_cancel_vs_edit_lock_order(app, client, sim, sim_control, monkeypatch, db_session, is_postgres,
                                      edits_before):
    if not is_postgres:
        pytest.skip("PostgreSQL row locks")
    from sqlalchemy import text

    from app.payments import transitions

    order = _placed(client, sim_control, quantities=(2,))
    _paid_increase(client, sim_control, order, 4)
    if edits_before == "p1_alone":
        # What `edits._take_increment_attempt(p1)` does when an increase tries the first card again
        # after the second payment exists: a single-row UPDATE of p1 (a newer tuple than p2's).
        db_session.execute(text("update payments set increment_attempts = increment_attempts + 1 "
                                "where id = (select id from payments where order_id = :o order by created_at limit 1)"),
                           {"o": order["id"]})
        db_session.commit()
    else:
        for i in range(edits_before):  # edits touch the rows (updated_at): new tuple versions
            assert _edit(client, order, 3 + (i % 2)).status_code == 200
    print("\nctids:", db_session.execute(text(
        "select ctid, created_at from payments where order_id = :o order by created_at"), {"o": order["id"]}).all())
    real = transitions.begin_cancel
    answers = {}
    main = threading.get_ident()

    def run_other():
        r = _edit(app.test_client(), order, 2)
        answers["other"] = (r.status_code, (r.get_json() or {}).get("error"))

    def interleave(payment_id, from_status, **kw):
        won = real(payment_id, from_status, **kw)
        if threading.get_ident() == main and "started" not in answers:
            answers["started"] = True
            thread = threading.Thread(target=run_other)
            thread.start()
            answers["thread"] = thread
            for _ in range(200):
                if db_session.execute(text("select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                                           "and datname = current_database()")).scalar():
                    break
                time.sleep(0.05)
        return won

    monkeypatch.setattr(transitions, "begin_cancel", interleave)
    response = client.post(f"/store/orders/{order['id']}/cancel")
    answers["thread"].join(timeout=30)
    print("cancel ->", response.status_code, "; edit ->", answers["other"])
    assert response.status_code < 500 and answers["other"][0] < 500
