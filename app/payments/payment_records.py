"""The cart's PaymentCollection and PaymentSession rows, each written by one upsert.

`INSERT ... ON CONFLICT (unique key) DO UPDATE ... RETURNING id`: created on first use, updated
after, in one statement and one round trip, where a look-up, then an INSERT or an UPDATE, took
two or three. Callers hold the cart's row lock (`app.carts.lock_open_cart`, or placement's
freeze), so two writers of one cart's rows queue on it; the upsert also holds without it.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from app.extensions import db
from app.ids import new_id
from app.models import LineItem, PaymentCollection, PaymentSession
from app.models.base import utcnow
from app.payments.stripe_gateway import PaymentIntent


def _insert(model):
    dialect = db.session().get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


def items_total(cart_id: str):
    """The cart's total as SQL, read when the statement runs (under the cart's lock)."""
    return (
        select(func.coalesce(func.sum(LineItem.unit_amount * LineItem.quantity), 0))
        .where(LineItem.cart_id == cart_id)
        .scalar_subquery()
    )


def record_collection(cart_id: str, currency: str, amount, order_id: str | None = None) -> str:
    """The cart's collection (created on first use) with its amount set, and its order once placed; its id.

    `amount`: minor units, or SQL (`items_total`).
    """
    statement = _insert(PaymentCollection).values(
        id=new_id("paycol"), cart_id=cart_id, order_id=order_id, currency=currency, amount=amount,
        created_at=utcnow())
    changes = {"amount": statement.excluded.amount}
    if order_id is not None:
        changes["order_id"] = statement.excluded.order_id
    return db.session.scalar(
        statement.on_conflict_do_update(index_elements=["cart_id"], set_=changes).returning(PaymentCollection.id))


def record_session(collection_id: str, intent: PaymentIntent, idempotency_key: str, status: str) -> str:
    """The PaymentIntent's session (one row per PaymentIntent, created on first use) at `status`; its id.

    A session recorded before keeps its collection, amount and key; only its status changes.
    """
    now = utcnow()
    statement = _insert(PaymentSession).values(
        id=new_id("payses"), payment_collection_id=collection_id, stripe_payment_intent_id=intent.id,
        idempotency_key=idempotency_key, amount=intent.amount, currency=intent.currency, status=status,
        created_at=now, updated_at=now)
    return db.session.scalar(
        statement.on_conflict_do_update(
            index_elements=["stripe_payment_intent_id"],
            set_={"status": statement.excluded.status, "updated_at": statement.excluded.updated_at},
        ).returning(PaymentSession.id))
