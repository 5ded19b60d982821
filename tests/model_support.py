"""Plumbing for the stateful money model (tests/test_money_model.py).

Everything here reaches the engine from outside: the database through the models' tables,
the simulator through its control API and its documented in-process state (`sim.state`, read
under its lock), and SQLAlchemy's engine events for interleavings. No engine internals.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, selectinload

OPEN_PAYMENT_STATES = ("authorized", "capturing", "capture_failed", "canceling")

# Faults the model injects, as simulator script entries (applied to the next matching request).
# The app's stripe client makes 1 + STRIPE_MAX_NETWORK_RETRIES (2) attempts with the same key.
FAULT_TARGETS: dict[str, tuple[str | None, str | None]] = {
    "capture": ("POST", "/capture"),
    "increment": ("POST", "/increment_authorization"),
    "cancel": ("POST", "/cancel"),
    "refund": ("POST", "/v1/refunds"),
    "retrieve": ("GET", "/v1/payment_intents/"),
    "any": (None, None),
}
FAULT_KINDS: dict[str, list[dict[str, Any]]] = {
    "500": [{"fault": "500", "times": 3}],  # every attempt fails: not performed, the app sees an outage
    "500_once": [{"fault": "500", "times": 1}],  # the client's retry succeeds
    "429": [{"fault": "429", "times": 1}],  # rate limited (not retried by the client)
    # performed at Stripe, the connection dropped, and the retries fail too: the answer is lost
    "lost": [{"fault": "lost_response", "times": 1}, {"fault": "500", "times": 2}],
    # performed, answer lost, the retry with the same key gets Stripe's stored answer
    "lost_once": [{"fault": "lost_response", "times": 1}],
    "declined": [{"fault": "card_declined", "times": 1}],  # 402 without performing
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _models():
    from app import models

    return models


def _engine(app):
    from app.extensions import db

    with app.app_context():
        return db.engine


# ----------------------------------------------------------------------------- database views


@dataclass
class PaymentView:
    id: str
    payment_intent_id: str
    status: str
    amount: int
    captured_amount: int
    refunded_amount: int
    capture_due_at: datetime
    succeeded_refunds: int


@dataclass
class ChangeView:
    version: int
    created_at: datetime
    total_before: int
    total_after: int


@dataclass
class OrderView:
    id: str
    cart_id: str
    status: str
    total: int
    items_total: int
    items: list[tuple[str, int]]
    deadline: datetime
    payments: list[PaymentView]
    changes: list[ChangeView]


@dataclass
class CartView:
    id: str
    total: int
    items: list[tuple[str, int]]
    payment_intent_id: str | None


@dataclass
class Snapshot:
    carts: dict[str, CartView]
    orders: dict[str, OrderView]  # by order id
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)  # the simulator's PaymentIntents
    ledger: list[dict[str, Any]] = field(default_factory=list)  # the simulator's effective operations

    def order_of_intent(self, pi_id: str) -> OrderView | None:
        for order in self.orders.values():
            if any(p.payment_intent_id == pi_id for p in order.payments):
                return order
        return None

    def ops(self, op: str, pi_id: str | None = None) -> list[dict[str, Any]]:
        return [o for o in self.ledger if o["op"] == op and (pi_id is None or o["payment_intent"] == pi_id)]


class Reader:
    """Reads the app's tables on a connection of its own, in autocommit (every read sees the latest commits)."""

    def __init__(self, app, sim) -> None:
        self.sim = sim
        self.engine = _engine(app).execution_options(isolation_level="AUTOCOMMIT")

    def snapshot(self, cart_ids: list[str], extra_intents: set[str]) -> Snapshot:
        m = _models()
        with Session(self.engine) as session:
            carts = session.scalars(
                select(m.Cart).where(m.Cart.id.in_(cart_ids)).options(selectinload(m.Cart.items))
            ).all()
            orders = session.scalars(
                select(m.Order).where(m.Order.cart_id.in_(cart_ids)).options(selectinload(m.Order.items))
            ).all()
            order_ids = [o.id for o in orders]
            payments = session.scalars(
                select(m.Payment).where(m.Payment.order_id.in_(order_ids)).order_by(m.Payment.created_at)
            ).all()
            changes = session.scalars(
                select(m.OrderChange).where(m.OrderChange.order_id.in_(order_ids)).order_by(m.OrderChange.version)
            ).all()
            refunds = session.scalars(select(m.Refund).where(m.Refund.payment_id.in_([p.id for p in payments]))).all()
            snap = Snapshot(
                carts={
                    c.id: CartView(
                        c.id,
                        sum(i.unit_amount * i.quantity for i in c.items),
                        sorted((i.product_id, i.quantity) for i in c.items),
                        c.payment_intent_id,
                    )
                    for c in carts
                },
                orders={},
            )
            for o in orders:
                snap.orders[o.id] = OrderView(
                    id=o.id,
                    cart_id=o.cart_id,
                    status=o.status,
                    total=o.total,
                    items_total=sum(i.unit_amount * i.quantity for i in o.items),
                    items=sorted((i.product_id, i.quantity) for i in o.items),
                    deadline=o.grace_period_ends_at,
                    payments=[
                        PaymentView(
                            p.id,
                            p.stripe_payment_intent_id,
                            p.status,
                            p.amount,
                            p.captured_amount,
                            p.refunded_amount,
                            p.capture_due_at,
                            sum(r.amount for r in refunds if r.payment_id == p.id and r.status == "succeeded"),
                        )
                        for p in payments
                        if p.order_id == o.id
                    ],
                    changes=[
                        ChangeView(c.version, c.created_at, c.total_before, c.total_after)
                        for c in changes
                        if c.order_id == o.id
                    ],
                )
        intent_ids = set(extra_intents) | {p.payment_intent_id for o in snap.orders.values() for p in o.payments}
        with self.sim.state.lock:
            # The PaymentIntents the engine made for order increases (pending edits), applied or not.
            intent_ids |= {pi_id for pi_id, pi in self.sim.state.payment_intents.items()
                           if (pi.get("metadata") or {}).get("order_edit_id")}
            for pi_id in intent_ids:
                pi = self.sim.state.payment_intents.get(pi_id)
                if pi is not None:
                    snap.intents[pi_id] = {
                        k: pi.get(k)
                        for k in (
                            "id",
                            "status",
                            "amount",
                            "amount_capturable",
                            "amount_received",
                            "metadata",
                            "cancellation_reason",
                        )
                    }
            snap.ledger = [dict(op) for op in self.sim.state.operations]
        return snap


# ----------------------------------------------------------------------------- time and bookkeeping


def end_grace_period(app, order_id: str, *, past_fallback: bool = False) -> datetime | None:
    """Time passes for one order: its deadline (order and payments) becomes now, if it was later.

    Returns that moment, or None when the deadline had passed already. The rows are locked
    before the clock is read (payments, then the order: the engine's own lock order), so a
    write of the engine that held them committed before this moment, and any write after
    it finds the deadline passed. The stored deadline is a millisecond earlier, truncated to
    the millisecond: SQLite's clock (`strftime`) only has milliseconds and must find it passed.
    With `past_fallback`, the payments also look authorized long enough ago for the fallback sweep.
    """
    m = _models()
    orders, payments = m.Order.__table__, m.Payment.__table__
    engine = _engine(app)
    with engine.connect() as conn:
        conn.execution_options(sqlite_begin_immediate=True)  # SQLite: take the write lock first
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(select(payments.c.id).where(payments.c.order_id == order_id).with_for_update())
                conn.execute(select(orders.c.id).where(orders.c.id == order_id).with_for_update())
            moment = utcnow()
            stored = moment.replace(microsecond=moment.microsecond // 1000 * 1000) - timedelta(milliseconds=1)
            changed = conn.execute(
                update(payments)
                .where(payments.c.order_id == order_id, payments.c.capture_due_at > stored)
                .values(capture_due_at=stored)
            ).rowcount
            changed += conn.execute(
                update(orders)
                .where(orders.c.id == order_id, orders.c.grace_period_ends_at > stored)
                .values(grace_period_ends_at=stored)
            ).rowcount
            if past_fallback:
                settings = app.config["ENGINE"]
                conn.execute(
                    update(payments)
                    .where(payments.c.order_id == order_id)
                    .values(authorized_at=stored - timedelta(seconds=settings.fallback_capture_after_seconds + 1))
                )
    return moment if changed else None


def stuck_operations_time_out(app, order_ids: list[str]) -> None:
    """Time passes past STUCK_OPERATION_SECONDS for this example's operations left in flight (a cancel
    Stripe could not confirm, a pending refund), so the sweep's janitors, which ask Stripe, take them."""
    m = _models()
    payments, refunds = m.Payment.__table__, m.Refund.__table__
    long_ago = utcnow() - timedelta(seconds=app.config["ENGINE"].stuck_operation_seconds + 60)
    with _engine(app).begin() as conn:
        conn.execute(
            update(payments)
            .where(payments.c.order_id.in_(order_ids), payments.c.status == "canceling")
            .values(updated_at=long_ago)
        )
        conn.execute(
            update(refunds)
            .where(refunds.c.payment_id.in_(select(payments.c.id).where(payments.c.order_id.in_(order_ids))),
                   refunds.c.status.in_(("pending", "requires_action")))
            .values(created_at=long_ago)
        )
        # An increase whose PaymentIntent could not be voided yet (Stripe did not answer).
        edits = m.OrderEdit.__table__
        conn.execute(
            update(edits).where(edits.c.order_id.in_(order_ids), edits.c.void_pending.is_(True))
            .values(resolved_at=long_ago)
        )


def quarantine(app, order_ids: list[str]) -> None:
    """After an example: its open payments are closed in the database so that no later sweep,
    queued job or capture in another example touches them (the simulator forgets their intents)."""
    if not order_ids:
        return
    payments = _models().Payment.__table__
    with _engine(app).begin() as conn:
        conn.execute(
            update(payments)
            .where(payments.c.order_id.in_(order_ids), payments.c.status.in_(OPEN_PAYMENT_STATES))
            .values(status="canceled", cancellation_reason="model test: example over")
        )


# ----------------------------------------------------------------------------- interleavings


class DuringStatement:
    """Run `action` in another thread just before the calling thread's `at`-th SQL statement.

    `at` is `("statement", n)`: the n-th statement of any kind, or `("write", n)`: the n-th write
    (INSERT, UPDATE, DELETE, or SQLite's BEGIN IMMEDIATE) — the moments a compare-and-set decides.

    The operation under test runs in this thread; the action (another request, a capture job,
    time passing) runs in its own thread with its own app context and connection, as another
    process would. We wait for it up to `wait` seconds: if it blocks on a lock this operation
    holds, this operation continues and the action finishes after it (what the database would
    do with two processes). On SQLite a write transaction holds the database's write lock, so
    inside one we do not wait at all. If the operation runs fewer statements, the action runs after it.
    """

    WRITES = ("INSERT", "UPDATE", "DELETE", "BEGIN IMMEDIATE")

    def __init__(self, app, at: tuple[str, int], action: Callable[[], Any], wait: float = 1.0) -> None:
        self.engine = _engine(app)
        self.kind, self.at = at
        self.action = action
        self.wait = wait
        self.count = 0
        self.fired_at: str | None = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.waited_out = False
        self.owner = threading.get_ident()
        self.write_locked = False  # SQLite: this thread is inside BEGIN IMMEDIATE ... COMMIT

    def _run(self) -> None:
        try:
            self.action()
        except BaseException as exc:  # noqa: BLE001 - kept for the caller (`error`)
            self.error = exc

    def _fire(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.thread.join(0 if self.write_locked else self.wait)
        self.waited_out = self.thread.is_alive()  # blocked, most likely on a lock this operation holds

    def _on_statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if threading.get_ident() != self.owner or self.thread is not None:
            return
        if self.kind == "write" and not statement.lstrip().upper().startswith(self.WRITES):
            return
        self.count += 1
        if self.count >= self.at:
            words = statement.split()[:2]
            self.fired_at = f"{self.kind} {self.count} ({' '.join(words)})"
            self._fire()

    def _after_statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if threading.get_ident() == self.owner and statement.lstrip().upper().startswith("BEGIN IMMEDIATE"):
            self.write_locked = True

    def _transaction_ended(self, conn) -> None:
        if threading.get_ident() == self.owner:
            self.write_locked = False

    def _listeners(self):
        return [
            ("before_cursor_execute", self._on_statement),
            ("after_cursor_execute", self._after_statement),
            ("commit", self._transaction_ended),
            ("rollback", self._transaction_ended),
        ]

    def __enter__(self) -> Self:
        for name, fn in self._listeners():
            event.listen(self.engine, name, fn)
        return self

    def __exit__(self, *exc_info) -> None:
        for name, fn in self._listeners():
            event.remove(self.engine, name, fn)
        if self.thread is None:
            self._fire()
        self.thread.join(60)
        if self.thread.is_alive():
            raise RuntimeError("the interleaved action did not finish within 60 s")
