"""The staff dashboard: sign-in and its protections, the orders list, one order's page and actions, operations."""

from __future__ import annotations

import html
import logging
import re
import time
from datetime import timedelta

import pytest
from sqlalchemy import event, select

from app.money import format_amount
from tests.engine_helpers import captures_at_stripe
from tests.helpers import place_order, stripe_intent

STAFF_EMAIL = "ops@example.com"
STAFF_PASSWORD = "correct horse battery staple"


# --- helpers -------------------------------------------------------------------------------


def csrf_from(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF field on the page"
    return match.group(1)


def login(client, email: str = STAFF_EMAIL, password: str = STAFF_PASSWORD, next_url: str | None = None, **kw):
    token = csrf_from(client.get("/admin/login", **kw).get_data(as_text=True))
    data = {"email": email, "password": password, "csrf_token": token}
    if next_url is not None:
        data["next"] = next_url
    return client.post("/admin/login", data=data, **kw)


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def order_ids_on(page: str) -> list[str]:
    return re.findall(r'<tr data-order-id="([^"]+)"', page)


def link(page: str, rel: str) -> str | None:
    match = re.search(rf'rel="{rel}" href="([^"]+)"', page)
    return html.unescape(match.group(1)) if match else None


def act(client, order_id: str, action: str, **data):
    """Go through the confirmation page and confirm; returns the order page the action redirects to."""
    query = "&".join(f"{k}={v}" for k, v in data.items())
    confirm = client.get(f"/admin/orders/{order_id}/{action}" + (f"?{query}" if query else ""))
    assert confirm.status_code == 200, confirm.status_code
    page = confirm.get_data(as_text=True)
    form = {"csrf_token": csrf_from(page), "confirmed": "yes"}
    amount = re.search(r'name="amount" value="([^"]*)"', page)
    if amount:
        form["amount"] = amount.group(1)
    response = client.post(f"/admin/orders/{order_id}/{action}", data=form)
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/admin/orders/{order_id}")
    return client.get(response.headers["Location"])


def flash_messages(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'<p class="flash flash-\w+"[^>]*>([^<]*)</p>', page)]


@pytest.fixture
def staff(app):
    from app.cli import upsert_staff

    with app.app_context():
        upsert_staff(STAFF_EMAIL, STAFF_PASSWORD)
    return STAFF_EMAIL


@pytest.fixture
def staff_client(client, staff):
    response = login(client)
    assert response.status_code == 302
    return client


def _payment_of(db_session, order_id):
    from app.models import Payment

    db_session.expire_all()
    return db_session.scalar(select(Payment).where(Payment.order_id == order_id))


def make_order(db_session, *, state: str = "authorized", email: str = "ada@example.com", total: int = 6000,
               created_at=None, currency: str = "usd"):
    """An order row set in a given payment state, written straight to the database (fast, many at once)."""
    from app.models import (
        Cart,
        DisplayIdSequence,
        Order,
        OrderItem,
        OrderStatus,
        Payment,
        PaymentCollection,
        PaymentSession,
        PaymentStatus,
        Product,
    )
    from app.models.base import utcnow

    now = utcnow()
    created_at = created_at or now
    product = db_session.scalar(select(Product).where(Product.currency == currency).limit(1))
    cart = Cart(email=email, currency=currency, completed_at=now, created_at=created_at)
    sequence = DisplayIdSequence()
    db_session.add_all([cart, sequence])
    db_session.flush()
    grace_ends = now + timedelta(hours=1)
    if state in ("overdue", "capture_failed", "captured", "partially_refunded", "refunded", "capturing_stuck"):
        grace_ends = now - timedelta(minutes=10)
    status = {"captured": OrderStatus.COMPLETED, "partially_refunded": OrderStatus.COMPLETED,
              "refunded": OrderStatus.COMPLETED, "canceled_by_customer": OrderStatus.CANCELED,
              "expired": OrderStatus.CANCELED}.get(state, OrderStatus.PENDING)
    order = Order(display_id=1000 + sequence.id, cart_id=cart.id, email=email, currency=currency, total=total,
                  grace_period_ends_at=grace_ends, status=status, created_at=created_at)
    order.items = [OrderItem(product_id=product.id, title=product.title, unit_amount=total, quantity=1, position=0)]
    db_session.add(order)
    db_session.flush()
    if state == "not_paid":
        db_session.commit()
        return order
    collection = PaymentCollection(cart_id=cart.id, order_id=order.id, currency=currency, amount=total)
    db_session.add(collection)
    db_session.flush()
    intent_id = f"pi_test{order.id[-20:]}"
    payment_session = PaymentSession(payment_collection_id=collection.id, stripe_payment_intent_id=intent_id,
                                     idempotency_key="", amount=total, currency=currency, status="authorized")
    db_session.add(payment_session)
    db_session.flush()
    payment = Payment(
        payment_collection_id=collection.id, payment_session_id=payment_session.id, order_id=order.id,
        stripe_payment_intent_id=intent_id, currency=currency, amount=total, status=PaymentStatus.AUTHORIZED,
        authorized_at=created_at, capture_due_at=grace_ends,
    )
    if state == "partially_authorized":
        payment.amount = total - 100
    elif state == "capture_failed":
        payment.status, payment.last_capture_error = PaymentStatus.CAPTURE_FAILED, "card_declined: refused"
    elif state == "capturing_stuck":
        payment.status, payment.capture_claimed_at = PaymentStatus.CAPTURING, now - timedelta(minutes=30)
    elif state in ("captured", "partially_refunded", "refunded"):
        payment.status, payment.captured_amount, payment.captured_at = PaymentStatus.CAPTURED, total, now
        payment.refunded_amount = {"captured": 0, "partially_refunded": 100, "refunded": total}[state]
    elif state == "canceled_by_customer":
        payment.status, payment.canceled_at = PaymentStatus.CANCELED, now
        payment.cancellation_reason = "canceled by customer"
    elif state == "expired":
        payment.status, payment.canceled_at, payment.cancellation_reason = PaymentStatus.CANCELED, now, "automatic"
    db_session.add(payment)
    db_session.commit()
    return order


# --- access --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/admin/", "/admin/orders", "/admin/orders?show=attention", "/admin/orders/order_x", "/admin/operations",
     "/admin/orders/order_x/capture", "/admin/orders/order_x/state"],
)
def test_every_admin_page_redirects_to_login_when_signed_out(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=")


def test_login_page_is_a_form_with_csrf_field_and_security_headers(client):
    response = client.get("/admin/login")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'name="email"' in page and 'name="password"' in page and csrf_from(page)
    assert '<label for="email">' in page and '<label for="password">' in page
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    # The policy forbids inline code, so there must be none.
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and " style=" not in page


def test_login_with_the_right_password_opens_the_dashboard(client, staff, db_session):
    from app.models import StaffUser

    with client.session_transaction() as sess:
        sess["planted"] = "by someone else"  # session fixation: nothing set before sign-in survives it
    response = login(client)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/orders"
    with client.session_transaction() as sess:
        assert "planted" not in sess
        assert set(sess.keys()) <= {"staff_id", "staff_session_version", "csrf_token", "_flashes"}
        user = db_session.scalar(select(StaffUser).where(StaffUser.email == STAFF_EMAIL))
        assert sess["staff_id"] == user.id
    assert user.last_login_at is not None and user.failed_logins == 0
    page = client.get("/admin/orders")
    assert page.status_code == 200 and STAFF_EMAIL in page.get_data(as_text=True)
    assert 'Set-Cookie' not in page.headers or "HttpOnly" in page.headers["Set-Cookie"]


def test_session_cookie_is_httponly_samesite_and_secure(client, staff):
    response = login(client)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie


def test_wrong_password_is_refused_and_counted(client, staff, db_session):
    from app.models import StaffUser

    response = login(client, password="not the password")
    assert response.status_code == 401
    assert "Wrong email or password." in text_of(response)
    with client.session_transaction() as sess:
        assert "staff_id" not in sess
    user = db_session.scalar(select(StaffUser).where(StaffUser.email == STAFF_EMAIL))
    assert user.failed_logins == 1
    assert client.get("/admin/orders").status_code == 302


def test_unknown_email_gets_the_same_answer_as_a_wrong_password(client, staff):
    response = login(client, email="nobody@example.com", password="whatever it is")
    assert response.status_code == 401 and "Wrong email or password." in text_of(response)


def test_repeated_failures_lock_the_account_even_for_the_right_password(client, staff, db_session):
    from app.models import StaffUser
    from app.models.base import utcnow

    statuses = [login(client, password=f"guess {i}").status_code for i in range(5)]
    assert statuses == [401, 401, 401, 401, 429]
    locked = login(client)
    assert locked.status_code == 429 and "Too many failed sign-in attempts" in text_of(locked)
    user = db_session.scalar(select(StaffUser).where(StaffUser.email == STAFF_EMAIL))
    assert user.locked_until is not None and user.locked_until > utcnow()
    # Once the lock has run out, the right password works again.
    user.locked_until = utcnow() - timedelta(seconds=1)
    db_session.commit()
    assert login(client).status_code == 302


def test_an_ip_that_fails_too_often_is_throttled_whatever_the_account(client, staff, monkeypatch):
    from app.dashboard import auth

    monkeypatch.setattr(auth, "IP_MAX_FAILURES", 3)
    attacker = {"environ_base": {"REMOTE_ADDR": "203.0.113.7"}}
    for i in range(3):
        assert login(client, email=f"user{i}@example.com", password="guess", **attacker).status_code == 401
    assert login(client, **attacker).status_code == 429
    # Staff elsewhere are not affected.
    assert login(client, environ_base={"REMOTE_ADDR": "198.51.100.4"}).status_code == 302


def test_passwords_are_never_logged(client, staff, caplog):
    caplog.set_level(logging.DEBUG)
    login(client, password="wrong-secret-guess")
    login(client, email="misplaced-password-in-email", password="x")
    login(client)
    logged = " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "staff login" in logged
    assert STAFF_PASSWORD not in logged and "wrong-secret-guess" not in logged
    assert "misplaced-password-in-email" not in logged


def test_login_without_csrf_token_is_400(client, staff):
    client.get("/admin/login")
    response = client.post("/admin/login", data={"email": STAFF_EMAIL, "password": STAFF_PASSWORD})
    assert response.status_code == 400
    with client.session_transaction() as sess:
        assert "staff_id" not in sess


def test_logout_needs_csrf_and_then_signs_out(staff_client):
    assert staff_client.post("/admin/logout").status_code == 400
    assert staff_client.get("/admin/orders").status_code == 200
    token = csrf_from(staff_client.get("/admin/orders").get_data(as_text=True))
    response = staff_client.post("/admin/logout", data={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/admin/login"
    assert staff_client.get("/admin/orders").status_code == 302


def test_action_without_csrf_token_is_400_and_does_nothing(staff_client, client, sim_control):
    order = place_order(client, sim_control)
    response = staff_client.post(f"/admin/orders/{order['id']}/capture", data={"confirmed": "yes"})
    assert response.status_code == 400
    assert captures_at_stripe(sim_control) == []


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/admin/orders", "//evil.example/admin", "/\\evil.example", "javascript:alert(1)",
     "/store/products", "http:/admin/orders", " //evil.example"],
)
def test_next_never_leads_off_the_dashboard(client, staff, target):
    response = login(client, next_url=target)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/orders"


def test_next_returns_to_the_page_asked_for(client, staff):
    first = client.get("/admin/operations")
    assert first.headers["Location"] == "/admin/login?next=/admin/operations"
    assert 'name="next" value="/admin/operations"' in client.get(first.headers["Location"]).get_data(as_text=True)
    response = login(client, next_url="/admin/operations")
    assert response.headers["Location"] == "/admin/operations"


# --- the orders list -----------------------------------------------------------------------


def test_list_rows_show_money_status_and_a_countdown(staff_client, client, sim_control):
    order = place_order(client, sim_control)
    jpy = place_order(client, sim_control, currency="jpy", quantities=(3,))
    page = text_of(staff_client.get("/admin/orders"))
    assert order_ids_on(page) == [jpy["id"], order["id"]]  # newest first
    row = re.search(rf'<tr data-order-id="{order["id"]}".*?</tr>', page, re.S).group(0)
    assert f"#{order['display_id']}" in row and "ada@example.com" in row.replace("<wbr>", "")
    assert format_amount(order["total"], "usd") in row  # total and authorized
    assert "Authorized" in row and "Scheduled" in row
    countdown = re.search(r'data-grace-ends-at="([^"]+)"[^>]*>([^<]+)<', row)
    assert countdown.group(1).startswith(order["grace_period"]["ends_at"][:19])
    assert re.fullmatch(r"(1:00:00|59:[0-5]\d) left", countdown.group(2))
    assert "9,600 JPY" in page  # a zero-decimal currency: no fraction


def test_list_shows_captured_and_failed_states_in_the_countdown(staff_client, db_session):
    captured = make_order(db_session, state="captured")
    failed = make_order(db_session, state="capture_failed")
    page = text_of(staff_client.get("/admin/orders"))
    captured_row = re.search(rf'<tr data-order-id="{captured.id}".*?</tr>', page, re.S).group(0)
    failed_row = re.search(rf'<tr data-order-id="{failed.id}".*?</tr>', page, re.S).group(0)
    assert re.search(r'data-state="captured"[^>]*>captured at \d\d:\d\d:\d\d UTC<', captured_row)
    assert 'data-state="failed"' in failed_row and "capture failed" in failed_row


def test_customer_text_is_escaped(staff_client, db_session):
    order = make_order(db_session, email="<script>alert(1)</script>@example.com")
    raw = staff_client.get("/admin/orders").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in raw and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "<script>alert(1)</script>" not in staff_client.get(f"/admin/orders/{order.id}").get_data(as_text=True)


STATES = ["authorized", "partially_authorized", "overdue", "capture_failed", "capturing_stuck", "captured",
          "partially_refunded", "refunded", "canceled_by_customer", "expired", "not_paid"]


@pytest.fixture
def orders_in_every_state(db_session):
    return {state: make_order(db_session, state=state, email=f"{state}@example.com").id for state in STATES}


@pytest.mark.parametrize(
    "query, expected",
    [
        ("payment_status=authorized", {"authorized", "overdue", "capture_failed", "capturing_stuck"}),
        ("payment_status=partially_authorized", {"partially_authorized"}),
        ("payment_status=captured", {"captured"}),
        ("payment_status=partially_refunded", {"partially_refunded"}),
        ("payment_status=refunded", {"refunded"}),
        ("payment_status=canceled", {"canceled_by_customer", "expired"}),
        ("payment_status=not_paid", {"not_paid"}),
        ("capture_status=scheduled", {"authorized", "partially_authorized", "overdue"}),
        ("capture_status=in_progress", {"capturing_stuck"}),
        ("capture_status=failed", {"capture_failed"}),
        ("capture_status=succeeded", {"captured", "partially_refunded", "refunded"}),
        ("capture_status=canceled", {"canceled_by_customer", "expired"}),
        ("show=grace", {"authorized", "partially_authorized", "not_paid"}),
        ("show=attention", {"overdue", "capture_failed", "capturing_stuck", "expired"}),
        ("show=attention&capture_status=failed", {"capture_failed"}),
        ("payment_status=bogus", set(STATES)),  # an unknown value is ignored, not an error
    ],
)
def test_filters(staff_client, orders_in_every_state, query, expected):
    page = text_of(staff_client.get(f"/admin/orders?{query}"))
    states = {state for state, order_id in orders_in_every_state.items() if order_id in order_ids_on(page)}
    assert states == expected


def test_needs_attention_rows_say_why(staff_client, orders_in_every_state):
    page = text_of(staff_client.get("/admin/orders?show=attention"))
    for reason in ("capture overdue", "capture failed", "capture stuck", "authorization expired before capture"):
        assert reason in page


def test_search_by_order_id_display_id_payment_intent_and_email(staff_client, db_session):
    first = make_order(db_session, email="Grace.Hopper@Example.com")
    second = make_order(db_session, email="ada@example.com")
    third = make_order(db_session, email="a_b%c@example.com")

    def found(q):
        return set(order_ids_on(text_of(staff_client.get("/admin/orders", query_string={"q": q}))))

    assert found(first.id) == {first.id}
    assert found(f"#{second.display_id}") == {second.id} == found(str(second.display_id))
    assert found(f"pi_test{third.id[-20:]}") == {third.id}
    assert found("grace.hopper") == {first.id}  # part of the email, any case
    assert found("EXAMPLE.COM") == {first.id, second.id, third.id}
    assert found("%") == {third.id} and found("a_b") == {third.id}  # wildcards are literal
    assert found("nobody") == set()
    page = text_of(staff_client.get("/admin/orders", query_string={"q": "nobody"}))
    assert "No orders match these filters." in page


def test_pagination_walks_every_order_once_newest_first(staff_client, db_session):
    from app.models.base import utcnow

    base = utcnow() - timedelta(hours=2)
    # 120 orders, three at a time sharing one created_at: the id breaks the tie.
    made = [make_order(db_session, created_at=base + timedelta(seconds=i // 3)) for i in range(120)]
    expected = [o.id for o in sorted(made, key=lambda o: (o.created_at, o.id), reverse=True)]

    seen, pages, url = [], [], "/admin/orders"
    while url:
        page = text_of(staff_client.get(url))
        assert "OFFSET" not in url.upper()
        pages.append(order_ids_on(page))
        seen.extend(pages[-1])
        url = link(page, "next")
    assert [len(p) for p in pages] == [50, 50, 20]
    assert seen == expected  # no duplicates, nothing skipped, newest first

    # Back from the last page through the "Newer" links gives the same pages.
    second = text_of(staff_client.get(link(text_of(staff_client.get("/admin/orders")), "next")))
    page = text_of(staff_client.get(link(second, "next")))
    newer = text_of(staff_client.get(link(page, "prev")))
    assert order_ids_on(newer) == pages[1]
    assert order_ids_on(text_of(staff_client.get(link(newer, "prev")))) == pages[0]


def test_a_cursor_page_is_stable_when_new_orders_arrive(staff_client, db_session):
    from app.models.base import utcnow

    base = utcnow() - timedelta(hours=1)
    for i in range(60):
        make_order(db_session, created_at=base + timedelta(seconds=i))
    first = text_of(staff_client.get("/admin/orders"))
    second_url = link(first, "next")
    before = order_ids_on(text_of(staff_client.get(second_url)))
    for _ in range(5):
        make_order(db_session)
    assert order_ids_on(text_of(staff_client.get(second_url))) == before
    assert "Newest" in text_of(staff_client.get(second_url))


def test_pagination_keeps_the_filters(staff_client, db_session):
    from app.models.base import utcnow

    base = utcnow() - timedelta(hours=1)
    for i in range(55):
        make_order(db_session, state="captured", created_at=base + timedelta(seconds=i))
    make_order(db_session, state="authorized")
    page = text_of(staff_client.get("/admin/orders?payment_status=captured"))
    nxt = link(page, "next")
    assert "payment_status=captured" in nxt
    assert len(order_ids_on(text_of(staff_client.get(nxt)))) == 5


def test_a_garbled_cursor_shows_the_first_page(staff_client, db_session):
    order = make_order(db_session)
    assert order_ids_on(text_of(staff_client.get("/admin/orders?after=%%%not-a-cursor"))) == [order.id]


def test_a_page_costs_the_same_number_of_queries_whatever_its_length(app, staff_client, db_session):
    from app.extensions import db

    def queries_for_list() -> int:
        statements = []

        def count(conn, cursor, statement, *args):
            statements.append(statement)

        with app.app_context():
            engine = db.engine
        event.listen(engine, "before_cursor_execute", count)
        try:
            assert staff_client.get("/admin/orders").status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return len([s for s in statements if s.lstrip().upper().startswith("SELECT")])

    make_order(db_session)
    one = queries_for_list()
    for _ in range(30):
        make_order(db_session)
    assert queries_for_list() == one <= 5  # staff user, orders, their payments, operations counts


def test_list_refreshes_itself_and_keeps_the_filters(staff_client):
    page = staff_client.get("/admin/orders?show=grace&q=ada").get_data(as_text=True)
    assert '<script src="/static/dashboard.js" defer></script>' in page
    assert 'id="orders-body"' in page and 'data-refresh-seconds="10"' in page
    assert '<noscript><meta http-equiv="refresh" content="30"></noscript>' in page  # no JS: same URL, same filters
    script = staff_client.get("/static/dashboard.js")
    assert "window.location.href" in script.get_data(as_text=True)
    script.close()


# --- the order page ------------------------------------------------------------------------


def test_order_page_shows_items_records_and_one_timeline(staff_client, client, sim_control):
    order = place_order(client, sim_control)
    page = text_of(staff_client.get(f"/admin/orders/{order['id']}"))
    assert f"Order #{order['display_id']}" in page
    for item in order["items"]:
        assert item["title"] in page
    assert format_amount(order["total"], "usd") in page
    for heading in ("Payment collection", "Payment sessions", "Payments", "Captures", "Refunds", "Order transactions"):
        assert f">{heading}</h3>" in page
    assert "Order placed" in page and "PaymentIntent pi_" in page
    assert re.search(r'data-grace-ends-at="[^"]+"', page)
    assert "Capture now…" in page and "Cancel order…" in page and "Refund…" not in page


def test_unknown_order_is_404(staff_client):
    assert staff_client.get("/admin/orders/order_doesnotexist").status_code == 404


def test_the_confirmation_step_comes_first(staff_client, client, sim_control):
    order = place_order(client, sim_control)
    confirm = staff_client.get(f"/admin/orders/{order['id']}/capture")
    page = text_of(confirm)
    assert confirm.status_code == 200 and "End the grace period now and capture the order total?" in page
    assert captures_at_stripe(sim_control) == []
    # A POST without the confirmation field only shows the question again.
    response = staff_client.post(f"/admin/orders/{order['id']}/capture", data={"csrf_token": csrf_from(page)})
    assert response.status_code == 200 and captures_at_stripe(sim_control) == []


def test_capture_now_captures_the_order_at_stripe(staff_client, client, sim_control, sim, db_session):
    order = place_order(client, sim_control)
    page = text_of(act(staff_client, order["id"], "capture"))
    assert f"Captured {format_amount(order['total'], 'usd')}." in flash_messages(page)
    payment = _payment_of(db_session, order["id"])
    assert payment.status == "captured" and payment.captured_amount == order["total"]
    assert stripe_intent(sim.url, payment.stripe_payment_intent_id)["status"] == "succeeded"
    [capture] = captures_at_stripe(sim_control)
    assert capture["amount"] == order["total"]
    # The capture is in the timeline and records who did it.
    assert f"by staff:{STAFF_EMAIL}" in page and "Capture attempt: succeeded" in page
    assert "captured at" in page


def test_cancel_voids_the_authorization(staff_client, client, sim_control, sim, db_session):
    order = place_order(client, sim_control)
    page = text_of(act(staff_client, order["id"], "cancel"))
    assert "Order canceled; the authorization was voided." in flash_messages(page)
    payment = _payment_of(db_session, order["id"])
    assert payment.status == "canceled"
    assert stripe_intent(sim.url, payment.stripe_payment_intent_id)["status"] == "canceled"
    assert "No action is possible in this state." in page


def test_cancel_after_the_deadline_is_allowed_for_staff(staff_client, client, sim_control, settings, db_session):
    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    time.sleep(1.1)
    page = text_of(act(staff_client, order["id"], "cancel"))
    assert "Order canceled; the authorization was voided." in flash_messages(page)
    assert _payment_of(db_session, order["id"]).status == "canceled"


def test_partial_refund(staff_client, client, sim_control, db_session):
    order = place_order(client, sim_control)
    act(staff_client, order["id"], "capture")
    page = text_of(act(staff_client, order["id"], "refund", amount="12.34"))
    assert "Refunded 12.34 USD." in flash_messages(page)
    payment = _payment_of(db_session, order["id"])
    assert payment.refunded_amount == 1234
    refunds = [op for op in sim_control.ledger()["operations"] if op["op"] == "refund"]
    assert [op["amount"] for op in refunds] == [1234]
    assert "Partially refunded" in page and "Refund 12.34 USD" in page


def test_full_refund_prefills_what_is_left(staff_client, client, sim_control, db_session):
    order = place_order(client, sim_control)
    act(staff_client, order["id"], "capture")
    confirm = text_of(staff_client.get(f"/admin/orders/{order['id']}/refund?amount="))
    assert f"Yes, refund {format_amount(order['total'], 'usd')}" in confirm
    page = text_of(act(staff_client, order["id"], "refund", amount=""))
    assert f"Refunded {format_amount(order['total'], 'usd')}." in flash_messages(page)
    assert _payment_of(db_session, order["id"]).refunded_amount == order["total"]
    assert "Refunded</span>" in page


def test_refund_of_more_than_captured_is_refused_with_a_message(staff_client, client, sim_control, db_session):
    order = place_order(client, sim_control)
    act(staff_client, order["id"], "capture")
    confirm = staff_client.get(f"/admin/orders/{order['id']}/refund?amount=1000.00")
    assert confirm.status_code == 302  # refused on the form, before any confirmation
    page = text_of(staff_client.get(confirm.headers["Location"]))
    assert [m for m in flash_messages(page) if m.startswith("Refund not made: at most")]
    assert _payment_of(db_session, order["id"]).refunded_amount == 0
    assert not [op for op in sim_control.ledger()["operations"] if op["op"] == "refund"]


@pytest.mark.parametrize("amount, message", [
    ("12.345", "USD has 2 decimal places at most."),
    ("-5", "Enter an amount such as 12.50."),
    ("1e3", "Enter an amount such as 12.50."),
    ("0.00", "The amount must be more than zero."),
])
def test_a_malformed_refund_amount_is_refused_before_anything_happens(
    staff_client, client, sim_control, amount, message
):
    order = place_order(client, sim_control)
    act(staff_client, order["id"], "capture")
    response = staff_client.get(f"/admin/orders/{order['id']}/refund", query_string={"amount": amount})
    assert response.status_code == 302
    assert f"Refund not made: {message}" in flash_messages(text_of(staff_client.get(response.headers["Location"])))


def test_refund_before_capture_is_refused_not_a_500(staff_client, client, sim_control):
    order = place_order(client, sim_control)
    page = text_of(act(staff_client, order["id"], "refund", amount="1.00"))
    assert "Only a captured payment can be refunded." in flash_messages(page)


def test_a_refused_capture_can_be_retried(staff_client, client, sim_control, db_session):
    order = place_order(client, sim_control)
    decline_once = {"fault": "card_declined", "method": "POST", "path_contains": "/capture", "times": 1}
    sim_control.set_faults(script=[decline_once])
    page = text_of(act(staff_client, order["id"], "capture"))
    [message] = flash_messages(page)
    assert message.startswith("Stripe refused the capture:") and "card_declined" in message
    assert _payment_of(db_session, order["id"]).status == "capture_failed"
    assert "Retry capture…" in page and "capture failed" in page

    page = text_of(act(staff_client, order["id"], "retry"))
    assert f"Captured {format_amount(order['total'], 'usd')}." in flash_messages(page)
    assert _payment_of(db_session, order["id"]).status == "captured"
    assert len(captures_at_stripe(sim_control)) == 1
    assert "Capture attempt: failed" in page and "Capture attempt: succeeded" in page


def test_capture_of_a_canceled_order_is_refused_with_a_message(staff_client, client, sim_control):
    order = place_order(client, sim_control)
    act(staff_client, order["id"], "cancel")
    page = text_of(act(staff_client, order["id"], "capture"))
    assert "The payment cannot be captured now (it is canceled)." in flash_messages(page)


def test_timeline_merges_edits_webhooks_captures_and_refunds_with_trace_ids(
    staff_client, client, sim_control, db_session
):
    from app.models import OrderChange, WebhookEvent

    order = place_order(client, sim_control)
    payment = _payment_of(db_session, order["id"])
    db_session.add(OrderChange(order_id=order["id"], version=2, items_before=[], items_after=[
        {"product_id": "prod_x", "title": "Ceramic mug", "unit_amount": 1800, "quantity": 3}],
        total_before=order["total"], total_after=order["total"] + 1800, authorized_before=order["total"],
        authorized_after=order["total"] + 1800, trace_id="trace-edit-1"))
    db_session.add(WebhookEvent(id="evt_dashboard_test", type="payment_intent.amount_capturable_updated", payload="{}",
                                object_id=payment.stripe_payment_intent_id, trace_id="trace-webhook-1",
                                last_error="boom: handler failed", attempts=2))
    db_session.commit()
    act(staff_client, order["id"], "capture")
    page = text_of(act(staff_client, order["id"], "refund", amount="5.00"))
    timeline = re.search(r'<ol class="timeline">.*?</ol>', page, re.S).group(0)
    titles = re.findall(r'<span class="timeline-title">([^<]+)</span>', timeline)
    # The customer's notices are in the timeline too, each at the moment its change committed.
    notices = [t for t in titles if t.startswith("Notice ")]
    assert notices == ["Notice order_placed to ada@example.com", "Notice payment_captured to ada@example.com",
                       "Notice refund_issued to ada@example.com"]
    titles = [t for t in titles if not t.startswith("Notice ")]
    placed = titles.index("Order placed")
    assert titles[placed:placed + 3] == [
        "Order placed", "Order edited (version 2)", "Stripe event payment_intent.amount_capturable_updated",
    ]
    captured = f"Captured {format_amount(order['total'], 'usd')}"
    assert set(titles[placed + 3:placed + 5]) == {"Capture attempt: succeeded", captured}
    assert titles[-1] == "Refund 5.00 USD"
    assert "trace-edit-1" in timeline and "trace-webhook-1" in timeline
    assert "failed after 2 attempt(s): boom: handler failed" in timeline
    assert "3 × Ceramic mug" in timeline


# --- operations ----------------------------------------------------------------------------


def check_on(page: str, key: str) -> tuple[str, str]:
    match = re.search(rf'<li class="check card level-(\w+)" data-check="{key}">.*?<strong>([^<]+)</strong>', page, re.S)
    assert match, f"no check {key!r}"
    return match.group(1), match.group(2)


def test_operations_panel_shows_each_figure_with_its_level(app, staff_client, db_session):
    import json

    from rq import Queue, SimpleWorker

    from app.models import WebhookEvent
    from app.models.base import utcnow
    from app.payments.listener import HEARTBEAT_KEY
    from app.payments.sweep import LAST_SWEEP_KEY

    redis = app.extensions["redis"]
    redis.hset(HEARTBEAT_KEY, mapping={"web-1:42": f"{time.time() - 2:.3f}", "old:1": f"{time.time() - 3600:.3f}"})
    redis.set(LAST_SWEEP_KEY, json.dumps({"at": utcnow().isoformat(), "enqueued": 0, "recovered": 0, "rearmed": 0,
                                          "overdue_seen": 0, "duration_ms": 1.0}))
    default = Queue("default", connection=redis)
    default.enqueue("builtins.int", "not a number")  # fails when run
    SimpleWorker([default], connection=redis).work(burst=True, logging_level="CRITICAL")
    for _ in range(3):
        default.enqueue("builtins.len", "waiting")
    make_order(db_session, state="overdue")
    make_order(db_session, state="capture_failed")
    db_session.add(WebhookEvent(id="evt_failed", type="charge.refunded", payload="{}", last_error="boom"))
    db_session.commit()

    page = text_of(staff_client.get("/admin/operations"))
    level, age = check_on(page, "listener")
    assert level == "ok" and re.fullmatch(r"\d+ s ago", age)
    assert "1 of 2 listener(s) reported within the last minute." in page
    assert check_on(page, "workers") == ("bad", "0")  # the burst worker has left
    assert check_on(page, "queue_default") == ("ok", "3")
    assert check_on(page, "queue_captures") == ("ok", "0")
    assert check_on(page, "failed_jobs") == ("warn", "1")
    assert check_on(page, "sweep")[0] == "ok"
    assert check_on(page, "overdue") == ("warn", "1")
    assert check_on(page, "capture_failed") == ("bad", "1")  # red: money is not being collected
    assert check_on(page, "failed_webhooks") == ("warn", "1")
    # The list page carries the same figures in compact form.
    summary = text_of(staff_client.get("/admin/orders"))
    assert re.search(r'class="pill level-warn"[^>]*>\s*<span class="pill-dot"[^>]*></span>\s*'
                     r'<span class="pill-label">Overdue for capture</span>\s*'
                     r'<strong class="pill-value">1</strong>', summary)


def test_operations_panel_turns_red_when_nothing_reports(staff_client):
    page = text_of(staff_client.get("/admin/operations"))
    assert check_on(page, "listener") == ("bad", "none")
    assert check_on(page, "sweep") == ("warn", "never")
    assert check_on(page, "overdue") == ("ok", "0")
    assert "Overall: <strong>problem</strong>" in page


def test_operations_thresholds_live_in_one_place():
    from app.dashboard.operations import BAD, OK, WARN, level_for

    assert [level_for("overdue_payments", n) for n in (0, 1, 9, 10)] == [OK, WARN, WARN, BAD]
    assert [level_for("listener_heartbeat_age_s", s) for s in (4, 15, 59, 60)] == [OK, WARN, WARN, BAD]


# --- parsing amounts -----------------------------------------------------------------------


@pytest.mark.parametrize("text, currency, minor", [
    ("12.34", "usd", 1234), ("12", "usd", 1200), ("0.1", "usd", 10), ("1,234.50", "usd", 123450),
    (" 7.5 ", "eur", 750), ("1500", "jpy", 1500), ("1.234", "kwd", 1234), ("0.001", "kwd", 1),
    ("999999.99", "usd", 99999999),
])
def test_amounts_are_parsed_exactly_in_minor_units(text, currency, minor):
    from app.dashboard.forms import decimal_text, parse_amount

    assert parse_amount(text, currency) == minor
    assert parse_amount(decimal_text(minor, currency), currency) == minor


@pytest.mark.parametrize("text, currency", [
    ("1.5", "jpy"), ("1.2345", "kwd"), ("", "usd"), ("1,23", "usd"), ("NaN", "usd"), ("１２", "usd"),
    ("1000000.00", "usd"),
])
def test_bad_amounts_are_refused(text, currency):
    from app.dashboard.forms import AmountError, parse_amount

    with pytest.raises(AmountError):
        parse_amount(text, currency)


def test_operations_panel_survives_redis_being_down(app, staff_client, monkeypatch):
    import redis

    # A client for a port nothing listens on: every Redis call fails at once.
    monkeypatch.setitem(app.extensions, "redis", redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2))
    response = staff_client.get("/admin/operations")
    page = text_of(response)
    assert response.status_code == 200
    assert check_on(page, "redis") == ("bad", "unreachable")
    assert check_on(page, "overdue") == ("ok", "0")  # the database figures still show
    assert staff_client.get("/admin/orders").status_code == 200


def test_a_stale_form_gets_a_friendly_400_page_with_the_security_headers(staff_client):
    response = staff_client.post("/admin/logout", data={"csrf_token": "forged"})
    assert response.status_code == 400
    assert "Form expired" in text_of(response)
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"


def test_after_logout_a_copy_of_the_signed_in_cookie_opens_nothing(app, client, staff):
    response = login(client)
    cookie = re.search(r"session=([^;]+)", response.headers["Set-Cookie"]).group(1)
    copy = app.test_client()
    copy.set_cookie("session", cookie)  # e.g. taken from a shared computer's browser
    assert copy.get("/admin/orders").status_code == 200
    token = csrf_from(client.get("/admin/orders").get_data(as_text=True))
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert copy.get("/admin/orders").status_code == 302  # to the login page


def test_a_new_password_ends_the_sessions_issued_before(app, client, staff):
    from app.cli import upsert_staff

    assert login(client).status_code == 302
    with app.app_context():
        upsert_staff(STAFF_EMAIL, "a brand new passphrase of staff")
    assert client.get("/admin/orders").status_code == 302


def test_concurrent_wrong_passwords_never_get_more_checks_than_the_limit(app, staff, monkeypatch):
    import threading

    from app.dashboard.auth import LOCK_AFTER_FAILURES
    from app.models import StaffUser

    checks = []
    real_check = StaffUser.check_password

    def counted(self, password):
        checks.append(password)
        return real_check(self, password)

    monkeypatch.setattr(StaffUser, "check_password", counted)
    barrier = threading.Barrier(12)

    def guess(i: int):
        own = app.test_client()
        token = csrf_from(own.get("/admin/login").get_data(as_text=True))
        barrier.wait()
        own.post("/admin/login", data={"email": STAFF_EMAIL, "password": f"guess {i}", "csrf_token": token},
                 environ_base={"REMOTE_ADDR": f"10.0.0.{i}"})

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(checks) <= LOCK_AFTER_FAILURES


def test_a_refund_above_what_can_be_refunded_is_refused_before_the_confirmation(app, staff_client, client,
                                                                                  sim_control):
    from app.payments.capture import capture_now

    order = place_order(client, sim_control)
    with app.app_context():
        capture_now(order["id"], actor="staff:ops@example.com")
    response = staff_client.get(f"/admin/orders/{order['id']}/refund?amount=100000.00")
    assert response.status_code == 302  # back to the order: no "Yes, refund" button to press
    page = text_of(staff_client.get(response.headers["Location"]))
    assert "Refund not made: at most" in page


def test_a_failed_capture_is_red_on_the_operations_panel_and_links_to_its_orders(app, staff_client, client,
                                                                                sim_control):
    from app.payments.capture import capture_now

    order = place_order(client, sim_control)
    sim_control.set_faults(script=[{"fault": "card_declined", "method": "POST", "path_contains": "/capture",
                                    "times": 1}])
    with app.app_context():
        capture_now(order["id"], actor="staff:ops@example.com")
    page = staff_client.get("/admin/operations").get_data(as_text=True)
    card = re.search(r'<li class="check card level-(\w+)" data-check="capture_failed">(.*?)</li>', page, re.S)
    assert card.group(1) == "bad"
    link = html.unescape(re.search(r'href="([^"]+)"', card.group(2)).group(1))
    assert order["id"] in staff_client.get(link).get_data(as_text=True)
    assert ".py" not in page  # no source file names on pages


def test_the_order_page_says_what_happens_to_the_money_next(app, staff_client, client, sim_control):
    from app.payments.capture import capture_now

    order = place_order(client, sim_control)
    products = [item["product_id"] for item in order["items"]]
    edit = client.post(f"/store/orders/{order['id']}/edits", json={"items": [{"product_id": products[0], "quantity": 1}]})
    total = edit.get_json()["order"]["total"]
    page = text_of(staff_client.get(f"/admin/orders/{order['id']}"))
    step = re.search(r'data-next-step>([^<]+)<', page).group(1)
    released = order["total"] - total
    assert step.startswith(f"Will capture {total // 100}.{total % 100:02d} USD at ") and re.search(r"\(in \d+ min\)", step)
    assert f"{released // 100}.{released % 100:02d} USD of the authorization will be released" in step
    with app.app_context():
        capture_now(order["id"], actor="staff:ops@example.com")
    page = text_of(staff_client.get(f"/admin/orders/{order['id']}"))
    step = re.search(r'data-next-step>([^<]+)<', page).group(1)
    assert step.startswith(f"Captured {total // 100}.{total % 100:02d} USD;") and "was released" in step


def test_the_order_page_says_while_a_stripe_event_is_unprocessed_and_its_state_changes_once_processed(
    staff_client, client, sim_control, db_session
):
    from app.models import WebhookEvent
    from app.models.base import utcnow

    order = place_order(client, sim_control)
    payment = _payment_of(db_session, order["id"])
    page = text_of(staff_client.get(f"/admin/orders/{order['id']}"))
    assert "data-pending" not in page  # settled: the page does not poll
    db_session.add(WebhookEvent(id="evt_pending_on_page", type="charge.refunded", payload="{}",
                                object_id=payment.stripe_payment_intent_id))
    db_session.commit()

    page = text_of(staff_client.get(f"/admin/orders/{order['id']}"))
    assert 'data-pending="stripe_event_unprocessed"' in page
    state = staff_client.get(f"/admin/orders/{order['id']}/state")
    assert state.status_code == 200 and state.headers["Cache-Control"] == "no-store"
    pending = state.get_json()
    assert pending["pending"] == ["stripe_event_unprocessed"]
    assert f'data-state-token="{pending["token"]}"' in page  # the page knows which state it shows

    event = db_session.get(WebhookEvent, "evt_pending_on_page")
    event.processed_at = utcnow()
    db_session.commit()
    settled = staff_client.get(f"/admin/orders/{order['id']}/state").get_json()
    assert settled["pending"] == [] and settled["token"] != pending["token"]


def test_the_order_state_of_an_unknown_order_is_404(staff_client):
    assert staff_client.get("/admin/orders/order_nope/state").status_code == 404


def test_the_payment_collection_shows_the_total_after_an_edit_not_the_checkout_amount(
    staff_client, client, sim_control
):
    order = place_order(client, sim_control)  # 2 × mug + 1 × the second product
    products = [item["product_id"] for item in order["items"]]
    edit = client.post(f"/store/orders/{order['id']}/edits", json={"items": [{"product_id": products[0], "quantity": 1}]})
    total = edit.get_json()["order"]["total"]
    assert total < order["total"]
    page = text_of(staff_client.get(f"/admin/orders/{order['id']}"))
    amount = re.search(r"<h3>Payment collection</h3>.*?<dt>Amount</dt><dd[^>]*>(.*?)</dd>", page, re.S).group(1)
    amount = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", amount)).strip()
    # The edit kept the collection's own amount in step; nothing shows the stale checkout amount.
    assert amount == f"{format_amount(total, 'usd')} the order's total now"
    assert format_amount(order["total"], "usd") not in amount


@pytest.mark.parametrize("state, pending", [
    ("authorized", []), ("overdue", ["capture_due"]), ("capturing_stuck", ["payment_capturing"]),
    ("captured", []), ("capture_failed", []), ("canceled_by_customer", []),
])
def test_the_order_page_polls_only_while_something_is_under_way(staff_client, db_session, state, pending):
    order = make_order(db_session, state=state)
    assert staff_client.get(f"/admin/orders/{order.id}/state").get_json()["pending"] == pending
    page = text_of(staff_client.get(f"/admin/orders/{order.id}"))
    assert ("data-pending=" in page) == bool(pending)
