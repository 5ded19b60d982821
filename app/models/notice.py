"""Customer notices: the outbox. One row per email, written in the transaction of the change it reports."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.ids import new_id
from app.models.base import UTCDateTime, utcnow


class NoticeKind:
    ORDER_PLACED = "order_placed"
    ORDER_EDITED = "order_edited"
    PAYMENT_REQUIRED = "payment_required"
    ORDER_CANCELED = "order_canceled"
    PAYMENT_CAPTURED = "payment_captured"
    REFUND_ISSUED = "refund_issued"

    ALL = (ORDER_PLACED, ORDER_EDITED, PAYMENT_REQUIRED, ORDER_CANCELED, PAYMENT_CAPTURED, REFUND_ISSUED)


class NoticeStatus:
    PENDING = "pending"
    """Written; its send job is queued (or will be, by the sweep's janitor)."""
    SENDING = "sending"
    """A send job holds it (`claimed_at`); a claim older than STUCK_OPERATION_SECONDS lost its worker."""
    SENT = "sent"
    """The provider accepted it (or, without a provider, it is kept in the outbox)."""
    FAILED = "failed"
    """The provider refused it (a 4xx), or it kept failing: staff may resend it."""

    ALL = (PENDING, SENDING, SENT, FAILED)


class Notice(db.Model):
    __tablename__ = "notices"
    __table_args__ = (
        # The sweep's janitor and the staff filter: notices by status, oldest first.
        Index("ix_notices_status_updated_at", "status", "updated_at"),
        Index("ix_notices_created_at_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ntc"))
    # What the notice reports, e.g. `order_edited:{order_id}:v3`: a replayed webhook or a retried
    # job that reports the same change again finds the row there (INSERT ... ON CONFLICT DO NOTHING).
    key: Mapped[str] = mapped_column(String(200), unique=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    recipient: Mapped[str] = mapped_column(String(254))
    # The facts the email states, as they were when the change committed (rendered at send time).
    context: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default=NoticeStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by a staff resend: part of the provider's idempotency key, so a resend is a new send.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    provider: Mapped[str | None] = mapped_column(String(20), default=None)
    provider_message_id: Mapped[str | None] = mapped_column(String(255), default=None)
    # The provider's last answer (an id, or its error), shown to staff; never a secret or a body.
    provider_answer: Mapped[str | None] = mapped_column(Text, default=None)
    # The staff confirmation that last resent it: the same form posted twice resends once.
    resend_token: Mapped[str | None] = mapped_column(String(64), default=None)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    trace_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
