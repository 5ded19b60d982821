"""Payment records, after Medusa v2: collection → sessions → payment → captures and refunds.

Payment state lives in these columns and rows. A payment changes state only through
`app.payments.transitions`, each transition a compare-and-set on `Payment.status`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.ids import new_id
from app.models.base import UTCDateTime, utcnow
from app.models.order import Order


class PaymentSessionStatus:
    PENDING = "pending"
    """A PaymentIntent exists; the customer has not paid yet."""
    AUTHORIZED = "authorized"
    """Stripe reports the PaymentIntent `requires_capture`."""
    CAPTURED = "captured"
    """The PaymentIntent was captured (`succeeded`)."""
    REQUIRES_MORE = "requires_more"
    """The customer must act (3-D Secure)."""
    ERROR = "error"
    """The last payment attempt failed; `last_error` says why."""
    CANCELED = "canceled"
    """The PaymentIntent was canceled (stale amount, voided, expired)."""


class PaymentStatus:
    """The states of an authorized payment; transitions are in `app.payments.transitions`."""

    AUTHORIZED = "authorized"
    """Money is held on the card; waiting for the grace period to end."""
    CAPTURING = "capturing"
    """A capture job claimed the payment and is talking to Stripe."""
    CAPTURE_FAILED = "capture_failed"
    """Stripe refused the capture (decline, invalid request); staff may retry."""
    CAPTURED = "captured"
    """Captured at Stripe; refunds may follow."""
    CANCELING = "canceling"
    """Being voided at Stripe (customer or staff cancel)."""
    CANCELED = "canceled"
    """The authorization was voided or expired; nothing will be captured."""

    OPEN = (AUTHORIZED, CAPTURING, CAPTURE_FAILED, CANCELING)


class PaymentCollection(db.Model):
    """What is owed for one cart, and later for the order made from it."""

    __tablename__ = "payment_collections"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("paycol"))
    cart_id: Mapped[str] = mapped_column(ForeignKey("carts.id"), unique=True)
    order_id: Mapped[str | None] = mapped_column(ForeignKey("orders.id"), unique=True, default=None)
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    order: Mapped[Order | None] = relationship(back_populates="payment_collection")
    sessions: Mapped[list["PaymentSession"]] = relationship(
        back_populates="payment_collection", order_by="PaymentSession.created_at"
    )
    payments: Mapped[list["Payment"]] = relationship(
        back_populates="payment_collection", order_by="Payment.created_at"
    )


class PaymentSession(db.Model):
    """One PaymentIntent created for a cart (a new one whenever the amount changes)."""

    __tablename__ = "payment_sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("payses"))
    payment_collection_id: Mapped[str] = mapped_column(ForeignKey("payment_collections.id"), index=True)
    stripe_payment_intent_id: Mapped[str] = mapped_column(String(255), unique=True)
    idempotency_key: Mapped[str] = mapped_column(String(255))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default=PaymentSessionStatus.PENDING)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    payment_collection: Mapped[PaymentCollection] = relationship(back_populates="sessions")


class Payment(db.Model):
    """An authorization held at Stripe for an order, and what became of it."""

    __tablename__ = "payments"
    __table_args__ = (
        # The engine's queries: due for capture, authorized long ago (fallback), stuck claims.
        Index("ix_payments_status_capture_due_at", "status", "capture_due_at"),
        Index("ix_payments_status_authorized_at", "status", "authorized_at"),
        Index("ix_payments_status_capture_claimed_at", "status", "capture_claimed_at"),
        # The few captures that took less than the order's total (the dashboard's attention list).
        Index("ix_payments_capture_shortfall", "capture_shortfall",
              postgresql_where=text("capture_shortfall > 0"), sqlite_where=text("capture_shortfall > 0")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pay"))
    payment_collection_id: Mapped[str] = mapped_column(ForeignKey("payment_collections.id"), index=True)
    payment_session_id: Mapped[str] = mapped_column(ForeignKey("payment_sessions.id"), unique=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    # A PaymentIntent belongs to exactly one payment.
    stripe_payment_intent_id: Mapped[str] = mapped_column(String(255), unique=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(255), default=None)
    currency: Mapped[str] = mapped_column(String(3))
    # The amount currently authorized (grows with increment_authorization).
    amount: Mapped[int] = mapped_column(BigInteger)
    captured_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(20), default=PaymentStatus.AUTHORIZED)
    authorized_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the grace period ends and capture may happen (copied from the order for the index).
    capture_due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    capture_claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Incremented by every claim: the claim's fencing token (a stale worker's release is refused).
    capture_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # What the capture left uncollected of the order's total (never a silent success; 0 when whole).
    capture_shortfall: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_capture_error: Mapped[str | None] = mapped_column(Text, default=None)
    # Bumped when Stripe stored an error under the capture key and the PaymentIntent is still
    # uncaptured: the next attempt needs a key of its own (Stripe replays a key's first answer 24 h).
    capture_key_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # increment_authorization calls made on this PaymentIntent (Stripe allows 10, declines included).
    increment_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The card's deadline for capturing (Stripe's `capture_before` on the charge): past it, the
    # authorization expires and nothing can be captured.
    capture_before: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # The status a cancel started from: what a cancel that Stripe could not complete gives back.
    status_before_cancel: Mapped[str | None] = mapped_column(String(20), default=None)
    captured_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    cancellation_reason: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    payment_collection: Mapped[PaymentCollection] = relationship(back_populates="payments")
    captures: Mapped[list["Capture"]] = relationship(back_populates="payment", order_by="Capture.created_at")
    refunds: Mapped[list["Refund"]] = relationship(back_populates="payment", order_by="Refund.created_at")

    @property
    def refundable_amount(self) -> int:
        return self.captured_amount - self.refunded_amount


class Capture(db.Model):
    """Money taken from an authorization. One per payment: Stripe captures a PaymentIntent once."""

    __tablename__ = "captures"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("capt"))
    payment_id: Mapped[str] = mapped_column(ForeignKey("payments.id"), unique=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    # "engine", "stripe" (captured outside the engine) or "staff:<email>".
    created_by: Mapped[str] = mapped_column(String(254))
    trace_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    payment: Mapped[Payment] = relationship(back_populates="captures")


class RefundStatus:
    """Stripe's refund statuses; the open ones hold their amount reserved against the payment."""

    PENDING = "pending"
    """Reserved against the payment; Stripe not yet confirmed (or Stripe's own `pending`)."""
    REQUIRES_ACTION = "requires_action"
    """Stripe needs the customer to act before it can return the money; still reserved."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """Refused, or failed at Stripe after it was made: the amount may be refunded again."""
    CANCELED = "canceled"

    OPEN = (PENDING, REQUIRES_ACTION)


class Refund(db.Model):
    """Money returned after a capture; at most captured minus already refunded."""

    __tablename__ = "refunds"
    __table_args__ = (
        # The sweep's janitor: open refunds, oldest first (the rest of the table is never read).
        Index("ix_refunds_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ref"))
    payment_id: Mapped[str] = mapped_column(ForeignKey("payments.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20), default=RefundStatus.PENDING)
    # Set once Stripe answers; unique so a `charge.refunded` webhook never adds a second row.
    stripe_refund_id: Mapped[str | None] = mapped_column(String(255), unique=True, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True, default=None)
    reason: Mapped[str | None] = mapped_column(String(100), default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_by: Mapped[str] = mapped_column(String(254))
    trace_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    payment: Mapped[Payment] = relationship(back_populates="refunds")


class OrderTransaction(db.Model):
    """Money that moved for an order: + for a capture, − for a refund (Medusa's ledger)."""

    __tablename__ = "order_transactions"
    __table_args__ = (UniqueConstraint("reference", "reference_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ordtxn"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reference: Mapped[str] = mapped_column(String(20))  # "capture" or "refund"
    reference_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CaptureAttempt(db.Model):
    """One try of the capture job, whatever its outcome (the order timeline shows them)."""

    __tablename__ = "capture_attempts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("catt"))
    payment_id: Mapped[str] = mapped_column(ForeignKey("payments.id"), index=True)
    # "succeeded", "reconciled", "retrying", "failed", "canceled", "skipped"
    outcome: Mapped[str] = mapped_column(String(20))
    amount: Mapped[int] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    trigger: Mapped[str] = mapped_column(String(40))  # "expiry", "sweep", "staff", "catch_up"
    trace_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
