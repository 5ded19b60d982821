"""The dashboard's reads: the orders list (filters, search, keyset pagination) and one order's records.

The list never uses OFFSET: a page is "the N orders just older (or newer) than this cursor",
where the cursor is the (created_at, id) of a row on the page before. That costs an index
seek whatever the page's depth, and a page does not shift when new orders arrive.
A page is two queries whatever its size: the orders, then their payments (`IN (...)`).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, exists, false, or_, select, union_all
from sqlalchemy.orm import aliased, selectinload

from app.dashboard.forms import ListFilters
from app.extensions import db
from app.models import (
    Capture,
    CaptureAttempt,
    Notice,
    Order,
    OrderChange,
    OrderEdit,
    OrderEditStatus,
    OrderStatus,
    OrderTransaction,
    Payment,
    PaymentCollection,
    PaymentSession,
    PaymentStatus,
    Refund,
    WebhookEvent,
)
from app.payments.order_payments import OrderPayments
from app.payments.sweep import STUCK_CAPTURE_AFTER
from app.presenters import CAPTURE_STATUS, capture_status, payment_status

PAGE_SIZE = 50
# "Overdue for capture": still authorized this long after its deadline. The listener normally
# captures within seconds, so two minutes means an expiry was missed (the sweep will catch it).
OVERDUE_AFTER = timedelta(minutes=2)
# Cancellations asked for through the engine (customer or staff); any other canceled
# authorization (expired after 7 days, voided in Stripe's dashboard) needs a look.
_OWN_CANCEL_REASON_PREFIX = "canceled by "
_OWN_CANCEL_STRIPE_REASON = "requested_by_customer"

S = PaymentStatus


# --- cursors -----------------------------------------------------------------------------


def encode_cursor(order: Order) -> str:
    raw = f"{order.created_at.astimezone(timezone.utc).isoformat()}|{order.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str | None) -> tuple[datetime, str] | None:
    """(created_at, id) from a cursor, or None if it is missing or not one of ours."""
    if not token or len(token) > 200:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        stamp, order_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if created_at.tzinfo is None or not order_id:
        return None
    return created_at, order_id


# --- conditions --------------------------------------------------------------------------


def _orders_with_payment(*conditions):
    """`orders.id IN (SELECT order_id FROM payments WHERE ...)`: driven by the payments' status index."""
    return Order.id.in_(select(Payment.order_id).where(*conditions))


def _needs_attention(now: datetime):
    """Orders whose payment needs a look: one indexed SELECT per reason, so each reads only its few rows.

    (A single WHERE with an OR of the four makes PostgreSQL misjudge how many rows match and walk
    every order instead: 150 ms at 100k orders, against a few ms this way.)
    """
    return Order.id.in_(
        union_all(
            select(Payment.order_id).where(Payment.status == S.CAPTURE_FAILED),
            select(Payment.order_id).where(Payment.capture_shortfall > 0),
            select(Payment.order_id).where(
                Payment.status == S.AUTHORIZED, Payment.capture_due_at < now - OVERDUE_AFTER
            ),
            select(Payment.order_id).where(
                Payment.status == S.CAPTURING, Payment.capture_claimed_at < now - STUCK_CAPTURE_AFTER
            ),
            select(Payment.order_id).where(
                Payment.status == S.CANCELED,
                or_(
                    Payment.cancellation_reason.is_(None),
                    and_(
                        ~Payment.cancellation_reason.startswith(_OWN_CANCEL_REASON_PREFIX, autoescape=True),
                        Payment.cancellation_reason != _OWN_CANCEL_STRIPE_REASON,
                    ),
                ),
            ),
        )
    )


def attention_reason(payment: Payment | None, now: datetime) -> str | None:
    """Why a row needs a look (the same rules as the "needs attention" filter), or None."""
    if payment is None:
        return None
    if payment.status == S.CAPTURE_FAILED:
        return "capture failed"
    if payment.capture_shortfall:
        return f"captured {payment.capture_shortfall} less than the total"
    if payment.status == S.AUTHORIZED and payment.capture_due_at < now - OVERDUE_AFTER:
        return "capture overdue"
    claimed_at = payment.capture_claimed_at
    if payment.status == S.CAPTURING and claimed_at is not None and claimed_at < now - STUCK_CAPTURE_AFTER:
        return "capture stuck"
    if payment.status == S.CANCELED:
        reason = payment.cancellation_reason
        if reason is None or not (reason.startswith(_OWN_CANCEL_REASON_PREFIX) or reason == _OWN_CANCEL_STRIPE_REASON):
            if reason == "automatic":  # Stripe's word for an authorization that ran out (`capture_before`)
                return "authorization expired before capture"
            return f"authorization canceled ({reason or 'at Stripe'})"
    return None


def _payment_status_condition(word: str):
    """SQL for `presenters.payment_status(order, payment) == word`."""
    if word == "not_paid":
        return ~exists(select(Payment.id).where(Payment.order_id == Order.id))
    if word == "canceled":
        return _orders_with_payment(Payment.status == S.CANCELED)
    if word == "captured":
        return _orders_with_payment(Payment.status == S.CAPTURED, Payment.refunded_amount == 0,
                                    Payment.capture_shortfall == 0)
    if word == "partially_captured":
        return _orders_with_payment(Payment.status == S.CAPTURED, Payment.refunded_amount == 0,
                                    Payment.capture_shortfall > 0)
    if word == "partially_refunded":
        return _orders_with_payment(
            Payment.status == S.CAPTURED,
            Payment.refunded_amount > 0,
            Payment.refunded_amount < Payment.captured_amount,
        )
    if word == "refunded":
        return _orders_with_payment(
            Payment.status == S.CAPTURED,
            Payment.refunded_amount > 0,
            Payment.refunded_amount >= Payment.captured_amount,
        )
    if word in ("authorized", "partially_authorized"):
        paid_order = aliased(Order)
        covers = Payment.amount >= paid_order.total if word == "authorized" else Payment.amount < paid_order.total
        return Order.id.in_(
            select(Payment.order_id)
            .join(paid_order, paid_order.id == Payment.order_id)
            .where(Payment.status.in_(S.OPEN), covers)
        )
    return false()


def _capture_status_condition(word: str):
    statuses = tuple(status for status, shown in CAPTURE_STATUS.items() if shown == word)
    if word == "failed":  # a capture that took less than the total is failed too (presenters.capture_status)
        return _orders_with_payment(or_(Payment.status.in_(statuses), Payment.capture_shortfall > 0))
    if not statuses:
        return false()
    if word == "succeeded":
        return _orders_with_payment(Payment.status.in_(statuses), Payment.capture_shortfall == 0)
    return _orders_with_payment(Payment.status.in_(statuses))


_DISPLAY_ID = re.compile(r"^#?(\d{1,9})$")


def _search_condition(q: str):
    """By order id, display id (#1001), PaymentIntent id, or a part of the email."""
    if q.startswith("order_"):
        return Order.id == q
    match = _DISPLAY_ID.match(q)
    if match:
        return Order.display_id == int(match.group(1))
    if q.startswith("pi_"):
        return _orders_with_payment(Payment.stripe_payment_intent_id == q)
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return Order.email.ilike(f"%{escaped}%", escape="\\")


def filter_conditions(filters: ListFilters, now: datetime) -> list:
    conditions = []
    if filters.payment_status:
        conditions.append(_payment_status_condition(filters.payment_status))
    if filters.capture_status:
        conditions.append(_capture_status_condition(filters.capture_status))
    if filters.show == "grace":
        conditions.append(and_(Order.status == OrderStatus.PENDING, Order.grace_period_ends_at > now))
    elif filters.show == "attention":
        conditions.append(_needs_attention(now))
    if filters.q:
        conditions.append(_search_condition(filters.q))
    return conditions


# --- the list ----------------------------------------------------------------------------


@dataclass
class OrderRow:
    order: Order
    payment: OrderPayments | None
    payment_status: str
    capture_status: str
    attention: str | None


@dataclass
class OrdersPage:
    rows: list[OrderRow]
    older_cursor: str | None  # the next page (older orders)
    newer_cursor: str | None  # the previous page (newer orders)
    is_first: bool


def _fetch_orders(conditions: list, cursor: tuple[datetime, str] | None, *, newer: bool, limit: int) -> list[Order]:
    statement = select(Order).where(*conditions)
    if cursor is not None:
        at, order_id = cursor
        # `created_at <= at` first: a plain range on the created_at index, whichever the planner.
        if newer:
            statement = statement.where(Order.created_at >= at, or_(Order.created_at > at, Order.id > order_id))
        else:
            statement = statement.where(Order.created_at <= at, or_(Order.created_at < at, Order.id < order_id))
    if newer:
        statement = statement.order_by(Order.created_at.asc(), Order.id.asc())
    else:
        statement = statement.order_by(Order.created_at.desc(), Order.id.desc())
    return list(db.session.scalars(statement.limit(limit)))


def order_payments(orders: list[Order]) -> dict[str, OrderPayments]:
    """Each order's payments read as one (`OrderPayments`), in one query."""
    if not orders:
        return {}
    by_order: dict[str, list[Payment]] = {}
    for payment in db.session.scalars(
        select(Payment).where(Payment.order_id.in_([o.id for o in orders])).order_by(Payment.created_at, Payment.id)
    ):
        by_order.setdefault(payment.order_id, []).append(payment)
    return {o.id: OrderPayments(tuple(by_order[o.id]), o.total) for o in orders if o.id in by_order}


def list_orders(
    filters: ListFilters,
    now: datetime,
    *,
    after: str | None = None,
    before: str | None = None,
    page_size: int = PAGE_SIZE,
) -> OrdersPage:
    """One page of orders, newest first; `after`/`before` are cursors from a previous page."""
    conditions = filter_conditions(filters, now)
    older_than = decode_cursor(after)
    newer_than = decode_cursor(before) if older_than is None else None

    if newer_than is not None:
        orders = _fetch_orders(conditions, newer_than, newer=True, limit=page_size + 1)
        has_newer = len(orders) > page_size
        orders = list(reversed(orders[:page_size]))
        if has_newer:
            return _page(orders, now, has_older=True, has_newer=True)
        # Back at the top: show the first page as it is now (full length, newest first).
        older_than = None

    orders = _fetch_orders(conditions, older_than, newer=False, limit=page_size + 1)
    has_older = len(orders) > page_size
    return _page(orders[:page_size], now, has_older=has_older, has_newer=older_than is not None)


def _page(orders: list[Order], now: datetime, *, has_older: bool, has_newer: bool) -> OrdersPage:
    payments = order_payments(orders)
    rows = []
    for order in orders:
        payment = payments.get(order.id)
        rows.append(
            OrderRow(
                order=order,
                payment=payment,
                payment_status=payment_status(order, payment),
                capture_status=capture_status(payment) if payment else "none",
                attention=attention_reason(payment, now),
            )
        )
    return OrdersPage(
        rows=rows,
        older_cursor=encode_cursor(orders[-1]) if orders and has_older else None,
        newer_cursor=encode_cursor(orders[0]) if orders and has_newer else None,
        is_first=not has_newer,
    )


# --- one order ---------------------------------------------------------------------------


@dataclass
class OrderDetail:
    order: Order
    payment: OrderPayments | None  # the order's payments read as one; actions apply to the order
    collection: PaymentCollection | None
    sessions: list[PaymentSession] = field(default_factory=list)
    payments: list[Payment] = field(default_factory=list)
    captures: list[Capture] = field(default_factory=list)
    refunds: list[Refund] = field(default_factory=list)
    transactions: list[OrderTransaction] = field(default_factory=list)
    attempts: list[CaptureAttempt] = field(default_factory=list)
    changes: list[OrderChange] = field(default_factory=list)
    events: list[WebhookEvent] = field(default_factory=list)
    edits: list[OrderEdit] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)

    @property
    def pending_edit(self) -> OrderEdit | None:
        return next((e for e in self.edits if e.status == OrderEditStatus.REQUIRES_PAYMENT), None)


def load_order_detail(order_id: str) -> OrderDetail | None:
    """Everything the order page shows, one query per kind of record."""
    order = db.session.scalar(select(Order).where(Order.id == order_id).options(selectinload(Order.items)))
    if order is None:
        return None
    collection = db.session.scalar(select(PaymentCollection).where(PaymentCollection.order_id == order_id))
    sessions = (
        list(db.session.scalars(
            select(PaymentSession)
            .where(PaymentSession.payment_collection_id == collection.id)
            .order_by(PaymentSession.created_at)
        ))
        if collection is not None
        else []
    )
    payments = list(db.session.scalars(
        select(Payment).where(Payment.order_id == order_id).order_by(Payment.created_at, Payment.id)
    ))
    payment_ids = [p.id for p in payments]
    captures = refunds = attempts = []
    if payment_ids:
        captures = list(db.session.scalars(
            select(Capture).where(Capture.payment_id.in_(payment_ids)).order_by(Capture.created_at)
        ))
        refunds = list(db.session.scalars(
            select(Refund).where(Refund.payment_id.in_(payment_ids)).order_by(Refund.created_at)
        ))
        attempts = list(db.session.scalars(
            select(CaptureAttempt).where(CaptureAttempt.payment_id.in_(payment_ids)).order_by(CaptureAttempt.created_at)
        ))
    transactions = list(db.session.scalars(
        select(OrderTransaction).where(OrderTransaction.order_id == order_id).order_by(OrderTransaction.created_at)
    ))
    changes = list(db.session.scalars(
        select(OrderChange).where(OrderChange.order_id == order_id).order_by(OrderChange.version)
    ))
    # Events about any PaymentIntent of the order (also superseded ones) and about its charges.
    stripe_ids = {s.stripe_payment_intent_id for s in sessions}
    stripe_ids |= {p.stripe_payment_intent_id for p in payments}
    stripe_ids |= {p.stripe_charge_id for p in payments if p.stripe_charge_id}
    stripe_ids |= {e.stripe_payment_intent_id for e in db.session.scalars(
        select(OrderEdit).where(OrderEdit.order_id == order_id))}
    events = (
        list(db.session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.object_id.in_(sorted(stripe_ids)))
            .order_by(WebhookEvent.received_at)
        ))
        if stripe_ids
        else []
    )
    edits = list(db.session.scalars(
        select(OrderEdit).where(OrderEdit.order_id == order_id).order_by(OrderEdit.created_at)
    ))
    notices = list(db.session.scalars(
        select(Notice).where(Notice.order_id == order_id).order_by(Notice.created_at, Notice.id)
    ))
    return OrderDetail(
        order=order,
        notices=notices,
        payment=OrderPayments.of(order, payments),
        edits=edits,
        collection=collection,
        sessions=sessions,
        payments=payments,
        captures=captures,
        refunds=refunds,
        transactions=transactions,
        attempts=attempts,
        changes=changes,
        events=events,
    )
