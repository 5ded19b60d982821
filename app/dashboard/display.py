"""How the dashboard words and formats things: status labels, money, UTC times, the grace-period countdown."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from flask import Blueprint
from markupsafe import Markup, escape

from app.dashboard.queries import OVERDUE_AFTER
from app.models import Order, Payment, PaymentStatus
from app.models.base import utcnow
from app.money import format_amount
from app.presenters import remaining_seconds

PAYMENT_STATUS_LABELS = {
    "not_paid": "Not paid",
    "awaiting": "Awaiting",
    "authorized": "Authorized",
    "partially_authorized": "Partially authorized",
    "captured": "Captured",
    "partially_captured": "Partially captured",
    "partially_refunded": "Partially refunded",
    "refunded": "Refunded",
    "canceled": "Canceled",
    "requires_action": "Requires action",
}
CAPTURE_STATUS_LABELS = {
    "scheduled": "Scheduled",
    "in_progress": "In progress",
    "succeeded": "Succeeded",
    "failed": "Failed",
    "canceled": "Canceled",
    "none": "—",
}
# Badge colours (the words are always shown too; colour is never the only signal).
PAYMENT_STATUS_TONES = {
    "not_paid": "warn",
    "authorized": "info",
    "partially_authorized": "warn",
    "captured": "ok",
    "partially_captured": "bad",
    "partially_refunded": "neutral",
    "refunded": "neutral",
    "canceled": "muted",
}
CAPTURE_STATUS_TONES = {
    "scheduled": "info",
    "in_progress": "info",
    "succeeded": "ok",
    "failed": "bad",
    "canceled": "muted",
}


def iso_ms(value: datetime) -> str:
    """ISO 8601 UTC with milliseconds and a `Z`, for `datetime=` and `data-grace-ends-at=` attributes."""
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_text(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def relative_text(value: datetime | None, now: datetime | None = None) -> str:
    """`"5 min ago"`, `"in 3 h"`: the rough distance from now."""
    if value is None:
        return ""
    delta = ((now or utcnow()) - value).total_seconds()
    future = delta < 0
    seconds = abs(delta)
    if seconds < 5:
        return "just now"
    if seconds < 90:
        amount = f"{int(seconds)} s"
    elif seconds < 90 * 60:
        amount = f"{round(seconds / 60)} min"
    elif seconds < 36 * 3600:
        amount = f"{round(seconds / 3600)} h"
    else:
        amount = f"{round(seconds / 86400)} days"
    return f"in {amount}" if future else f"{amount} ago"


def clock_text(seconds: int) -> str:
    """`3599` → `"59:59"`; an hour or more → `"1:00:00"` (static/dashboard.js formats the same way)."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class Countdown:
    """The grace-period cell: `state` drives the script (only `running` ticks), `text` is the no-JS truth."""

    ends_at: str
    state: str
    text: str
    title: str


def countdown(order: Order, payment: Payment | None, now: datetime | None = None) -> Countdown:
    now = now or utcnow()
    ends_at = iso_ms(order.grace_period_ends_at)
    ends_text = f"Grace period ends {utc_text(order.grace_period_ends_at)}"
    if payment is None:
        return Countdown(ends_at, "none", "not paid", ends_text)
    status = payment.status
    if status == PaymentStatus.AUTHORIZED:
        left = remaining_seconds(order.grace_period_ends_at, now)
        if left > 0:
            return Countdown(ends_at, "running", f"{clock_text(left)} left", ends_text)
        if payment.capture_due_at < now - OVERDUE_AFTER:
            return Countdown(ends_at, "overdue", "capture overdue", f"Due since {utc_text(payment.capture_due_at)}")
        return Countdown(ends_at, "due", "capturing…", ends_text)
    if status == PaymentStatus.CAPTURING:
        return Countdown(ends_at, "capturing", "capturing…", ends_text)
    if status == PaymentStatus.CAPTURED:
        at = payment.captured_at
        if at is None:
            return Countdown(ends_at, "captured", "captured", ends_text)
        same_day = at.astimezone(timezone.utc).date() == now.astimezone(timezone.utc).date()
        pattern = "captured at %H:%M:%S UTC" if same_day else "captured %Y-%m-%d %H:%M UTC"
        text = at.astimezone(timezone.utc).strftime(pattern)
        return Countdown(ends_at, "captured", text, f"Captured {utc_text(at)}")
    if status == PaymentStatus.CAPTURE_FAILED:
        why = payment.last_capture_error or "Stripe refused the capture"
        return Countdown(ends_at, "failed", "capture failed", why)
    if status == PaymentStatus.CANCELING:
        return Countdown(ends_at, "canceled", "canceling…", ends_text)
    return Countdown(ends_at, "canceled", "canceled", f"Canceled {utc_text(payment.canceled_at)}")


def next_step(order: Order, payment: Payment | None, now: datetime | None = None) -> str:
    """One sentence: what happens to the money next, or what happened to it."""
    now = now or utcnow()
    cur = order.currency
    if payment is None:
        return "Not paid: nothing is authorized."
    status = payment.status
    count = getattr(payment, "count", 1)
    across = f" across {count} payments" if count > 1 else ""
    if status == PaymentStatus.AUTHORIZED:
        release = payment.amount - order.total
        when = payment.capture_due_at
        text = (f"Will capture {money(order.total, cur)}{across} at {when.astimezone(timezone.utc).strftime('%H:%M UTC')}"
                f" ({relative_text(when, now)})" if when > now else f"Capture of {money(order.total, cur)}{across} is due now")
        if release > 0:
            text += f"; {money(release, cur)} of the authorization will be released"
        return text + "."
    if status == PaymentStatus.CAPTURING:
        return f"Capturing {money(order.total, cur)} now."
    if status == PaymentStatus.CAPTURED:
        text = f"Captured {money(payment.captured_amount, cur)}{across}"
        if payment.capture_shortfall:
            return text + f", {money(payment.capture_shortfall, cur)} less than the order's total: not collected."
        released = _released(payment)
        return text + (f"; {money(released, cur)} of the authorization was released." if released > 0 else ".")
    if status == PaymentStatus.CAPTURE_FAILED:
        return f"Stripe refused to capture {money(order.total, cur)}: retry the capture or cancel the order."
    if status == PaymentStatus.CANCELING:
        return "Being canceled: Stripe is voiding the authorization."
    if payment.cancellation_reason == "automatic":
        return f"The authorization of {money(payment.amount, cur)} expired before it was captured: nothing was collected."
    return f"Canceled: the authorization of {money(payment.amount, cur)} was released."


def _released(payment) -> int:
    """After a capture: what the order's authorizations no longer hold (all its payments together)."""
    return getattr(payment, "released_amount", payment.amount - payment.captured_amount)


def next_step_brief(order: Order, payment: Payment | None, now: datetime | None = None) -> str:
    """The orders list's short form of `next_step` (the countdown beside it already says how long)."""
    now = now or utcnow()
    cur = order.currency
    if payment is None:
        return "Nothing authorized"
    status = payment.status
    if status == PaymentStatus.AUTHORIZED:
        when = payment.capture_due_at
        across = f" from {payment.count} payments" if getattr(payment, "count", 1) > 1 else ""
        text = (f"Captures {money(order.total, cur)}{across} at {when.astimezone(timezone.utc).strftime('%H:%M UTC')}"
                if when > now else f"Capture of {money(order.total, cur)}{across} due now")
        release = payment.amount - order.total
        return text + (f", releases {money(release, cur)}" if release > 0 else "")
    if status == PaymentStatus.CAPTURING:
        return f"Capturing {money(order.total, cur)}"
    if status == PaymentStatus.CAPTURED:
        text = f"Captured {money(payment.captured_amount, cur)}"
        if payment.capture_shortfall:
            return text + f", {money(payment.capture_shortfall, cur)} short"
        released = _released(payment)
        return text + (f", released {money(released, cur)}" if released > 0 else "")
    if status == PaymentStatus.CAPTURE_FAILED:
        return f"Capture of {money(order.total, cur)} refused: retry or cancel"
    if status == PaymentStatus.CANCELING:
        return "Voiding the authorization"
    if payment.cancellation_reason == "automatic":
        return "Authorization expired, nothing collected"
    return f"Canceled, released {money(payment.amount, cur)}"


def money(amount: int | None, currency: str) -> str:
    return "—" if amount is None else format_amount(amount, currency)


def breakable_email(email: str) -> Markup:
    """The email, escaped, with line-break hints before its `@` and dots: a narrow screen wraps it
    there rather than mid-word (the CSS breaks inside a part only when one part alone is too wide)."""
    escaped = str(escape(email))  # no markup left but entities, which hold neither "@" nor "."
    return Markup(escaped.replace("@", "<wbr>@").replace(".", "<wbr>."))


def init_template_helpers(bp: Blueprint) -> None:
    """Filters and globals the dashboard's templates use."""
    bp.add_app_template_filter(money, "money")
    bp.add_app_template_filter(utc_text, "utc")
    bp.add_app_template_filter(iso_ms, "iso")
    bp.add_app_template_filter(relative_text, "relative")
    bp.add_app_template_filter(breakable_email, "breakable_email")

    @bp.context_processor
    def labels() -> dict:
        return {
            "PAYMENT_STATUS_LABELS": PAYMENT_STATUS_LABELS,
            "CAPTURE_STATUS_LABELS": CAPTURE_STATUS_LABELS,
            "PAYMENT_STATUS_TONES": PAYMENT_STATUS_TONES,
            "CAPTURE_STATUS_TONES": CAPTURE_STATUS_TONES,
        }

