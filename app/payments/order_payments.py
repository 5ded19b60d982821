"""An order's payments seen together: how its total is split over them, and what they add up to.

An order has one payment, or more once an increase was paid with a second authorization
(`app.payments.pending_edits`). The capture takes the final total from the authorized payments
oldest first (`allocate`); refunds give money back newest first (`refund_parts`). `OrderPayments`
summarises the payments with the attributes of one `Payment` (status, amount, captured amount,
deadline, last error, ...), so an order with one payment reads exactly as that payment does, and
the presenters and the dashboard need not know how many there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from app.extensions import db
from app.models import Payment, PaymentStatus

S = PaymentStatus

# Which status the summary shows when the payments disagree: whatever still needs the engine or a
# person comes first (a failed capture beside a captured payment is a failure, not a success).
_PRECEDENCE = (S.CAPTURE_FAILED, S.CAPTURING, S.CANCELING, S.AUTHORIZED, S.CAPTURED, S.CANCELED)


def payments_for_order(order_id: str) -> list[Payment]:
    """The order's payments, oldest first (the order the capture allocates in)."""
    return list(db.session.scalars(
        select(Payment).where(Payment.order_id == order_id).order_by(Payment.created_at, Payment.id)
    ))


def allocate(total: int, payments: list[Payment]) -> dict[str, int]:
    """What to capture from each payment: what the captured ones took counts first (a payment may
    have been captured outside the engine), then the rest of the total is taken from the uncaptured
    live ones oldest first, each at most its authorized amount; 0 for a payment the total does not
    need (it is voided)."""
    live = [p for p in payments if p.status != S.CANCELED]
    shares = {p.id: p.captured_amount for p in live if p.status == S.CAPTURED}
    left = total - sum(shares.values())
    for payment in live:
        if payment.status == S.CAPTURED:
            continue
        shares[payment.id] = max(0, min(left, payment.amount))
        left -= shares[payment.id]
    return shares


def refund_parts(amount: int, payments: list[Payment]) -> list[tuple[Payment, int]]:
    """`amount` split over the captured payments newest first, never more than each has left."""
    parts = []
    left = amount
    for payment in reversed(payments):
        if left <= 0:
            break
        if payment.status != S.CAPTURED or payment.refundable_amount <= 0:
            continue
        share = min(left, payment.refundable_amount)
        parts.append((payment, share))
        left -= share
    return parts


@dataclass(frozen=True)
class OrderPayments:
    """The order's payments (oldest first) read as one payment."""

    payments: tuple[Payment, ...]
    total: int

    @classmethod
    def of(cls, order, payments: list[Payment] | None = None) -> "OrderPayments | None":
        payments = payments if payments is not None else payments_for_order(order.id)
        return cls(tuple(payments), order.total) if payments else None

    @property
    def count(self) -> int:
        return len(self.payments)

    @property
    def live(self) -> tuple[Payment, ...]:
        """The payments not canceled (all of them when every one is)."""
        live = tuple(p for p in self.payments if p.status != S.CANCELED)
        return live or self.payments

    @property
    def id(self) -> str:
        return self.payments[0].id

    @property
    def status(self) -> str:
        statuses = {p.status for p in self.live}
        return next(s for s in _PRECEDENCE if s in statuses)

    @property
    def amount(self) -> int:
        return sum(p.amount for p in self.live)

    @property
    def captured_amount(self) -> int:
        return sum(p.captured_amount for p in self.payments)

    @property
    def refunded_amount(self) -> int:
        return sum(p.refunded_amount for p in self.payments)

    @property
    def refundable_amount(self) -> int:
        return self.captured_amount - self.refunded_amount

    @property
    def released_amount(self) -> int:
        """What the authorizations held and will no longer hold: the uncaptured rest of the captured
        payments, and the payments voided (not needed, or canceled)."""
        settled = [p for p in self.payments if p.status in (S.CAPTURED, S.CANCELED)]
        return sum(p.amount for p in settled) - sum(p.captured_amount for p in settled)

    @property
    def capture_shortfall(self) -> int:
        """What the captures left uncollected of the total, once nothing is left to capture."""
        recorded = sum(p.capture_shortfall for p in self.payments)
        if recorded or any(p.status in S.OPEN for p in self.payments) or not self.captured_amount:
            return recorded
        return max(0, self.total - self.captured_amount)

    @property
    def capture_due_at(self) -> datetime:
        return min(p.capture_due_at for p in self.live)

    @property
    def capture_claimed_at(self) -> datetime | None:
        return min((p.capture_claimed_at for p in self.live if p.capture_claimed_at), default=None)

    @property
    def captured_at(self) -> datetime | None:
        return max((p.captured_at for p in self.payments if p.captured_at), default=None)

    @property
    def canceled_at(self) -> datetime | None:
        return max((p.canceled_at for p in self.payments if p.canceled_at), default=None)

    @property
    def cancellation_reason(self) -> str | None:
        return next((p.cancellation_reason for p in reversed(self.live) if p.cancellation_reason), None)

    @property
    def capture_before(self) -> datetime | None:
        return min((p.capture_before for p in self.live if p.capture_before and p.status in S.OPEN), default=None)

    @property
    def last_capture_error(self) -> str | None:
        errors = [p.last_capture_error for p in self.payments if p.last_capture_error]
        if len(errors) > 1:
            return "; ".join(f"{p.stripe_payment_intent_id}: {p.last_capture_error}"
                             for p in self.payments if p.last_capture_error)
        if errors:
            return errors[0]
        shortfall = self.capture_shortfall
        if shortfall:
            return f"captured {self.captured_amount} of the order's total {self.total}: {shortfall} not collected"
        return None

    @property
    def stripe_payment_intent_id(self) -> str:
        return self.payments[-1].stripe_payment_intent_id
