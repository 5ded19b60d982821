"""One order's history as a single timeline: placement, edits, Stripe's events, capture attempts, refunds, customer notices.

Every entry keeps the trace id of the request, job or event that produced it, so staff can
find the matching log lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app.dashboard.display import money
from app.dashboard.queries import OrderDetail


@dataclass(frozen=True)
class Entry:
    at: datetime
    kind: str  # order, edit, stripe, capture, refund, payment
    title: str
    detail: str = ""
    trace_id: str | None = None
    tone: str = "neutral"  # ok, warn, bad, info, neutral (the badge colour)


NOTICE_TONES = {"sent": "ok", "pending": "warn", "sending": "warn", "failed": "bad"}
ATTEMPT_TONES = {"succeeded": "ok", "reconciled": "ok", "failed": "bad", "retrying": "warn"}


def _items_text(items: list[dict]) -> str:
    return ", ".join(f"{item.get('quantity')} × {item.get('title')}" for item in items or [])


def build_timeline(detail: OrderDetail) -> list[Entry]:
    """All entries, oldest first (ties keep the order in which things are causally made)."""
    order = detail.order
    currency = order.currency
    entries: list[Entry] = []

    for session in detail.sessions:
        entries.append(Entry(
            session.created_at, "payment", f"PaymentIntent {session.stripe_payment_intent_id} created",
            f"{money(session.amount, session.currency)}; now {session.status}"
            + (f" — {session.last_error}" if session.last_error else ""),
            None, "neutral",
        ))

    # What the order was when placed: before its first edit, if any.
    first_change = detail.changes[0] if detail.changes else None
    placed_total = first_change.total_before if first_change else order.total
    placed_text = money(placed_total, currency)
    if detail.payments:
        authorized = first_change.authorized_before if first_change else detail.payments[0].amount
        placed_text += f", authorized {money(authorized, currency)}"
    entries.append(Entry(order.created_at, "order", "Order placed", placed_text, order.trace_id, "info"))

    for change in detail.changes:
        parts = [f"total {money(change.total_before, currency)} → {money(change.total_after, currency)}"]
        if change.authorized_after != change.authorized_before:
            before, after = money(change.authorized_before, currency), money(change.authorized_after, currency)
            parts.append(f"authorized {before} → {after}")
        parts.append(f"items: {_items_text(change.items_after)}")
        entries.append(Entry(change.created_at, "edit", f"Order edited (version {change.version})", "; ".join(parts),
                             change.trace_id, "info"))

    for edit in detail.edits:
        entries.append(Entry(
            edit.created_at, "edit", "Increase waits for a second payment",
            f"total {money(edit.total, currency)}: {money(edit.amount_due, currency)} due on PaymentIntent "
            f"{edit.stripe_payment_intent_id}; items: {_items_text(edit.items)}", edit.trace_id, "warn"))
        if edit.resolved_at is not None and edit.status != "applied":
            entries.append(Entry(edit.resolved_at, "edit", f"Pending increase {edit.status}", edit.resolution or "",
                                 None, "muted"))

    for event in detail.events:
        if event.processed_at is not None:
            state, tone = "processed", "neutral"
        elif event.last_error:
            first_line = event.last_error.splitlines()[0][:200]
            state, tone = f"failed after {event.attempts} attempt(s): {first_line}", "bad"
        else:
            state, tone = "not processed yet", "warn"
        entries.append(Entry(event.received_at, "stripe", f"Stripe event {event.type}", f"{event.id} — {state}",
                             event.trace_id, tone))

    for attempt in detail.attempts:
        tone = ATTEMPT_TONES.get(attempt.outcome, "neutral")
        text = f"{money(attempt.amount, currency)}, triggered by {attempt.trigger}"
        if attempt.error:
            text += f" — {attempt.error}"
        entries.append(Entry(attempt.created_at, "capture", f"Capture attempt: {attempt.outcome}", text,
                             attempt.trace_id, tone))

    for capture in detail.captures:
        entries.append(Entry(capture.created_at, "capture", f"Captured {money(capture.amount, currency)}",
                             f"by {capture.created_by}", capture.trace_id, "ok"))

    for refund in detail.refunds:
        text = f"by {refund.created_by}; {refund.status}"
        if refund.stripe_refund_id:
            text += f" ({refund.stripe_refund_id})"
        if refund.last_error:
            text += f" — {refund.last_error}"
        tone = {"succeeded": "neutral", "failed": "bad", "canceled": "bad", "pending": "warn",
                "requires_action": "warn"}.get(refund.status, "neutral")
        entries.append(Entry(refund.created_at, "refund", f"Refund {money(refund.amount, currency)}", text,
                             refund.trace_id, tone))

    for notice in detail.notices:
        # When it was written (with the change it reports), and what became of it.
        state = notice.status + (f": {notice.provider_answer}" if notice.provider_answer else "")
        entries.append(Entry(notice.created_at, "notice", f"Notice {notice.kind} to {notice.recipient}", state,
                             notice.trace_id, NOTICE_TONES.get(notice.status, "neutral")))

    for payment in detail.payments:
        if payment.canceled_at is not None:
            entries.append(Entry(payment.canceled_at, "payment", "Authorization canceled",
                                 payment.cancellation_reason or "", None, "muted"))

    entries.sort(key=lambda entry: entry.at)
    return entries
