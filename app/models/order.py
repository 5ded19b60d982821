"""Orders: what was bought, its grace period, and the history of its edits."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.ids import new_id
from app.models.base import UTCDateTime, utcnow

if TYPE_CHECKING:
    from app.models.payment import PaymentCollection


class OrderStatus:
    PENDING = "pending"
    """Placed; its payment is authorized and waits for capture."""
    COMPLETED = "completed"
    """Its payment was captured."""
    CANCELED = "canceled"
    """Canceled by the customer or staff, or its authorization was voided."""


class DisplayIdSequence(db.Model):
    """Hands out the human-facing order numbers (#1001, ...) portably on PostgreSQL and SQLite."""

    __tablename__ = "order_display_ids"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)


class Order(db.Model):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("order"))
    display_id: Mapped[int] = mapped_column(Integer, unique=True)
    # One cart becomes at most one order, whichever path (webhook or /complete) gets there first.
    cart_id: Mapped[str] = mapped_column(ForeignKey("carts.id"), unique=True)
    email: Mapped[str] = mapped_column(String(254), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default=OrderStatus.PENDING)
    total: Mapped[int] = mapped_column(BigInteger)
    # Bumped by every accepted edit; edits compare-and-set on it.
    version: Mapped[int] = mapped_column(Integer, default=1)
    # The end of the grace period; the source of truth when Redis loses its keys.
    grace_period_ends_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    trace_id: Mapped[str | None] = mapped_column(String(64), default=None)
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    items: Mapped[list["OrderItem"]] = relationship(
        back_populates="order", order_by="OrderItem.position", cascade="all, delete-orphan"
    )
    payment_collection: Mapped["PaymentCollection | None"] = relationship(back_populates="order")


class OrderItem(db.Model):
    __tablename__ = "order_items"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("oitem"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"))
    title: Mapped[str] = mapped_column(String(200))
    unit_amount: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer, default=0)

    order: Mapped[Order] = relationship(back_populates="items")

    @property
    def total(self) -> int:
        return self.unit_amount * self.quantity


class OrderChange(db.Model):
    """One accepted edit of an order: its items and totals before and after."""

    __tablename__ = "order_changes"
    __table_args__ = (UniqueConstraint("order_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ordch"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    # Snapshots of the item lists for the timeline; payment state never lives here.
    items_before: Mapped[list] = mapped_column(JSON)
    items_after: Mapped[list] = mapped_column(JSON)
    total_before: Mapped[int] = mapped_column(BigInteger)
    total_after: Mapped[int] = mapped_column(BigInteger)
    authorized_before: Mapped[int] = mapped_column(BigInteger)
    authorized_after: Mapped[int] = mapped_column(BigInteger)
    trace_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
