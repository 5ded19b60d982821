"""A pending edit: an order increase waiting for the customer to authorize the difference.

When an edit raises the total beyond what the card's authorization can be raised to, the order
keeps its committed items and total, and the customer pays `amount_due` with a second
PaymentIntent. The edit applies (a second `Payment`) once Stripe reports that PaymentIntent
`requires_capture`; it lapses at the deadline, is superseded by a newer edit, or is canceled with
the order. Every way out of `requires_payment` that is not `applied` leaves its PaymentIntent to be
voided (`void_pending`), by the request that moved it and, should that die, by the sweep.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.ids import new_id
from app.models.base import UTCDateTime, utcnow


class OrderEditStatus:
    REQUIRES_PAYMENT = "requires_payment"
    """Waiting for the customer to authorize `amount_due`."""
    APPLIED = "applied"
    """Authorized and applied: the order has the edit's items and a second payment."""
    SUPERSEDED = "superseded"
    """A newer edit of the order replaced it."""
    EXPIRED = "expired"
    """The grace period ended before it was authorized (or before it could apply)."""
    CANCELED = "canceled"
    """The order was canceled, or Stripe canceled its PaymentIntent."""


class OrderEdit(db.Model):
    __tablename__ = "order_edits"
    __table_args__ = (
        # One pending edit per order: a newer one moves the old one out first, in its transaction.
        Index("uq_order_edits_one_pending", "order_id", unique=True,
              postgresql_where=text("status = 'requires_payment'"), sqlite_where=text("status = 'requires_payment'")),
        # The sweep's janitor: PaymentIntents of edits that will never apply, still to be voided.
        # Each predicate is the one SQLAlchemy writes for `where(OrderEdit.void_pending)` on its backend
        # (SQLite has no boolean type: `= 1`), as a partial index serves only a query naming its predicate.
        Index("ix_order_edits_void_pending_resolved_at", "resolved_at",
              postgresql_where=text("void_pending"), sqlite_where=text("void_pending = 1")),
        # The sweep's janitor: pending edits past their expiry (a lapse nobody recorded).
        Index("ix_order_edits_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("oedit"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=OrderEditStatus.REQUIRES_PAYMENT)
    # The order version the edit was priced against: it applies only to that version.
    base_version: Mapped[int] = mapped_column(Integer)
    # The new full list of items (snapshots, as OrderChange keeps them) and what they cost.
    items: Mapped[list] = mapped_column(JSON)
    total: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    # What was authorized when the edit was made, and the difference the customer pays now.
    authorized_before: Mapped[int] = mapped_column(BigInteger)
    amount_due: Mapped[int] = mapped_column(BigInteger)
    stripe_payment_intent_id: Mapped[str] = mapped_column(String(255), unique=True)
    payment_session_id: Mapped[str] = mapped_column(ForeignKey("payment_sessions.id"), unique=True)
    # Given to the customer's browser to confirm the PaymentIntent; the 202 and the order view show it.
    client_secret: Mapped[str | None] = mapped_column(Text, default=None)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The PaymentIntent must be voided (the edit will never apply); cleared once Stripe confirms.
    void_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    resolution: Mapped[str | None] = mapped_column(Text, default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    trace_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
