"""A customer's cart: line items before an order exists."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.ids import new_id
from app.models.base import UTCDateTime, utcnow


class Cart(db.Model):
    __tablename__ = "carts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("cart"))
    email: Mapped[str] = mapped_column(String(254))
    currency: Mapped[str] = mapped_column(String(3))
    # The PaymentIntent the storefront is currently paying with (see PaymentSession for all of them).
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), default=None)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # PaymentIntent creations Stripe answered with an error (stored under their key for 24 h): part
    # of the next key's generation, so a checkout is not refused for a day after one Stripe 500.
    failed_payment_intent_creates: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    items: Mapped[list["LineItem"]] = relationship(
        back_populates="cart", order_by="LineItem.created_at", cascade="all, delete-orphan"
    )

    @property
    def total(self) -> int:
        return sum(item.total for item in self.items)


class LineItem(db.Model):
    __tablename__ = "line_items"
    __table_args__ = (UniqueConstraint("cart_id", "product_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("item"))
    cart_id: Mapped[str] = mapped_column(ForeignKey("carts.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"))
    title: Mapped[str] = mapped_column(String(200))
    unit_amount: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    cart: Mapped[Cart] = relationship(back_populates="items")

    @property
    def total(self) -> int:
        return self.unit_amount * self.quantity
