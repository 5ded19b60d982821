"""Every Stripe event received, stored once by its id."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.base import UTCDateTime, utcnow


class WebhookEvent(db.Model):
    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_processed_at_received_at", "processed_at", "received_at"),)

    # Stripe's event id: the primary key makes a second delivery an IntegrityError.
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100), index=True)
    payload: Mapped[str] = mapped_column(Text)
    # The Stripe object the event is about (pi_..., ch_...), for the order timeline.
    object_id: Mapped[str | None] = mapped_column(String(255), index=True, default=None)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Set while one delivery processes the event; a concurrent duplicate then answers 200 and leaves it.
    processing_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    trace_id: Mapped[str | None] = mapped_column(String(64), default=None)
