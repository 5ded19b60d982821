"""Writing customer notices: an outbox row in the transaction of the change it reports.

Each use case calls one of the `order_placed`, `order_edited`, ... functions inside its write
transaction, next to the rows that make the change. The row's `key` names the change (the order
and its version, the pending edit, the refund), and the insert is `INSERT ... ON CONFLICT (key)
DO NOTHING`: a replayed webhook, a retried job or the other path of a race (webhook and
`/complete`) that reports the same change again writes nothing, and the surrounding transaction
goes on (a unique violation would abort it on PostgreSQL; a check-then-insert would not hold
under concurrency). A change that rolls back takes its notice with it.

The send job is enqueued only after the commit (a session `after_commit` hook), so it never
looks for a row that is not there yet; a crash between the commit and the enqueue leaves the
notice `pending`, and the sweep's janitor (`app.notices.delivery.requeue_stuck_notices`) queues it.
"""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import event, select
from sqlalchemy.dialects import postgresql, sqlite

from app.extensions import db
from app.ids import new_id
from app.log import current_trace_id
from app.models import Notice, NoticeKind, Order, OrderEdit, OrderStatus, Payment, PaymentStatus, Refund
from app.models.base import isoformat, utcnow
from app.queues import enqueue_notice

log = logging.getLogger(__name__)

# Notice ids written in the session's current transaction, enqueued once it commits.
_TO_SEND = "notices_to_send"


def send_after_commit(notice_id: str) -> None:
    """Inside a write transaction: queue the notice's send job once (and only if) it commits."""
    db.session().info.setdefault(_TO_SEND, []).append(notice_id)


@event.listens_for(db.session, "after_commit")
def _enqueue_committed(session) -> None:
    for notice_id in session.info.pop(_TO_SEND, ()):
        try:
            enqueue_notice(notice_id)
        except Exception as exc:  # Redis down: the row stays pending and the sweep's janitor queues it
            log.warning("notice not enqueued; the sweep will", extra={"notice_id": notice_id, "error": str(exc)})


@event.listens_for(db.session, "after_rollback")
def _forget_rolled_back(session) -> None:
    session.info.pop(_TO_SEND, None)


def _insert(order: Order, kind: str, key: str, context: dict) -> str | None:
    """The notice's row, unless one with this key exists; returns the new id or None."""
    session = db.session()
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now = utcnow()
    notice_id = session.scalar(
        insert(Notice)
        .values(id=new_id("ntc"), key=key, order_id=order.id, kind=kind, recipient=order.email,
                context=context, trace_id=current_trace_id(), created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(Notice.id)
    )
    if notice_id is None:
        log.info("notice already written", extra={"order_id": order.id, "kind": kind})
        return None
    send_after_commit(notice_id)
    return notice_id


def _link(order_id: str) -> str | None:
    template = current_app.config["ENGINE"].storefront_order_url
    return template.replace("{order_id}", order_id) if template else None


def _base(order: Order) -> dict:
    return {"order_id": order.id, "display_id": order.display_id, "currency": order.currency,
            "link": _link(order.id)}


def _items(items) -> list[dict]:
    return [{"title": i.title, "quantity": i.quantity, "unit_amount": i.unit_amount,
             "total": i.unit_amount * i.quantity} for i in items]


# --- one function per kind, each called inside the change's write transaction ---------------------


def order_placed(order: Order) -> str | None:
    """The confirmation: items, total, and until when the order can be changed or canceled."""
    return _insert(order, NoticeKind.ORDER_PLACED, f"order_placed:{order.id}", {
        **_base(order), "items": _items(order.items), "total": order.total,
        "editable_until": isoformat(order.grace_period_ends_at),
    })


def order_edited(order: Order, version: int, total_before: int, items) -> str | None:
    """An accepted edit (direct, or a pending one paid and applied): the new items and total."""
    return _insert(order, NoticeKind.ORDER_EDITED, f"order_edited:{order.id}:v{version}", {
        **_base(order), "version": version, "items": _items(items), "total": order.total,
        "total_before": total_before, "editable_until": isoformat(order.grace_period_ends_at),
    })


def payment_required(order: Order, edit: OrderEdit, items) -> str | None:
    """A pending increase: what is due, where to pay it, and until when (never the client secret)."""
    return _insert(order, NoticeKind.PAYMENT_REQUIRED, f"payment_required:{order.id}:{edit.id}", {
        **_base(order), "order_edit_id": edit.id, "items": _items(items), "total": edit.total,
        "amount_due": edit.amount_due, "expires_at": isoformat(edit.expires_at),
    })


def order_settled(order_id: str, status: str) -> str | None:
    """The order's last open payment settled: canceled (all released) or completed (the receipt)."""
    order = db.session.get(Order, order_id)
    rows = db.session.execute(
        select(Payment.status, Payment.amount, Payment.captured_amount).where(Payment.order_id == order_id)
    ).all()
    authorized = sum(amount for _, amount, _ in rows)
    captured = sum(taken for state, _, taken in rows if state == PaymentStatus.CAPTURED)
    if status == OrderStatus.CANCELED:
        return _insert(order, NoticeKind.ORDER_CANCELED, f"order_canceled:{order_id}", {
            **_base(order), "total": order.total, "released": authorized,
        })
    return _insert(order, NoticeKind.PAYMENT_CAPTURED, f"payment_captured:{order_id}", {
        **_base(order), "items": _items(order.items), "total": order.total, "captured": captured,
        "authorized": authorized, "released": max(authorized - captured, 0),
        "payments": len(rows),
    })


def refund_issued(refund: Refund) -> str | None:
    """A refund that succeeded (ours, or one made in Stripe's dashboard): its amount."""
    payment = db.session.get(Payment, refund.payment_id)
    order = db.session.get(Order, payment.order_id)
    return _insert(order, NoticeKind.REFUND_ISSUED, f"refund_issued:{order.id}:{refund.id}", {
        **_base(order), "refund_id": refund.id, "amount": refund.amount,
    })
