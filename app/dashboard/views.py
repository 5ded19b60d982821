"""Dashboard views: sign-in, the orders list, one order with its actions, the operations panel."""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass

from flask import Blueprint, abort, flash, g, jsonify, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError

from app.dashboard.auth import authenticate, current_staff, end_session, safe_next_url, start_session
from app.dashboard.display import countdown, init_template_helpers, money, next_step, next_step_brief
from app.dashboard.forms import (
    CAPTURE_STATUSES,
    PAYMENT_STATUSES,
    SHOW_CHOICES,
    AmountError,
    ListFilters,
    decimal_text,
    parse_amount,
)
from app.dashboard.freshness import pending_work, state_token
from app.dashboard.operations import operations_checks, overall_level
from app.dashboard.queries import OrderDetail, list_orders, load_order_detail
from app.dashboard.timeline import build_timeline
from app.errors import ApiError
from app.extensions import db
from app.models import Order, OrderStatus, PaymentStatus, RefundStatus
from app.models.base import utcnow
from app.payments.cancellation import cancel_order
from app.payments.capture import CaptureOutcome, capture_now, retry_failed_capture
from app.payments.errors import DomainError
from app.payments.provider_errors import PaymentProviderError
from app.payments.order_payments import OrderPayments, allocate
from app.payments.refunds import refund_order
from app.presenters import capture_status, payment_status

bp = Blueprint("dashboard", __name__, url_prefix="/admin")

log = logging.getLogger(__name__)

init_template_helpers(bp)

PUBLIC_ENDPOINTS = {"dashboard.login"}
# The list refreshes itself this often (static/dashboard.js; a <noscript> meta refresh without JS).
REFRESH_SECONDS = 10

SECURITY_HEADERS = {
    # Scripts and styles only from our own static files: no inline script, no CDN.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Order data and CSRF tokens must not stay in shared caches or the back-forward cache.
    "Cache-Control": "no-store",
}


@bp.before_request
def require_staff():
    """Every dashboard page but the sign-in form needs a signed-in staff user."""
    g.staff = current_staff()
    if g.staff is not None or request.endpoint in PUBLIC_ENDPOINTS:
        return None
    target = request.full_path.rstrip("?") if request.method == "GET" else None
    return redirect(url_for("dashboard.login", next=safe_next_url(target)))


@bp.after_request
def security_headers(response):
    """Every dashboard response: a strict CSP (static JS only), no framing, no sniffing, no caching."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@bp.errorhandler(CSRFError)
def csrf_failed(error: CSRFError):
    """A form without a valid CSRF token (or an expired one): 400, with a way back."""
    log.info("dashboard form refused", extra={"reason": error.description, "path": request.path})
    return render_template("admin/error.html", title="Form expired", message=(
        "The form could not be accepted because its security token is missing or has expired. "
        "Go back, reload the page and try again."
    )), 400


def _actor() -> str:
    return f"staff:{g.staff.email}"


# --- sign-in ------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in with email and password."""
    next_url = safe_next_url(request.values.get("next"))
    if request.method == "GET":
        if g.staff is not None:
            return redirect(next_url or url_for("dashboard.orders"))
        return render_template("admin/login.html", next_url=next_url, email="")

    email = (request.form.get("email") or "").strip()[:254]
    password = (request.form.get("password") or "")[:1024]
    if not email or not password:
        return render_template("admin/login.html", next_url=next_url, email=email,
                               error="Enter your email and password."), 400
    result = authenticate(email, password, request.remote_addr or "unknown")
    if result.user is None:
        status = 429 if result.throttled else 401
        return render_template("admin/login.html", next_url=next_url, email=email, error=result.error), status
    start_session(result.user)
    return redirect(next_url or url_for("dashboard.orders"))


@bp.post("/logout")
def logout():
    """Sign out (a POST with the CSRF token, so no other site can sign staff out)."""
    if g.staff is not None:
        log.info("staff logout", extra={"staff_id": g.staff.id})
    end_session()
    flash("You are signed out.", "info")
    return redirect(url_for("dashboard.login"))


@bp.get("/")
def index():
    """The dashboard's home is the orders list."""
    return redirect(url_for("dashboard.orders"))


# --- orders -------------------------------------------------------------------------------


@bp.get("/orders")
def orders():
    """Orders, newest first, with filters, search and keyset pagination; refreshes itself."""
    filters = ListFilters.from_args(request.args)
    now = utcnow()
    page = list_orders(filters, now, after=request.args.get("after"), before=request.args.get("before"))
    checks = operations_checks(now)
    countdowns = {row.order.id: countdown(row.order, row.payment, now) for row in page.rows}
    next_steps = {row.order.id: next_step_brief(row.order, row.payment, now) for row in page.rows}
    return render_template(
        "admin/orders.html",
        filters=filters,
        page=page,
        countdowns=countdowns,
        next_steps=next_steps,
        checks=checks,
        overall=overall_level(checks),
        now=now,
        refresh_seconds=REFRESH_SECONDS,
        payment_statuses=PAYMENT_STATUSES,
        capture_statuses=CAPTURE_STATUSES,
        show_choices=SHOW_CHOICES,
    )


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    question: str
    danger: bool = False


ACTIONS = {
    "capture": Action("capture", "Capture now", "End the grace period now and capture the order total?"),
    "cancel": Action("cancel", "Cancel order", "Cancel the order and void its authorization? This cannot be undone.",
                     danger=True),
    "refund": Action("refund", "Refund", "Refund this amount to the customer's card? This cannot be undone.",
                     danger=True),
    "retry": Action("retry", "Retry capture", "Try the failed capture again?"),
}


def available_actions(detail: OrderDetail) -> list[str]:
    """What staff may do now (the domain functions decide again, under their own locks)."""
    payment = detail.payment
    if payment is None:
        return []
    # Part captured (an order of two payments): cancel would keep that money; refund it instead.
    cancel = [] if payment.captured_amount else ["cancel"]
    if payment.status == PaymentStatus.AUTHORIZED:
        return ["capture", *cancel]
    if payment.status == PaymentStatus.CAPTURE_FAILED:
        return ["retry", *cancel]
    if payment.status == PaymentStatus.CAPTURED and payment.refundable_amount > 0:
        return ["refund"]
    return []


@bp.get("/orders/<order_id>")
def order(order_id: str):
    """One order: items, totals, payment records, one timeline, and the actions staff may take."""
    detail = load_order_detail(order_id)
    if detail is None:
        abort(404)
    now = utcnow()
    return render_template(
        "admin/order.html",
        pending=pending_work(detail, now),
        state_token=state_token(detail),
        detail=detail,
        order=detail.order,
        payment=detail.payment,
        countdown=countdown(detail.order, detail.payment, now),
        next_step=next_step(detail.order, detail.payment, now),
        payment_status_word=payment_status(detail.order, detail.payment),
        capture_status_word=capture_status(detail.payment) if detail.payment else "none",
        timeline=build_timeline(detail),
        # What each payment gives at the deadline (the final total, oldest payment first).
        shares=allocate(detail.order.total, detail.payments),
        actions=[ACTIONS[name] for name in available_actions(detail)],
        refundable_text=decimal_text(detail.payment.refundable_amount, detail.order.currency)
        if detail.payment is not None and detail.payment.refundable_amount > 0 else "",
        now=now,
    )


@bp.get("/orders/<order_id>/state")
def order_state(order_id: str):
    """What is still under way on the order, and a token of what its page shows (the page polls it)."""
    detail = load_order_detail(order_id)
    if detail is None:
        abort(404)
    return jsonify({"pending": pending_work(detail, utcnow()), "token": state_token(detail)})


@bp.route("/orders/<order_id>/<any(capture, cancel, refund, retry):action>", methods=["GET", "POST"])
def order_action(order_id: str, action: str):
    """GET: the confirmation step. POST (with `confirmed=yes`): do it, then back to the order (PRG)."""
    detail = load_order_detail(order_id)
    if detail is None:
        abort(404)
    back = redirect(url_for("dashboard.order", order_id=order_id))
    amount = None
    if action == "refund":
        text = request.values.get("amount", "")
        if not text.strip() and request.method == "GET" and detail.payment is not None:
            text = decimal_text(detail.payment.refundable_amount, detail.order.currency)
        try:
            amount = parse_amount(text, detail.order.currency)
        except AmountError as exc:
            flash(f"Refund not made: {exc}", "error")
            return back
        captured = detail.payment is not None and detail.payment.status == PaymentStatus.CAPTURED
        refundable = detail.payment.refundable_amount if captured else 0
        if request.method == "GET" and captured and amount > refundable:
            # Refused on the form, before a confirmation that could only fail (the domain checks again).
            flash(f"Refund not made: at most {money(refundable, detail.order.currency)} can be refunded.", "error")
            return back

    if request.method == "GET" or request.form.get("confirmed") != "yes":
        return render_template(
            "admin/confirm.html",
            detail=detail,
            order=detail.order,
            payment=detail.payment,
            action=ACTIONS[action],
            amount=amount,
            amount_text=decimal_text(amount, detail.order.currency) if amount is not None else "",
            # One token per confirmation page: posting it twice (double click, resubmit) acts once.
            request_token=secrets.token_urlsafe(18),
        )

    token = request.form.get("request_token", "")
    token = token if _REQUEST_TOKEN.fullmatch(token) else None
    try:
        message, category = _perform(action, detail, amount, token)
    except (ApiError, DomainError, PaymentProviderError) as exc:
        message, category = exc.message, "error"
    log.info("staff action", extra={"action": action, "order_id": order_id, "staff_id": g.staff.id,
                                    "amount": amount, "result": category})
    flash(message, category)
    return back


_REQUEST_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _perform(action: str, detail: OrderDetail, amount: int | None, token: str | None) -> tuple[str, str]:
    order_id, currency = detail.order.id, detail.order.currency
    if action == "refund":
        return _refund_message(refund_order(order_id, amount, actor=_actor(), request_token=token), currency)
    if action == "cancel":
        already = detail.order.status == OrderStatus.CANCELED
        cancel_order(order_id, actor=_actor(), after_deadline=True)
        return ("The order was already canceled." if already else
                "Order canceled; the authorization was voided."), "info" if already else "success"
    if action == "capture":
        outcome = capture_now(order_id, actor=_actor())
    else:
        outcome = retry_failed_capture(order_id, actor=_actor())
    return _capture_message(order_id, outcome, currency)


def _refund_message(parts: list, currency: str) -> tuple[str, str]:
    """One line for a refund, however many payments it drew on."""
    done = sum(r.amount for r in parts if r.status == RefundStatus.SUCCEEDED)
    pending = sum(r.amount for r in parts if r.status in RefundStatus.OPEN)
    failed = [r for r in parts if r.status not in RefundStatus.OPEN and r.status != RefundStatus.SUCCEEDED]
    split = f" across {len(parts)} payments" if len(parts) > 1 else ""
    if failed:
        why = "; ".join(r.last_error or r.status for r in failed)
        lead = f"Refunded {money(done, currency)}{split}, but " if done else "The refund of "
        return f"{lead}{money(sum(r.amount for r in failed), currency)} failed: {why}", "error"
    if pending:
        return f"The refund of {money(done + pending, currency)}{split} is pending at Stripe.", "info"
    return f"Refunded {money(done, currency)}{split}.", "success"


def _capture_message(order_id: str, outcome: str, currency: str) -> tuple[str, str]:
    db.session.expire_all()
    order = db.session.get(Order, order_id)
    payment = OrderPayments.of(order)
    if outcome == CaptureOutcome.CAPTURED:
        return f"Captured {money(payment.captured_amount, currency)}.", "success"
    if outcome == CaptureOutcome.ALREADY_CAPTURED:
        return "The payment was already captured.", "info"
    if outcome == CaptureOutcome.FAILED:
        return f"Stripe refused the capture: {payment.last_capture_error or 'no reason given'}", "error"
    if outcome == CaptureOutcome.CANCELED:
        return "The authorization was canceled at Stripe; nothing was captured.", "error"
    if outcome == CaptureOutcome.RETRYING:
        return "Stripe did not answer; the capture is queued and will be retried.", "info"
    status = payment.status.replace("_", " ") if payment else "without payment"
    return f"The payment cannot be captured now (it is {status}).", "error"


# --- operations ---------------------------------------------------------------------------


@bp.get("/operations")
def operations():
    """Health of the capture machinery: listener, workers, queues, sweep, overdue and failed work."""
    now = utcnow()
    checks = operations_checks(now)
    return render_template("admin/operations.html", checks=checks, overall=overall_level(checks), now=now)
