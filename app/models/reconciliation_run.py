"""One row per completed reconciliation with Stripe's event list: where the next one starts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.ids import new_id
from app.models.base import UTCDateTime, utcnow


class ReconciliationRun(db.Model):
    __tablename__ = "reconciliation_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("recon"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The window listed: events created in [since, until] were looked for.
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    # Indexed: the next run starts from the latest `until` (less an overlap).
    until: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    found: Mapped[int] = mapped_column(Integer)
    new: Mapped[int] = mapped_column(Integer)
    processed: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
