"""Customer notices: one outbox row per change, written with it, sent once after the commit.

The Resend provider runs against a local HTTP stand-in of Resend's API (127.0.0.1 only) that
keeps Resend's idempotency semantics: a request under a key it has answered gets the first answer
and sends nothing again.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rq.job import Job
from sqlalchemy import select

from tests.engine_helpers import drain_queues, process_queued_events
from tests.helpers import deliver_and_process, event_for, paid_cart, place_order, signed_delivery
from tests.test_dashboard import csrf_from, login, text_of
from tests.test_order_increases import NO_INCREMENT, _capture, _complete, _edit, _move_deadline, _pending, _placed


# --- helpers ---------------------------------------------------------------------------------------


def notices_of(db_session, order_id: str, kind: str | None = None):
    from app.models import Notice

    db_session.expire_all()
    statement = select(Notice).where(Notice.order_id == order_id).order_by(Notice.created_at, Notice.id)
    if kind:
        statement = statement.where(Notice.kind == kind)
    return list(db_session.scalars(statement))


def kinds_of(db_session, order_id: str) -> list[str]:
    return [n.kind for n in notices_of(db_session, order_id)]


def queued_notice_jobs(app) -> list[str]:
    from app.queues import DEFAULT_QUEUE, queue

    with app.app_context():
        return [j for j in queue(DEFAULT_QUEUE).get_job_ids() if j.startswith("notice-")]


class ResendStandIn:
    """Resend's `POST /emails`, on loopback: records each request, answers from a script, and keeps
    Resend's idempotency (a key answered once is answered the same again, without a second email)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.delivered: list[dict] = []  # the emails that would reach an inbox
        self.script: list = []  # per request: "ok", "lose-answer" (accept, then drop the connection), (status, body)
        self._answers: dict[str, dict] = {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                stand_in.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                key = self.headers.get("Idempotency-Key")
                step = stand_in.script.pop(0) if stand_in.script else "ok"
                if key in stand_in._answers:
                    return self._answer(200, stand_in._answers[key])
                if isinstance(step, tuple):
                    return self._answer(*step)
                answer = {"id": f"email_{len(stand_in.delivered) + 1}"}
                stand_in.delivered.append(body)
                if key:
                    stand_in._answers[key] = answer
                if step == "lose-answer":
                    self.close_connection = True
                    self.connection.shutdown(2)  # the email went out; its answer never arrives
                    return None
                return self._answer(200, answer)

            def _answer(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def resend(settings, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    stand_in = ResendStandIn()
    settings(resend_api_key="re_test_secret_key", resend_api_base=stand_in.url)
    yield stand_in
    stand_in.stop()


@pytest.fixture
def staff_client(app, client):
    from app.cli import upsert_staff

    with app.app_context():
        upsert_staff("ops@example.com", "correct horse battery staple")
    assert login(client, "ops@example.com", "correct horse battery staple").status_code == 302
    return client


# --- one row per change, written with it -----------------------------------------------------------


def test_placing_an_order_writes_order_placed_once_and_sends_it_after_the_commit(app, client, sim_control, db_session):
    order = place_order(client, sim_control)
    [notice] = notices_of(db_session, order["id"])
    assert (notice.kind, notice.status, notice.recipient) == ("order_placed", "pending", "ada@example.com")
    assert notice.key == f"order_placed:{order['id']}"
    assert queued_notice_jobs(app) == [f"notice-{notice.id}"]
    drain_queues(app)
    [notice] = notices_of(db_session, order["id"])
    assert notice.status == "sent" and notice.provider == "outbox" and notice.sent_at is not None
    assert "no email provider configured" in notice.provider_answer


def test_webhook_and_complete_racing_write_one_order_placed(app, client, sim_control, db_session):
    cart, intent = paid_cart(client, sim_control)
    barrier, statuses = threading.Barrier(4), []

    def via_webhook():
        with app.test_client() as own:
            barrier.wait()
            event = event_for("payment_intent.amount_capturable_updated", intent["id"])
            statuses.append(signed_delivery(own, event).status_code)

    def via_complete():
        with app.test_client() as own:
            barrier.wait()
            statuses.append(own.post(f"/store/carts/{cart['id']}/complete").status_code)

    threads = [threading.Thread(target=fn) for fn in (via_webhook, via_complete, via_webhook, via_complete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(200) == 4
    process_queued_events(app)  # the worker runs the deliveries' job
    order = client.post(f"/store/carts/{cart['id']}/complete").get_json()["order"]
    assert kinds_of(db_session, order["id"]) == ["order_placed"]
    assert len(queued_notice_jobs(app)) == 1


def test_a_redelivered_webhook_writes_no_second_notice(app, client, sim_control, db_session):
    cart, intent = paid_cart(client, sim_control)
    event = event_for("payment_intent.amount_capturable_updated", intent["id"])
    assert deliver_and_process(client, event).status_code == 200
    assert deliver_and_process(client, {**event, "id": event["id"] + "x"}).status_code == 200  # the same change again
    order = client.post(f"/store/carts/{cart['id']}/complete").get_json()["order"]
    assert kinds_of(db_session, order["id"]) == ["order_placed"]


def test_the_same_change_reported_twice_inside_transactions_keeps_the_first_and_the_transaction(app, client,
                                                                                              sim_control, db_session):
    """ON CONFLICT DO NOTHING: the second report neither writes nor breaks its transaction (PostgreSQL
    would abort a transaction on a unique violation)."""
    from app.db_tx import write_transaction
    from app.models import Order, OrderChange
    from app.notices import outbox

    order = place_order(client, sim_control)
    with app.app_context():
        with write_transaction() as session:
            again = outbox.order_placed(session.get(Order, order["id"]))
            session.add(OrderChange(order_id=order["id"], version=9, items_before=[], items_after=[],
                                    total_before=1, total_after=1, authorized_before=1, authorized_after=1))
        assert again is None
    assert kinds_of(db_session, order["id"]) == ["order_placed"]
    assert db_session.query(OrderChange).filter_by(order_id=order["id"], version=9).count() == 1


def test_concurrent_reports_of_one_change_write_one_row_and_every_transaction_commits(app, client, sim_control,
                                                                                  db_session, is_postgres):
    """Six transactions report the same change at once: on PostgreSQL a check-then-insert would let two
    see no row and the second insert fail its whole transaction; ON CONFLICT DO NOTHING cannot."""
    from app.db_tx import write_transaction
    from app.models import Notice, Order, OrderChange
    from app.notices import outbox

    order = place_order(client, sim_control)
    db_session.query(Notice).filter_by(order_id=order["id"]).delete()
    db_session.commit()
    barrier, errors = threading.Barrier(6), []

    def report(version: int):
        try:
            with app.app_context():
                if not is_postgres:
                    barrier.wait(timeout=10)  # SQLite's BEGIN IMMEDIATE lets one writer in at a time
                with write_transaction() as session:
                    row = session.get(Order, order["id"])
                    if is_postgres:
                        barrier.wait(timeout=10)  # all six inside their transactions, none committed
                    outbox.order_placed(row)
                    session.add(OrderChange(order_id=order["id"], version=version, items_before=[], items_after=[],
                                            total_before=1, total_after=1, authorized_before=1, authorized_after=1))
        except Exception as exc:  # noqa: BLE001 (the test reports it)
            errors.append(repr(exc))

    threads = [threading.Thread(target=report, args=(10 + i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert kinds_of(db_session, order["id"]) == ["order_placed"]
    assert db_session.query(OrderChange).filter_by(order_id=order["id"]).count() == 6


def test_a_direct_edit_writes_order_edited_with_the_new_items_and_total(app, client, sim_control, db_session):
    order = place_order(client, sim_control)
    response = client.post(f"/store/orders/{order['id']}/edits",
                           json={"items": [{"product_id": order["items"][0]["product_id"], "quantity": 1}]})
    assert response.status_code == 200, response.get_json()
    edited = response.get_json()["order"]
    [notice] = notices_of(db_session, order["id"], "order_edited")
    assert notice.key == f"order_edited:{order['id']}:v2"
    assert notice.context["total"] == edited["total"] and notice.context["total_before"] == order["total"]
    assert [i["quantity"] for i in notice.context["items"]] == [1]


def test_an_edit_that_rolls_back_leaves_no_notice_and_queues_nothing(app, client, sim_control, db_session, monkeypatch):
    from app.notices import outbox
    from app.payments import edits

    order = place_order(client, sim_control)
    drain_queues(app)
    real = outbox.order_edited

    def written_then_failing(*args, **kwargs):
        assert real(*args, **kwargs) is not None  # the row was inserted in the edit's transaction ...
        raise RuntimeError("the edit's transaction fails after the notice was written")

    monkeypatch.setattr(edits.notices, "order_edited", written_then_failing)
    with pytest.raises(RuntimeError):
        with app.app_context():
            edits.edit_order(order["id"], [edits.EditLine(order["items"][0]["product_id"], 1)])
    assert kinds_of(db_session, order["id"]) == ["order_placed"]  # ... and went with the rollback
    assert queued_notice_jobs(app) == []


def test_a_pending_edit_writes_payment_required_then_order_edited_once_when_webhook_and_complete_race(
        app, client, sim_control, db_session):
    order = _placed(client, sim_control)
    pending = _pending(client, sim_control, order, 3)
    [required] = notices_of(db_session, order["id"], "payment_required")
    assert required.key == f"payment_required:{order['id']}:{pending['id']}"
    assert required.context["amount_due"] == pending["amount_due"]
    assert pending["payment_intent"]["client_secret"] not in json.dumps(required.context)
    sim_control.confirm(pending["payment_intent"]["id"], payment_method=NO_INCREMENT)

    barrier, statuses = threading.Barrier(4), []

    def via_webhook():
        with app.test_client() as own:
            barrier.wait()
            event = event_for("payment_intent.amount_capturable_updated", pending["payment_intent"]["id"])
            statuses.append(signed_delivery(own, event).status_code)

    def via_complete():
        with app.test_client() as own:
            barrier.wait()
            statuses.append(_complete(own, order["id"], pending["id"]).status_code)

    threads = [threading.Thread(target=fn) for fn in (via_webhook, via_complete, via_webhook, via_complete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(200) == 4
    process_queued_events(app)  # the worker runs the deliveries' job
    assert kinds_of(db_session, order["id"]) == ["order_placed", "payment_required", "order_edited"]
    [edited] = notices_of(db_session, order["id"], "order_edited")
    assert edited.context["total"] == pending["total"]


def test_the_capture_writes_one_receipt_with_what_was_released(app, client, sim_control, db_session):
    order = _placed(client, sim_control, card="pm_card_visa", quantities=(3,))
    assert _edit(client, order, 1).status_code == 200  # edited down: part of the authorization is released
    _move_deadline(app, order["id"], -1)
    assert _capture(app, order["id"]) == "captured"
    assert _capture(app, order["id"]) == "already_captured"
    [receipt] = notices_of(db_session, order["id"], "payment_captured")
    unit = order["items"][0]["unit_amount"]
    assert receipt.context["captured"] == unit and receipt.context["authorized"] == 3 * unit
    assert receipt.context["released"] == 2 * unit
    drain_queues(app)
    with app.app_context():
        from app.notices.content import render

        text = render(notices_of(db_session, order["id"], "payment_captured")[0]).text
    assert "Released (authorized but not charged)" in text


def test_a_captured_payment_reported_again_by_stripe_writes_no_second_receipt(app, client, sim, sim_control, db_session):
    from tests.helpers import stripe_client

    order = place_order(client, sim_control)
    pi = order["payments"][0]["payment_intent_id"]
    stripe_client(sim.url).v1.payment_intents.capture(pi)  # captured in Stripe's dashboard
    event = event_for("payment_intent.succeeded", pi)
    assert deliver_and_process(client, event).status_code == 200
    assert deliver_and_process(client, {**event, "id": event["id"] + "x"}).status_code == 200
    assert kinds_of(db_session, order["id"]) == ["order_placed", "payment_captured"]


def test_cancel_writes_order_canceled_once(app, client, sim_control, db_session):
    order = place_order(client, sim_control)
    assert client.post(f"/store/orders/{order['id']}/cancel").status_code == 200
    assert client.post(f"/store/orders/{order['id']}/cancel").status_code == 200
    event = event_for("payment_intent.canceled", order["payments"][0]["payment_intent_id"])
    assert deliver_and_process(client, event).status_code == 200
    [canceled] = notices_of(db_session, order["id"], "order_canceled")
    assert canceled.context["released"] == order["total"]
    assert kinds_of(db_session, order["id"]) == ["order_placed", "order_canceled"]


def test_a_refund_writes_refund_issued_once_per_refund(app, client, sim_control, db_session):
    from app.payments.refunds import refund_order

    order = place_order(client, sim_control)
    _move_deadline(app, order["id"], -1)
    _capture(app, order["id"])
    with app.app_context():
        refund_order(order["id"], 500, actor="staff:test", request_token="tok_0123456789abcdef")
        refund_order(order["id"], 500, actor="staff:test", request_token="tok_0123456789abcdef")  # resubmitted
    [refund] = notices_of(db_session, order["id"], "refund_issued")
    assert refund.context["amount"] == 500


# --- delivery --------------------------------------------------------------------------------------


def test_resend_gets_the_email_with_its_idempotency_key_and_the_notice_records_its_answer(
        app, client, sim_control, db_session, resend, settings):
    settings(storefront_order_url="https://shop.example/orders/{order_id}", mail_from="Shop <orders@shop.example>")
    order = place_order(client, sim_control)
    drain_queues(app)
    [request] = resend.requests
    assert request["path"] == "/emails"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["authorization"] == "Bearer re_test_secret_key"
    assert headers["idempotency-key"] == f"notice:order_placed:{order['id']}:0"
    body = request["body"]
    assert body["from"] == "Shop <orders@shop.example>" and body["to"] == ["ada@example.com"]
    assert body["subject"].startswith(f"Order #{order['display_id']} received: you can change it until ")
    assert "UTC (UTC+00:00)" in body["subject"]
    link = f"https://shop.example/orders/{order['id']}"
    assert link in body["text"] and f'href="{link}"' in body["html"]
    from app.money import format_amount

    assert format_amount(order["total"], "usd") in body["text"]
    [notice] = notices_of(db_session, order["id"])
    assert (notice.status, notice.provider, notice.provider_message_id) == ("sent", "resend", "email_1")


def test_a_lost_provider_answer_is_retried_under_the_same_key_and_the_email_goes_out_once(
        app, client, sim_control, db_session, resend):
    from app.notices.delivery import NoticeRetryLater, send_notice

    resend.script = ["lose-answer"]
    order = place_order(client, sim_control)
    [notice] = notices_of(db_session, order["id"])
    with app.app_context():
        with pytest.raises(NoticeRetryLater):
            send_notice(notice.id)
    assert notices_of(db_session, order["id"])[0].status == "pending"
    with app.app_context():
        assert send_notice(notice.id) == "sent"  # RQ's retry
        assert send_notice(notice.id) == "not claimed"  # a duplicate job sends nothing
    keys = [r["headers"]["Idempotency-Key"] for r in resend.requests]
    assert keys == [f"notice:order_placed:{order['id']}:0"] * 2
    assert len(resend.delivered) == 1
    assert notices_of(db_session, order["id"])[0].attempts == 2


def test_a_provider_5xx_leaves_the_notice_pending_with_its_job_scheduled_for_a_retry(
        app, client, sim_control, db_session, resend):
    from app.queues import notice_job_id

    resend.script = [(503, {"statusCode": 503, "name": "application_error", "message": "try later"})]
    order = place_order(client, sim_control)
    drain_queues(app)
    [notice] = notices_of(db_session, order["id"])
    assert notice.status == "pending" and "503" in notice.provider_answer
    with app.app_context():
        job = Job.fetch(notice_job_id(notice.id), connection=app.extensions["redis"])
        assert job.get_status() == "scheduled" and job.retries_left == 3
        from app.notices.delivery import send_notice

        assert send_notice(notice.id) == "sent"  # the retry, when its time has come
    assert notices_of(db_session, order["id"])[0].status == "sent"
    assert len(resend.delivered) == 1


def test_a_provider_4xx_is_recorded_as_failed_and_shown_to_staff(app, client, sim_control, db_session, resend,
                                                                staff_client):
    resend.script = [(422, {"statusCode": 422, "name": "validation_error", "message": "Invalid `to` field."})]
    order = place_order(client, sim_control)
    drain_queues(app)
    [notice] = notices_of(db_session, order["id"])
    assert notice.status == "failed" and "Invalid `to` field." in notice.provider_answer
    assert queued_notice_jobs(app) == []  # not retried
    page = text_of(staff_client.get("/admin/notices?status=failed"))
    assert f'data-notice-id="{notice.id}"' in page and "Invalid `to` field." in page
    assert 'data-status="sent"' not in page
    assert "re_test_secret_key" not in page


def _resend_form(staff_client, notice_id: str) -> dict:
    confirm = staff_client.get(f"/admin/notices/{notice_id}/resend")
    assert confirm.status_code == 200
    page = confirm.get_data(as_text=True)
    return {"csrf_token": csrf_from(page), "confirmed": "yes",
            "request_token": re.search(r'name="request_token" value="([^"]+)"', page).group(1)}


def test_a_failed_notice_is_resent_once_however_often_its_confirmation_is_posted(
        app, client, sim_control, db_session, resend, staff_client):
    refused = (422, {"statusCode": 422, "name": "validation_error", "message": "bad"})
    resend.script = [refused, refused]  # the first send and the first resend are refused
    order = place_order(client, sim_control)
    drain_queues(app)
    [notice] = notices_of(db_session, order["id"])
    form = _resend_form(staff_client, notice.id)
    assert staff_client.post(f"/admin/notices/{notice.id}/resend", data={**form, "csrf_token": ""}).status_code == 400
    for _ in range(2):  # a double click, or the page resubmitted after the resend failed again
        assert staff_client.post(f"/admin/notices/{notice.id}/resend", data=form).status_code == 302
        drain_queues(app)
    [notice] = notices_of(db_session, order["id"])
    assert notice.status == "failed" and notice.generation == 1
    assert staff_client.post(f"/admin/notices/{notice.id}/resend",
                             data=_resend_form(staff_client, notice.id)).status_code == 302  # a new confirmation
    drain_queues(app)
    [notice] = notices_of(db_session, order["id"])
    assert notice.status == "sent" and notice.generation == 2
    assert [r["headers"]["Idempotency-Key"] for r in resend.requests] == [
        f"notice:order_placed:{order['id']}:{generation}" for generation in range(3)]
    assert len(resend.delivered) == 1
    page = text_of(staff_client.get(f"/admin/notices/{notice.id}/resend", follow_redirects=True))
    assert "Only a failed notice can be resent; this one is sent." in page


def test_the_sweep_queues_a_notice_whose_enqueue_was_lost_after_the_commit(app, client, sim_control, db_session,
                                                                         monkeypatch):
    from app.notices import outbox
    from app.payments.sweep import sweep

    def redis_down(notice_id):
        raise ConnectionError("redis unavailable")

    monkeypatch.setattr(outbox, "enqueue_notice", redis_down)
    order = place_order(client, sim_control)  # the order stands; its notice waits
    monkeypatch.undo()
    assert queued_notice_jobs(app) == []
    [notice] = notices_of(db_session, order["id"])
    assert notice.status == "pending"
    with app.app_context():
        assert sweep().resolved["notices"] == 0  # not stuck yet
        result = sweep(now=notice.updated_at + timedelta(seconds=app.config["ENGINE"].stuck_operation_seconds + 1))
    assert result.resolved["notices"] == 1
    drain_queues(app)
    assert notices_of(db_session, order["id"])[0].status == "sent"


def test_a_notice_left_sending_by_a_dead_worker_is_sent_again_under_the_same_key(app, client, sim_control,
                                                                               db_session, resend):
    from app.models import Notice, NoticeStatus
    from app.models.base import utcnow
    from app.notices.content import render
    from app.notices.delivery import provider_key, requeue_stuck_notices
    from app.notices.mail import Email
    from app.notices.resend_provider import ResendProvider
    from app.queues import notice_job_id

    order = place_order(client, sim_control)
    [notice] = notices_of(db_session, order["id"])
    with app.app_context():
        Job.fetch(notice_job_id(notice.id), connection=app.extensions["redis"]).delete()
        # The worker claimed it and Resend sent it; then the worker died before recording that.
        content = render(notice)
        ResendProvider("re_test_secret_key", resend.url).send(Email(
            "orders@localhost", notice.recipient, content.subject, content.text, content.html, provider_key(notice)))
    db_session.query(Notice).filter_by(id=notice.id).update(
        {"status": NoticeStatus.SENDING, "claimed_at": utcnow() - timedelta(hours=1), "attempts": 1})
    db_session.commit()
    with app.app_context():
        assert requeue_stuck_notices(utcnow(), timedelta(minutes=5)) == 1
    drain_queues(app)
    [notice] = notices_of(db_session, order["id"])
    assert notice.status == "sent" and notice.attempts == 2
    assert len(resend.requests) == 2 and len(resend.delivered) == 1


# --- content ---------------------------------------------------------------------------------------


def test_zero_decimal_amounts_and_utc_times_in_the_email(app, client, sim_control, db_session):
    from app.money import format_amount
    from app.notices.content import render

    order = place_order(client, sim_control, currency="jpy")
    [notice] = notices_of(db_session, order["id"])
    with app.app_context():
        content = render(notice)
    total = format_amount(order["total"], "jpy")
    assert total.endswith(" JPY") and "." not in total.split()[0]
    assert f"Total: {total}" in content.text and total in content.html
    assert re.search(r"until \w+day \d{1,2} \w+ \d{4}, \d\d:\d\d UTC \(UTC\+00:00\)", content.text)
    assert "http" not in content.text  # no STOREFRONT_ORDER_URL: no link


def test_html_bodies_escape_what_the_customer_typed(app, client, sim_control, db_session):
    from app.db_tx import write_transaction
    from app.models import Notice
    from app.notices.content import render

    order = place_order(client, sim_control)
    [notice] = notices_of(db_session, order["id"])
    with app.app_context():
        with write_transaction() as session:
            row = session.get(Notice, notice.id)
            row.context = {**row.context, "items": [{"title": "<script>x</script>", "quantity": 1,
                                                     "unit_amount": 1, "total": 1}]}
        content = render(session.get(Notice, notice.id))
    assert "<script>" not in content.html and "&lt;script&gt;" in content.html
    assert "<script>x</script>" in content.text


# --- staff -----------------------------------------------------------------------------------------


def test_notices_page_needs_a_login(client):
    response = client.get("/admin/notices")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


def test_staff_read_the_outbox_and_the_order_timeline_shows_its_notices(app, client, sim_control, staff_client):
    order = place_order(client, sim_control)
    drain_queues(app)
    page = text_of(staff_client.get("/admin/notices"))
    assert "order_placed" in page and "ada@example.com" in page and f"#{order['display_id']}" in page
    notice_id = re.search(r'data-notice-id="([^"]+)"', page).group(1)
    detail = text_of(staff_client.get(f"/admin/notices/{notice_id}"))
    assert "You can change or cancel" in detail and "UTC (UTC+00:00)" in detail
    timeline = text_of(staff_client.get(f"/admin/orders/{order['id']}"))
    assert "Notice order_placed to ada@example.com" in timeline
    assert staff_client.get("/admin/notices/ntc_nope").status_code == 404
    assert staff_client.get("/admin/notices?status=bogus").status_code == 200


# --- SMTP ------------------------------------------------------------------------------------------


class SmtpStandIn:
    """A minimal SMTP server on loopback (EHLO, AUTH PLAIN, MAIL, RCPT, DATA): keeps each message, and
    answers RCPT with `rcpt_reply` when set (a 550 refusal, a 451 "try later")."""

    def __init__(self) -> None:
        import socketserver

        self.messages: list[dict] = []
        self.logins: list[str] = []
        self.rcpt_reply: str | None = None
        stand_in = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                self.reply("220 stand-in ESMTP")
                sender, recipients = None, []
                while True:
                    line = self.rfile.readline().decode().rstrip("\r\n")
                    verb = line.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.wfile.write(b"250-stand-in\r\n250 AUTH PLAIN\r\n")
                    elif verb == "AUTH":
                        stand_in.logins.append(line.split(" ", 2)[2])
                        self.reply("235 ok")
                    elif verb == "MAIL":
                        sender = line
                        self.reply("250 ok")
                    elif verb == "RCPT":
                        if stand_in.rcpt_reply:
                            self.reply(stand_in.rcpt_reply)
                        else:
                            recipients.append(line)
                            self.reply("250 ok")
                    elif verb == "DATA":
                        self.reply("354 go on")
                        data = []
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data.append(chunk)
                        stand_in.messages.append({"from": sender, "to": recipients, "data": b"".join(data).decode()})
                        self.reply("250 queued")
                    elif verb in ("QUIT", ""):
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 ok")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def smtp(settings):
    stand_in = SmtpStandIn()
    settings(smtp_url=f"smtp://shop%40example.com:s3cret@127.0.0.1:{stand_in.port}", mail_from="orders@shop.example")
    yield stand_in
    stand_in.stop()


def test_smtp_sends_a_multipart_message_with_the_notice_key_as_message_id(app, client, sim_control, db_session, smtp):
    import base64
    import email

    order = place_order(client, sim_control)
    drain_queues(app)
    [message] = smtp.messages
    assert base64.b64decode(smtp.logins[0]) == b"\0shop@example.com\0s3cret"
    parsed = email.message_from_string(message["data"])
    assert parsed["To"] == "ada@example.com" and parsed["From"] == "orders@shop.example"
    assert parsed.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in parsed.get_payload()] == ["text/plain", "text/html"]
    [notice] = notices_of(db_session, order["id"])
    assert notice.status == "sent" and notice.provider == "smtp" and notice.provider_message_id == parsed["Message-ID"]
    assert "s3cret" not in (notice.provider_answer or "")


def test_smtp_permanent_refusal_is_recorded_and_a_temporary_one_retried(app, client, sim_control, db_session, smtp):
    from app.notices.delivery import NoticeRetryLater, send_notice

    smtp.rcpt_reply = "451 4.3.0 try again later"
    order = place_order(client, sim_control)
    [notice] = notices_of(db_session, order["id"])
    with app.app_context():
        with pytest.raises(NoticeRetryLater):
            send_notice(notice.id)
        smtp.rcpt_reply = "550 5.1.1 no such user"
        assert send_notice(notice.id) == "failed"
    [notice] = notices_of(db_session, order["id"])
    assert notice.status == "failed" and "550 5.1.1 no such user" in notice.provider_answer
    assert smtp.messages == []
