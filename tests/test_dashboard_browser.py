"""The dashboard in a real browser: a countdown ticks down live and the order turns to captured.

The capture is the engine's own: the Redis key expires, a listener (thread) enqueues the
capture, an RQ worker (this thread, burst mode) captures at the Stripe simulator, and the
page's own refresh shows it. Needs Playwright for Python and a system Chromium; skipped otherwise.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)

from tests.engine_helpers import captures_at_stripe, drain_queues, running_listeners  # noqa: E402
from tests.helpers import place_order  # noqa: E402

# The README's screenshots are refreshed on purpose (`SCREENSHOTS_DIR=docs/screenshots make test
# PYTEST_ARGS=tests/test_dashboard_browser.py`); a plain test run leaves the tracked files alone.
SCREENSHOTS = Path(os.environ.get("SCREENSHOTS_DIR") or Path(tempfile.gettempdir()) / "dashboard-screenshots")
# The screen-width checks' own screenshots (to look at, not for the README) always go to a temporary folder.
FIT_SCREENSHOTS = Path(tempfile.gettempdir()) / "dashboard-screenshots" / "fit"
STAFF_EMAIL = "ops@example.com"
STAFF_PASSWORD = "correct horse battery staple"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def plain_http_cookies(app, monkeypatch):
    """The live server speaks plain HTTP; a `Secure` session cookie would never come back over it."""
    monkeypatch.setitem(app.config, "SESSION_COOKIE_SECURE", False)


@pytest.fixture
def staff(app):
    from app.cli import upsert_staff

    with app.app_context():
        upsert_staff(STAFF_EMAIL, STAFF_PASSWORD)


def seconds_left(text: str) -> int | None:
    match = re.fullmatch(r"(?:(\d+):)?(\d+):(\d\d) left", text.strip())
    if not match:
        return None
    hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + secs


def wait_for(predicate, page, timeout: float, step_ms: int = 100, between=None):
    """Poll `predicate` while the browser runs its timers; `between` runs on each turn (e.g. a worker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if between is not None:
            between()
        page.wait_for_timeout(step_ms)
    return predicate()


def background_orders(app, client, sim_control) -> dict:
    """A few orders in other states, so the list looks like a real day's (and the screenshot shows them)."""
    from app.payments.cancellation import cancel_order
    from app.payments.capture import capture_now
    from app.payments.refunds import refund_order

    captured = place_order(client, sim_control, currency="eur", quantities=(1,))
    canceled = place_order(client, sim_control)
    place_order(client, sim_control, currency="kwd", quantities=(2,))
    place_order(client, sim_control, currency="jpy", quantities=(3,))
    with app.app_context():
        capture_now(captured["id"], actor="staff:ops@example.com")
        refund_order(captured["id"], 1500, actor="staff:ops@example.com")
        cancel_order(canceled["id"], actor="customer")
    return {"captured": captured, "canceled": canceled}


def test_countdown_ticks_down_then_the_order_turns_captured(
    app, client, sim, sim_control, settings, live_server, browser, staff, plain_http_cookies
):
    from tests.conftest import WEBHOOK_SECRET

    # Stripe's events reach the app too, as in production (they show on the order's timeline).
    sim_control.add_webhook(f"{live_server}/webhooks/stripe", WEBHOOK_SECRET)
    background_orders(app, client, sim_control)

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    page.goto(f"{live_server}/admin/orders")
    assert "/admin/login" in page.url
    page.get_by_label("Email").fill(STAFF_EMAIL)
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/admin/orders$"))

    # Signed in: now an order with a four-second grace period, and the list that shows it.
    settings(grace_period_seconds=4)
    order = place_order(client, sim_control)
    page.reload()
    countdown = page.locator(f'tr[data-order-id="{order["id"]}"] [data-grace-ends-at]')
    with running_listeners(app):
        # The countdown goes down, second by second, without a reload.
        seen: list[int] = []

        def tick_seen() -> bool:
            left = seconds_left(countdown.text_content())
            if left is not None and (not seen or left != seen[-1]):
                seen.append(left)
            return len(seen) >= 3

        assert wait_for(tick_seen, page, timeout=6), f"countdown did not tick: {seen}"
        assert seen == sorted(seen, reverse=True) and seen[0] - seen[-1] >= 2

        # At zero the browser says so by itself...
        assert wait_for(lambda: countdown.text_content().strip() == "capturing…", page, timeout=8)
        # ...the expiry reaches the queue, a worker captures, and the list's own refresh shows it.
        assert wait_for(lambda: "captured at" in countdown.text_content(), page, timeout=20,
                        step_ms=250, between=lambda: drain_queues(app)), countdown.text_content()

    assert re.fullmatch(r"captured at \d\d:\d\d:\d\d UTC", countdown.text_content().strip())
    row = page.locator(f'tr[data-order-id="{order["id"]}"]')
    assert "Captured" in row.text_content() and "Succeeded" in row.text_content()
    [capture] = [c for c in captures_at_stripe(sim_control) if c["amount"] == order["total"]]
    assert capture["idempotency_key"].startswith("capture:")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "orders.png"), full_page=True)

    # The order page, and a partial refund through its confirmation step.
    sim.wait_for_webhooks(timeout=10)
    row.get_by_role("link", name=f"#{order['display_id']}").click()
    page.wait_for_url(re.compile(rf".*/admin/orders/{order['id']}$"))
    page.get_by_label(re.compile(r"Refund amount")).fill("10.00")
    page.get_by_role("button", name="Refund…").click()
    page.get_by_role("button", name=re.compile(r"Yes, refund 10\.00 USD")).click()
    page.wait_for_url(re.compile(rf".*/admin/orders/{order['id']}$"))
    assert page.get_by_role("status").filter(has_text="Refunded 10.00 USD.").count() == 1
    assert "Partially refunded" in page.locator(".badges").text_content()
    sim.wait_for_webhooks(timeout=10)
    page.reload()
    assert "Stripe event payment_intent.amount_capturable_updated" in page.locator(".timeline").text_content()
    page.screenshot(path=str(SCREENSHOTS / "order.png"), full_page=True)

    # A phone: the orders are cards, the countdown and capture status of the first one on screen.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                storage_state=context.storage_state())
    small = phone.new_page()
    small.goto(f"{live_server}/admin/orders")
    assert_fits_its_width(small)
    small.screenshot(path=str(SCREENSHOTS / "orders-phone.png"), full_page=False)
    phone.close()

    assert problems == [], problems  # no script errors, no Content-Security-Policy violations
    context.close()


def sign_in(page, live_server: str) -> None:
    page.goto(f"{live_server}/admin/login")
    page.get_by_label("Email").fill(STAFF_EMAIL)
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/admin/orders$"))


def assert_fits_its_width(page) -> None:
    """No sideways scrolling: the document is no wider than the screen. (Compared with the viewport
    asked for: a mobile browser zooms out to show overflowing content, widening `innerWidth` with it.)"""
    width = page.viewport_size["width"]
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= width and widths[1] <= width, f"{page.url} is {widths[0]} px wide on a {width} px screen"


def assert_on_screen(locator, page) -> None:
    """Visible, and horizontally inside the screen (a reader need not scroll sideways to it)."""
    assert locator.is_visible()
    box = locator.bounding_box()
    width = page.viewport_size["width"]
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (box, width)


LONG_EMAIL = "margaret.hamilton-apollo-guidance@software-engineering.example.com"


def order_with_long_texts(app, client, sim_control) -> dict:
    """An edited order with a long email, and a Stripe event whose processing failed with a long error."""
    from app.extensions import db
    from app.models import Payment, WebhookEvent
    from tests.helpers import add_item, new_cart, payment_intent, product_ids

    cart = new_cart(client, "usd", email=LONG_EMAIL)
    products = product_ids(client, "usd")
    add_item(client, cart["id"], products[0], 3)
    intent = payment_intent(client, cart["id"])
    sim_control.confirm(intent["id"])
    order = client.post(f"/store/carts/{cart['id']}/complete").get_json()["order"]
    edit = client.post(f"/store/orders/{order['id']}/edits", json={"items": [{"product_id": products[0], "quantity": 1}]})
    assert edit.status_code == 200, edit.get_json()
    with app.app_context():
        payment = db.session.query(Payment).filter_by(order_id=order["id"]).one()
        db.session.add(WebhookEvent(
            id="evt_browser_long_error", type="payment_intent.amount_capturable_updated", payload="{}",
            object_id=payment.stripe_payment_intent_id, attempts=3,
            last_error="StripeConnectionError: HTTPSConnectionPool(host='api.stripe.com', port=443): "
                       "Max retries exceeded with url: /v1/payment_intents/" + payment.stripe_payment_intent_id,
        ))
        db.session.commit()
    return order


@pytest.mark.parametrize("width", [360, 390, 1280])
def test_list_and_order_pages_fit_the_screen(app, client, sim_control, live_server, browser, staff,
                                             plain_http_cookies, width):
    others = background_orders(app, client, sim_control)
    order = order_with_long_texts(app, client, sim_control)
    context = browser.new_context(viewport={"width": width, "height": 860}, is_mobile=width < 700,
                                  device_scale_factor=2 if width < 700 else 1)
    page = context.new_page()
    sign_in(page, live_server)

    assert_fits_its_width(page)
    row = page.locator(f'[data-order-id="{order["id"]}"]')
    assert_on_screen(row.locator("[data-grace-ends-at]"), page)
    assert_on_screen(row.locator(".c-capture .badge"), page)
    assert_on_screen(row.locator(".c-total"), page)
    assert_on_screen(row.locator("[data-next-step]"), page)
    assert "Captures 18.00 USD at" in row.locator("[data-next-step]").text_content()
    FIT_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(FIT_SCREENSHOTS / f"orders-{width}.png"), full_page=True)

    page.goto(f"{live_server}/admin/orders/{order['id']}")
    assert_fits_its_width(page)
    assert_on_screen(page.locator("[data-grace-ends-at]"), page)
    assert_on_screen(page.locator(".badges"), page)
    items = page.locator('[aria-labelledby="items-title"] .table-wrap')
    sizes = items.evaluate("w => [w.scrollWidth, w.clientWidth]")
    assert sizes[0] <= sizes[1], f"the items table scrolls sideways: {sizes}"
    # The email wraps before its @ or a dot, or after a hyphen: never inside a word.
    email = page.locator(".facts dd.email")
    assert email.text_content() == LONG_EMAIL
    lines = page.evaluate("""el => {
        const range = document.createRange(), tops = new Map();
        for (const node of el.childNodes) {
            if (node.nodeType !== Node.TEXT_NODE) continue;
            for (let i = 0; i < node.length; i++) {
                range.setStart(node, i); range.setEnd(node, i + 1);
                const top = Math.round(range.getBoundingClientRect().top);
                tops.set(top, (tops.get(top) || "") + node.data[i]);
            }
        }
        return [...tops.values()];
    }""", email.element_handle())
    for before, line in zip(lines, lines[1:]):
        assert line[0] in "@." or before.endswith("-"), f"the email breaks inside a word: {lines}"
    page.screenshot(path=str(FIT_SCREENSHOTS / f"order-{width}.png"), full_page=True)

    for other in others.values():  # a captured (and refunded) order and a canceled one
        page.goto(f"{live_server}/admin/orders/{other['id']}")
        assert_fits_its_width(page)
        assert_on_screen(page.locator("[data-grace-ends-at]"), page)
    context.close()


def test_the_order_page_follows_a_stripe_event_until_it_is_processed(
    app, client, sim_control, live_server, browser, staff, plain_http_cookies
):
    from app.extensions import db
    from app.models import Payment, WebhookEvent
    from app.models.base import utcnow

    order = place_order(client, sim_control)
    with app.app_context():
        payment = db.session.query(Payment).filter_by(order_id=order["id"]).one()
        # Stored, not processed yet: as a webhook is for the moment between its two transactions.
        db.session.add(WebhookEvent(id="evt_browser_pending", type="charge.refunded", payload="{}",
                                    object_id=payment.stripe_payment_intent_id))
        db.session.commit()
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    polls: list[str] = []
    page.on("request", lambda request: polls.append(request.url) if request.url.endswith("/state") else None)
    sign_in(page, live_server)
    page.goto(f"{live_server}/admin/orders/{order['id']}")
    timeline = page.locator(".timeline")
    assert "evt_browser_pending — not processed yet" in timeline.text_content()
    page.evaluate("window.notReloaded = true")

    with app.app_context():
        db.session.get(WebhookEvent, "evt_browser_pending").processed_at = utcnow()
        db.session.commit()
    assert wait_for(lambda: "evt_browser_pending — processed" in timeline.text_content(), page, timeout=10), \
        timeline.text_content()
    assert page.evaluate("window.notReloaded === true")  # the page's parts were swapped, not reloaded
    # Settled: the polling stops (its first interval is one second).
    settled_at = len(polls)
    page.wait_for_timeout(2500)
    assert len(polls) == settled_at, polls
    context.close()


def test_keyboard_focus_is_visible(live_server, browser, staff, plain_http_cookies):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{live_server}/admin/login")
    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("document.activeElement.textContent.trim()") == "Skip to main content"
    page.get_by_label("Email").focus()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    context.close()
