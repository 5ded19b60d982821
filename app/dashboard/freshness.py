"""Whether an order page shows something still under way, and a token that changes when the page would.

The order page polls `GET /admin/orders/{id}/state` (static/dashboard.js) while `pending_work`
names anything: a Stripe event stored but not processed yet, a capture or cancel in flight, a
capture due now, a refund Stripe has not settled. When the token differs from the one the page
was rendered with, the page swaps in its fresh self; once nothing is pending it stops polling.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from app.dashboard.queries import OrderDetail
from app.models import PaymentStatus, RefundStatus


def pending_work(detail: OrderDetail, now: datetime) -> list[str]:
    """What on this order is still moving by itself (empty once everything is settled)."""
    reasons = []
    # A failed event is not "about to change": it is shown red and retried on its own schedule.
    if any(e.processed_at is None and not e.last_error for e in detail.events):
        reasons.append("stripe_event_unprocessed")
    # Every payment of the order, not only the latest: an order may hold more than one authorization.
    for status in (PaymentStatus.CAPTURING, PaymentStatus.CANCELING):
        if any(p.status == status for p in detail.payments):
            reasons.append(f"payment_{status}")
    if any(p.status == PaymentStatus.AUTHORIZED and p.capture_due_at <= now for p in detail.payments):
        reasons.append("capture_due")
    if any(r.status in RefundStatus.OPEN for r in detail.refunds):
        reasons.append("refund_pending")
    return reasons


def state_token(detail: OrderDetail) -> str:
    """A short digest of everything the order page shows that can change after it was rendered."""
    order = detail.order
    parts: list[object] = [order.status, order.version, order.total, len(detail.attempts), len(detail.captures)]
    parts += [(p.id, p.status, p.amount, p.captured_amount, p.refunded_amount) for p in detail.payments]
    parts += [(r.id, r.status) for r in detail.refunds]
    parts += [(e.id, e.processed_at is not None, e.attempts) for e in detail.events]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
