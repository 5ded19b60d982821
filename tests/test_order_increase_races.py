"""Order increases: the windows a review forced open (R1–R8), each a regression test now.

Each pauses one operation at its dangerous point with a hook (on PostgreSQL, until the other
transaction is seen waiting on a row lock in pg_stat_activity), runs the other, and asserts what a
customer or the store would notice. Each failed before its fix (docs/reliability.md, E6–E11).
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.engine_helpers import captures_at_stripe
from tests.helpers import stripe_intent
from tests.test_order_increases import (
    _capture, _complete, _edit, _move_deadline, _order, _paid_increase, _pending, _placed,
)


def _another_waits_for_a_lock(db_session) -> bool:
    """PostgreSQL: is another connection of this database waiting for a row lock right now?"""
    from sqlalchemy import text

    return bool(db_session.execute(text(
        "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()"
    )).scalar())


def _until_another_waits_for_a_lock(db_session, seconds: float = 10) -> bool:
    """Poll (bounded) until the other request is seen blocked on our lock: the window is then open."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _another_waits_for_a_lock(db_session):
            return True
        time.sleep(0.05)
    return False


def _payments(db_session, order_id):
    from app.models import Payment
    db_session.expire_all()
    return [(p.status, p.amount) for p in db_session.query(Payment).filter_by(order_id=order_id)
            .order_by(Payment.created_at)]


# R1: an increase applied between the cancel's first read and its transaction added a payment the
# cancel never voided (it listed the payments before its transaction): the customer was told
# "canceled" and the second payment was captured at the deadline. Now the cancel lists them under
# the order's lock.
def test_r1_a_cancel_voids_a_payment_applied_a_moment_before_it(app, client, sim, sim_control, monkeypatch,
                                                                 db_session):
    from app.payments import cancellation

    order = _placed(client, sim_control)
    pending = _pending(client, sim_control, order, 3)
    sim_control.confirm(pending["payment_intent"]["id"])
    real = cancellation.require_order
    seen = []

    def apply_lands_first(order_id):
        found = real(order_id)
        if not seen:  # the webhook applies the increase, in another process, right now
            seen.append("applied")
            worker = threading.Thread(
                target=lambda: seen.append(_complete(app.test_client(), order["id"], pending["id"]).status_code))
            worker.start()
            worker.join(30)
        return found

    monkeypatch.setattr(cancellation, "require_order", apply_lands_first)
    response = client.post(f"/store/orders/{order['id']}/cancel")
    assert seen == ["applied", 200]
    assert response.status_code == 200 and response.get_json()["order"]["status"] == "canceled"
    assert [status for status, _ in _payments(db_session, order["id"])] == ["canceled", "canceled"]
    _move_deadline(app, order["id"], -1)
    _capture(app, order["id"])
    assert captures_at_stripe(sim_control) == [], "money captured on an order the customer canceled (200)"


# R1b: the same increase, applied the moment after the cancel listed the payments. The old cancel
# listed them before its transaction, so the increase got in and was missed; now the list is taken
# under the order's lock, and the increase waits for the cancel, finds the order canceled and is voided.
def test_r1b_an_increase_applied_right_after_the_cancel_listed_the_payments_is_voided(
        app, client, sim, sim_control, monkeypatch, db_session, is_postgres):

    from app.payments import cancellation

    order = _placed(client, sim_control)
    pending = _pending(client, sim_control, order, 3)
    sim_control.confirm(pending["payment_intent"]["id"])
    real = cancellation.payments_for_order
    answers: dict = {}

    def the_increase_applies_now(order_id):
        payments = real(order_id)
        if "worker" not in answers:
            worker = threading.Thread(target=lambda: answers.setdefault(
                "complete", _complete(app.test_client(), order["id"], pending["id"]).status_code))
            answers["worker"] = worker
            worker.start()
            # Until it is done, or waits for the cancel's lock (PostgreSQL shows that; SQLite's writer
            # queues on the file lock, which it does not show: give it a moment there).
            for _ in range(100):
                worker.join(0.05)
                if not worker.is_alive() or (is_postgres and _another_waits_for_a_lock(db_session)):
                    break
        return payments

    monkeypatch.setattr(cancellation, "payments_for_order", the_increase_applies_now)
    response = client.post(f"/store/orders/{order['id']}/cancel")
    answers["worker"].join(30)
    assert response.status_code == 200 and response.get_json()["order"]["status"] == "canceled"
    assert answers["complete"] in (409, 503)  # the increase found the order canceled, or busy
    assert stripe_intent(sim.url, pending["payment_intent"]["id"])["status"] == "canceled"
    _move_deadline(app, order["id"], -1)
    _capture(app, order["id"])
    assert captures_at_stripe(sim_control) == []


# R3: a cancel whose second void Stripe did not make left the first voided and restored the second,
# which was captured. Now the cancel stands once one is voided: the rest stays `canceling` and the
# sweep voids it.
def test_r3_a_cancel_whose_second_void_fails_still_stands(app, client, sim, sim_control, db_session):
    order = _placed(client, sim_control)
    edited = _paid_increase(client, sim_control, order, 3)
    second = edited["payments"][1]["payment_intent_id"]
    sim_control.set_faults(script=[{"fault": "500", "method": "POST", "path_contains": f"{second}/cancel",
                                    "times": 10}])
    response = client.post(f"/store/orders/{order['id']}/cancel")
    assert response.status_code == 503  # "being canceled": one voided, Stripe did not void the other yet
    sim_control.clear_faults()
    from datetime import timedelta

    from app.models.base import utcnow
    from app.payments.janitor import resolve_stuck_cancels

    with app.app_context():
        assert resolve_stuck_cancels(utcnow() + timedelta(hours=1), timedelta(seconds=60)) == 1
    assert _order(client, order["id"])["status"] == "canceled"
    _move_deadline(app, order["id"], -1)
    _capture(app, order["id"])
    assert captures_at_stripe(sim_control) == []


# R3b: the process died between the two voids; the sweep restored the second and it was captured.
# Now the sweep sees its sibling voided by the cancel and voids it too.
def test_r3b_a_cancel_whose_process_dies_between_the_voids_is_finished_by_the_sweep(app, client, sim, sim_control, monkeypatch, db_session):
    from datetime import timedelta

    from app.models.base import utcnow
    from app.payments import cancellation
    from app.payments.janitor import resolve_stuck_cancels

    order = _placed(client, sim_control)
    _paid_increase(client, sim_control, order, 3)
    real_void = cancellation._void
    calls = []

    class Died(BaseException):
        pass

    def die_on_second(payment, began_from, actor, **kwargs):
        calls.append(payment.id)
        if len(calls) == 2:
            raise Died()
        return real_void(payment, began_from, actor, **kwargs)

    monkeypatch.setattr(cancellation, "_void", die_on_second)
    with pytest.raises(Died):
        client.post(f"/store/orders/{order['id']}/cancel")
    monkeypatch.setattr(cancellation, "_void", real_void)
    assert [status for status, _ in _payments(db_session, order["id"])] == ["canceled", "canceling"]
    with app.app_context():  # the sweep, after STUCK_OPERATION_SECONDS: the cancel stands, the rest is voided
        assert resolve_stuck_cancels(utcnow() + timedelta(hours=1), timedelta(seconds=60)) == 1
    assert _order(client, order["id"])["status"] == "canceled"
    _move_deadline(app, order["id"], -1)
    _capture(app, order["id"])
    assert captures_at_stripe(sim_control) == []


# R2 (PostgreSQL): the apply locked the edit row, then the payments; a cancel or a superseding edit
# the payments, then the edit row: a deadlock, answered 500. Now every such transaction takes the
# order's row first (`transitions.lock_order`): the other waits, then answers as the state says.
@pytest.mark.parametrize("other", ["cancel", "edit_down", "new_pending"])
def test_r2_an_apply_and_a_cancel_or_edit_of_the_same_order_queue_instead_of_deadlocking(app, client, sim, sim_control, monkeypatch, db_session,
                                                      is_postgres, other):
    if not is_postgres:
        pytest.skip("PostgreSQL row locks")

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
            answers["other_blocked"] = _until_another_waits_for_a_lock(db_session)
        return real(order_id)

    monkeypatch.setattr(transitions, "payments_still_editable", interleave)
    response = _complete(client, order["id"], pending["id"])
    answers["thread"].join(timeout=30)
    assert response.status_code < 500 and answers["other"] < 500


# R4: staff cancel on an order whose first payment is captured and whose second failed to capture
# voided only the second and said "Order canceled" with the first's money kept. Now the dashboard
# offers no cancel there and the cancel is refused: refund instead.
def test_r4_a_partly_captured_order_cannot_be_canceled_by_staff(app, client, sim, sim_control, db_session):
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
    from app.dashboard.views import available_actions
    from app.dashboard.queries import load_order_detail
    with app.app_context():
        assert "cancel" not in available_actions(load_order_detail(order["id"]))
        from app.payments.errors import NotCancelable

        with pytest.raises(NotCancelable):
            cancel_order(order["id"], actor="staff:ops@example.com", after_deadline=True)
    after = _order(client, order["id"])
    assert after["status"] == "pending" and [p["status"] for p in after["payments"]] == ["captured", "authorized"]


# R5 (PostgreSQL): a direct edit that waited on the payment row an apply held was answered
# 409 grace_period_expired although the grace period runs. Now it waits on the order and is told
# the order changed (`edit_conflict`).
def test_r5_an_edit_that_waited_for_an_apply_is_told_the_order_changed(app, client, sim, sim_control, monkeypatch,
                                                              db_session, is_postgres):
    if not is_postgres:
        pytest.skip("PostgreSQL row locks")

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
            _until_another_waits_for_a_lock(db_session)
        return result

    monkeypatch.setattr(transitions, "payments_still_editable", interleave)
    assert _complete(client, order["id"], pending["id"]).status_code == 200
    answers["thread"].join(timeout=30)
    assert answers["other"][1]["code"] == "edit_conflict"  # not "grace period over": it runs


def test_r6_hostile_edit_ids_are_4xx(client, sim_control):
    order = _placed(client, sim_control)
    pending = _pending(client, sim_control, order, 3)
    for edit_id in ["x" * 5000, "oedit_%C3%A9", "%FF%FE", "oedit_" + "a" * 41, "..", "%20"]:
        r = client.post(f"/store/orders/{order['id']}/edits/{edit_id}/complete")
        assert r.status_code < 500
    r = client.post(f"/store/orders/{order['id']}/edits/{pending['id']}/complete", data="garbage",
                    content_type="application/json")
    assert r.status_code == 409  # not authorized yet; the body is not read
    assert r.status_code < 500


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
            _until_another_waits_for_a_lock(db_session)
        return won

    monkeypatch.setattr(transitions, "begin_cancel", interleave)
    response = client.post(f"/store/orders/{order['id']}/cancel")
    answers["thread"].join(timeout=30)
    assert response.status_code < 500 and answers["other"][0] < 500


# R8: the second payment captured outside the engine (Stripe's dashboard) after an edit down; the
# deadline's capture also took the first payment's share: more than the total. Now what was
# captured counts first and the first payment, not needed, is voided.
def test_r8_a_payment_captured_outside_the_engine_counts_first_at_the_deadline(app, client, sim, sim_control, db_session):
    from tests.helpers import deliver_and_process, event_for, stripe_client

    order = _placed(client, sim_control, quantities=(1,))
    edited = _paid_increase(client, sim_control, order, 4)
    down = _edit(client, order, 3)
    assert down.status_code == 200
    total = down.get_json()["order"]["total"]
    second = edited["payments"][1]["payment_intent_id"]
    stripe_client(sim.url).v1.payment_intents.capture(second)  # staff, in Stripe's dashboard
    assert deliver_and_process(client, event_for("payment_intent.succeeded", second)).status_code == 200
    _move_deadline(app, order["id"], -1)
    _capture(app, order["id"])
    caps = captures_at_stripe(sim_control)
    after = _order(client, order["id"])
    assert sum(c["amount"] for c in caps) == total == after["captured_amount"]
    assert [p["status"] for p in after["payments"]] == ["canceled", "captured"]  # the first was not needed
