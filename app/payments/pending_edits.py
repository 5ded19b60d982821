"""Order increases paid with a second authorization, for cards whose authorization cannot be raised.

The flow (the contract's *Order increases*):
1. `create_pending_edit`: a PaymentIntent for `amount_due` at Stripe first (its key names the
   edit and the amount), then one transaction that checks the order is still editable and at the
   version the edit was priced against, supersedes the order's earlier pending edit, and writes
   the `OrderEdit` with its PaymentSession. The order's items and total do not change.
2. The customer's browser confirms that PaymentIntent. When Stripe reports it `requires_capture`
   (the webhook, or `complete_edit`), `apply_authorized_edit` applies the edit in one transaction
   of compare-and-sets: the edit still `requires_payment`, every live payment still `authorized`
   with its deadline ahead (database clock), the order still at the edit's version. It then has the
   edit's items and total and a second authorized `Payment`.
3. Every other way out (superseded, lapsed at the deadline, order canceled, an authorization that
   arrives too late) retires the edit with `void_pending`: its PaymentIntent is voided after the
   commit, and by the sweep's janitor (`resolve_pending_edits`) should that process die first. An
   authorization for an edit that did not apply is never captured.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from app.db_clock import db_now, read_db_now
from app.db_tx import write_transaction
from app.extensions import db
from app.ids import new_id
from app.log import current_trace_id
from app.models import (
    Order,
    OrderChange,
    OrderEdit,
    OrderEditStatus,
    OrderItem,
    OrderStatus,
    Payment,
    PaymentCollection,
    PaymentSession,
    PaymentSessionStatus,
    PaymentStatus,
)
from app.models.base import utcnow
from app.notices import outbox as notices
from app.payments import transitions
from app.payments.errors import (
    EditConflict,
    GracePeriodOver,
    IncreaseRefused,
    OrderCanceled,
    OrderEditNotFound,
    PaymentNotAuthorized,
    ProviderUnavailable,
)
from app.payments.provider_errors import PaymentProviderError, ProviderRefused
from app.payments.stripe_gateway import PaymentIntent, get_gateway

log = logging.getLogger(__name__)

E = OrderEditStatus
BATCH = 100


@dataclass(frozen=True)
class EditResult:
    """An edit's answer: the order as it is now, and the pending edit when the customer must pay more."""

    order: Order
    pending_edit: OrderEdit | None = None


def snapshot(items) -> list[dict]:
    return [
        {"product_id": i.product_id, "title": i.title, "unit_amount": i.unit_amount, "quantity": i.quantity}
        for i in items
    ]


def pending_edit_for(order_id: str) -> OrderEdit | None:
    return db.session.scalar(
        select(OrderEdit).where(OrderEdit.order_id == order_id, OrderEdit.status == E.REQUIRES_PAYMENT)
    )


def edit_for_intent(payment_intent_id: str) -> OrderEdit | None:
    return db.session.scalar(select(OrderEdit).where(OrderEdit.stripe_payment_intent_id == payment_intent_id))


def require_edit(order_id: str, edit_id: str) -> OrderEdit:
    edit = db.session.get(OrderEdit, edit_id)
    if edit is None or edit.order_id != order_id:
        raise OrderEditNotFound(f"No edit {edit_id!r} of order {order_id!r}.")
    return edit


# --- retiring: every way out of requires_payment but `applied` ------------------------------------


LAPSED = "the grace period ended before it was paid"


def _retire_where(status: str, why: str, *conditions) -> list[str]:
    """Pending edits matching `conditions` → `status`, their PaymentIntents to be voided (one
    compare-and-set on `requires_payment`: an edit applied meanwhile is left alone). Their ids."""
    return list(db.session.scalars(
        update(OrderEdit)
        .where(OrderEdit.status == E.REQUIRES_PAYMENT, *conditions)
        .values(status=status, void_pending=True, resolution=why[:1000], resolved_at=utcnow())
        .returning(OrderEdit.id)
        .execution_options(synchronize_session=False)
    ))


def retire_pending(order_id: str, status: str, why: str) -> list[str]:
    """Inside a write transaction: the order's pending edit → `status`, its PaymentIntent to be voided.
    Returns the ids retired (at most one)."""
    return _retire_where(status, why, OrderEdit.order_id == order_id)


def _retire(edit_id: str, status: str, why: str) -> bool:
    with write_transaction():
        return bool(_retire_where(status, why, OrderEdit.id == edit_id))


def void_edit_intents(edit_ids: list[str]) -> int:
    """After the commit: void the PaymentIntents of edits that will never apply. Failures stay
    `void_pending` for the sweep. Returns how many were voided (or found voided)."""
    voided = 0
    for edit_id in edit_ids:
        edit = db.session.get(OrderEdit, edit_id)
        if edit is None or not edit.void_pending:
            continue
        if _void(edit):
            voided += 1
    return voided


def _void(edit: OrderEdit) -> bool:
    gateway = get_gateway()
    payment_intent_id = edit.stripe_payment_intent_id
    try:
        # A key per attempt: an error Stripe stored under a fixed key would be replayed for 24 hours;
        # voiding twice is harmless (Stripe cancels a PaymentIntent once).
        gateway.cancel_payment_intent(payment_intent_id, idempotency_key=f"void-edit:{edit.id}:{secrets.token_hex(6)}",
                                      reason="abandoned")
    except ProviderRefused:
        try:
            status = gateway.retrieve_payment_intent(payment_intent_id).status
        except PaymentProviderError as exc:
            log.warning("edit payment not voided yet", extra={"order_edit_id": edit.id, "error": exc.message})
            return False
        if status != "canceled":
            # Captured outside the engine (it never captures an edit that did not apply): a person must look.
            log.error("edit payment cannot be voided", extra={"order_edit_id": edit.id, "stripe_status": status})
            _clear_void(edit.id, f"could not be voided: the PaymentIntent is {status}")
            return False
    except PaymentProviderError as exc:
        log.warning("edit payment not voided yet", extra={"order_edit_id": edit.id, "error": exc.message})
        return False
    _clear_void(edit.id, None)
    log.info("edit payment voided", extra={"order_edit_id": edit.id, "payment_intent_id": payment_intent_id})
    return True


def _clear_void(edit_id: str, note: str | None) -> None:
    with write_transaction() as session:
        edit = session.get(OrderEdit, edit_id)
        edit.void_pending = False
        session.execute(
            update(PaymentSession)
            .where(PaymentSession.id == edit.payment_session_id)
            .values(status=PaymentSessionStatus.CANCELED, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if note:
            edit.resolution = f"{edit.resolution or ''}; {note}"[:1000]


# --- 1. creating ----------------------------------------------------------------------------------


def create_pending_edit(order: Order, items: list[OrderItem], total: int, authorized: int, version: int) -> EditResult:
    """The 202 path: a PaymentIntent for the difference, and the edit waiting for it (order unchanged)."""
    order_id = order.id
    edit_id = new_id("oedit")
    amount_due = total - authorized
    key = f"order-edit:{edit_id}:{amount_due}"
    try:
        intent = get_gateway().create_payment_intent(
            amount=amount_due,
            currency=order.currency,
            idempotency_key=key,
            metadata={"order_id": order_id, "order_edit_id": edit_id},
        )
    except ProviderRefused as exc:
        # Stripe will not make it (an amount below the currency's minimum charge, say): retrying cannot help.
        raise IncreaseRefused(f"Stripe refused a payment of {amount_due} {order.currency} for the difference: "
                              f"{exc.message}") from exc
    except PaymentProviderError as exc:
        # Nothing was written: a PaymentIntent Stripe may have made is unconfirmed, unknown to the
        # customer, and holds no money.
        raise ProviderUnavailable("Stripe is unavailable; the order was not changed. Try again.") from exc

    try:
        with write_transaction(expire_on_commit=False) as session:
            transitions.lock_order(order_id)
            if not transitions.payments_still_editable(order_id):
                raise GracePeriodOver("The grace period ended while the edit was in progress; the edit was not applied.")
            same_version = session.execute(
                update(Order)
                .where(Order.id == order_id, Order.version == version, Order.status == OrderStatus.PENDING)
                .values(updated_at=utcnow())
                .execution_options(synchronize_session=False)
            ).rowcount == 1
            if not same_version:
                raise EditConflict("The order was changed meanwhile; reload it and edit again.")
            superseded = retire_pending(order_id, E.SUPERSEDED, f"superseded by edit {edit_id}")
            collection = session.scalar(select(PaymentCollection).where(PaymentCollection.order_id == order_id))
            payment_session = PaymentSession(
                payment_collection_id=collection.id,
                stripe_payment_intent_id=intent.id,
                idempotency_key=key,
                amount=amount_due,
                currency=order.currency,
                status=PaymentSessionStatus.PENDING,
            )
            session.add(payment_session)
            session.flush()
            edit = OrderEdit(
                id=edit_id,
                order_id=order_id,
                status=E.REQUIRES_PAYMENT,
                base_version=version,
                items=snapshot(items),
                total=total,
                currency=order.currency,
                authorized_before=authorized,
                amount_due=amount_due,
                stripe_payment_intent_id=intent.id,
                payment_session_id=payment_session.id,
                client_secret=intent.client_secret,
                expires_at=session.get(Order, order_id).grace_period_ends_at,
                trace_id=current_trace_id(),
            )
            session.add(edit)
            notices.payment_required(session.get(Order, order_id), edit, items)
    except (GracePeriodOver, EditConflict, IntegrityError) as exc:
        _void_unused(intent.id, edit_id)
        if isinstance(exc, IntegrityError):  # another pending edit was written at the same moment
            raise EditConflict("Another edit of this order is in progress; reload and try again.") from None
        raise
    void_edit_intents(superseded)
    log.info("order edit requires payment", extra={"order_id": order_id, "order_edit_id": edit_id,
                                                   "amount_due": amount_due, "payment_intent_id": intent.id})
    db.session.expire_all()
    return EditResult(db.session.get(Order, order_id), db.session.get(OrderEdit, edit_id))


def _void_unused(payment_intent_id: str, edit_id: str) -> None:
    """A PaymentIntent made for an edit whose transaction lost: nobody has its secret; void it anyway."""
    try:
        get_gateway().cancel_payment_intent(payment_intent_id, idempotency_key=f"void-edit:{edit_id}:unused",
                                            reason="abandoned")
    except PaymentProviderError as exc:  # unconfirmed: it holds no money, and expires at Stripe
        log.warning("unused edit payment not voided", extra={"payment_intent_id": payment_intent_id, "error": exc.message})


# --- 2. applying ----------------------------------------------------------------------------------


class _EditGone(Exception):
    """The edit left `requires_payment` meanwhile (the other path applied it, or it was retired)."""


def apply_authorized_edit(edit_id: str, intent: PaymentIntent) -> Order:
    """Stripe says the edit's PaymentIntent is authorized: apply the edit once, or void the authorization
    if the edit can no longer apply (raising why: grace period over, superseded, order canceled)."""
    edit = db.session.get(OrderEdit, edit_id)
    order_id = edit.order_id
    if edit.status == E.APPLIED:
        return db.session.get(Order, order_id)
    if edit.status != E.REQUIRES_PAYMENT:
        void_edit_intents([edit_id])
        _raise_for_retired(edit)
    if not intent.is_authorized:
        raise PaymentNotAuthorized(f"The payment is not authorized yet (PaymentIntent status {intent.status}).")
    if intent.currency != edit.currency or intent.amount_capturable < edit.amount_due:
        _retire(edit_id, E.CANCELED, f"authorized {intent.amount_capturable} {intent.currency}, "
                                     f"not the {edit.amount_due} {edit.currency} due")
        void_edit_intents([edit_id])
        raise PaymentNotAuthorized("The payment does not cover the amount due; edit the order again.")

    try:
        _apply(edit_id, intent)
    except _EditGone:
        db.session.rollback()
        edit = db.session.get(OrderEdit, edit_id)
        if edit.status == E.APPLIED:
            return db.session.get(Order, order_id)  # the webhook and /complete raced: the other one applied it
        void_edit_intents([edit_id])
        _raise_for_retired(edit)
    except (GracePeriodOver, EditConflict) as exc:
        db.session.rollback()
        order = db.session.get(Order, order_id)
        status = (E.CANCELED if order.status == OrderStatus.CANCELED
                  else E.EXPIRED if isinstance(exc, GracePeriodOver) else E.SUPERSEDED)
        _retire(edit_id, status, f"authorized too late: {exc.message}")
        void_edit_intents([edit_id])
        log.warning("edit authorized but not applied; its authorization is voided",
                    extra={"order_id": order_id, "order_edit_id": edit_id, "why": exc.message})
        raise
    log.info("order edit applied", extra={"order_id": order_id, "order_edit_id": edit_id, "payment_intent_id": intent.id})
    db.session.expire_all()
    return db.session.get(Order, order_id)


def _apply(edit_id: str, intent: PaymentIntent) -> None:
    with write_transaction() as session:
        edit = session.get(OrderEdit, edit_id)
        order_id, version = edit.order_id, edit.base_version
        transitions.lock_order(order_id)
        session.expire_all()  # read the order as the lock found it
        total_before = session.get(Order, order_id).total
        won = session.execute(
            update(OrderEdit)
            .where(OrderEdit.id == edit_id, OrderEdit.status == E.REQUIRES_PAYMENT)
            .values(status=E.APPLIED, resolution="authorized and applied", resolved_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        if not won:
            raise _EditGone()
        if not transitions.payments_still_editable(order_id):
            raise GracePeriodOver("The grace period ended before the payment for the edit was authorized.")
        same_version = session.execute(
            update(Order)
            .where(Order.id == order_id, Order.version == version, Order.status == OrderStatus.PENDING)
            .values(version=version + 1, total=edit.total, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        if not same_version:
            raise EditConflict("The order was changed after this edit was made.")
        session.expire_all()
        order = session.get(Order, order_id)
        edit = session.get(OrderEdit, edit_id)
        items_before = snapshot(order.items)
        order.items = [
            OrderItem(product_id=i["product_id"], title=i["title"], unit_amount=i["unit_amount"],
                      quantity=i["quantity"], position=position)
            for position, i in enumerate(edit.items)
        ]
        payment_session = session.get(PaymentSession, edit.payment_session_id)
        payment_session.status = PaymentSessionStatus.AUTHORIZED
        collection = session.get(PaymentCollection, payment_session.payment_collection_id)
        collection.amount = edit.total
        due_at = session.scalar(select(Payment.capture_due_at).where(
            Payment.order_id == order_id, Payment.status == PaymentStatus.AUTHORIZED).limit(1))
        session.add(Payment(
            payment_collection_id=collection.id,
            payment_session_id=payment_session.id,
            order_id=order_id,
            stripe_payment_intent_id=intent.id,
            stripe_charge_id=intent.latest_charge,
            currency=intent.currency,
            amount=intent.amount_capturable,
            status=PaymentStatus.AUTHORIZED,
            authorized_at=read_db_now(session),
            capture_due_at=due_at,
            capture_before=(datetime.fromtimestamp(intent.capture_before, timezone.utc)
                            if intent.capture_before else None),
        ))
        session.add(OrderChange(
            order_id=order_id,
            version=version + 1,
            items_before=items_before,
            items_after=list(edit.items),
            total_before=total_before,
            total_after=edit.total,
            authorized_before=edit.authorized_before,
            authorized_after=edit.authorized_before + intent.amount_capturable,
            trace_id=current_trace_id(),
        ))
        notices.order_edited(order, version + 1, total_before, order.items)


def _raise_for_retired(edit: OrderEdit) -> None:
    if edit.status == E.EXPIRED:
        raise GracePeriodOver("The grace period ended before this edit was paid; the order keeps its earlier items.")
    if edit.status == E.CANCELED:
        raise OrderCanceled(f"The edit can no longer be paid: {edit.resolution or 'canceled'}.")
    raise EditConflict("A newer edit replaced this one; pay the newer edit instead.")


def complete_edit(order_id: str, edit_id: str) -> Order:
    """`POST /store/orders/{id}/edits/{edit_id}/complete`: the edit applied once Stripe reports its
    PaymentIntent authorized; the same answer every time."""
    edit = require_edit(order_id, edit_id)
    if edit.status == E.APPLIED:
        return db.session.get(Order, order_id)
    if edit.status != E.REQUIRES_PAYMENT:
        _raise_for_retired(edit)
    try:
        intent = get_gateway().retrieve_payment_intent(edit.stripe_payment_intent_id)
    except PaymentProviderError as exc:
        raise ProviderUnavailable("Stripe is unavailable; try again.") from exc
    if intent.status == "canceled":
        _retire(edit_id, E.CANCELED, "its PaymentIntent was canceled at Stripe")
        raise OrderCanceled("The payment for this edit was canceled; edit the order again.")
    return apply_authorized_edit(edit_id, intent)


def edit_canceled_at_stripe(payment_intent_id: str) -> None:
    """`payment_intent.canceled` for an edit's PaymentIntent: a pending edit cannot be paid any more;
    a retired one's void is confirmed."""
    edit = edit_for_intent(payment_intent_id)
    if edit is None:
        return
    if edit.status == E.REQUIRES_PAYMENT:
        _retire(edit.id, E.CANCELED, "its PaymentIntent was canceled at Stripe")
    db.session.expire_all()
    edit = db.session.get(OrderEdit, edit.id)
    if edit.void_pending:
        _clear_void(edit.id, None)


# --- 3. the sweep's janitor -----------------------------------------------------------------------


def resolve_pending_edits(now: datetime, stuck_after: timedelta) -> int:
    """Pending edits past their expiry lapse; edits whose void did not happen (the process died, Stripe
    did not answer) are voided now. Bounded per sweep; returns how many were resolved."""
    with write_transaction():
        expired = _retire_where(E.EXPIRED, LAPSED, OrderEdit.expires_at <= db_now())
    # Not one OR of two columns, which no index serves: the partial index on void_pending, oldest first,
    # then the edits just retired (the newest, already known by id).
    stale = list(db.session.scalars(
        select(OrderEdit.id).where(OrderEdit.void_pending, OrderEdit.resolved_at < now - stuck_after)
        .order_by(OrderEdit.resolved_at).limit(BATCH)
    ))
    db.session.rollback()
    stale += [edit_id for edit_id in expired if edit_id not in stale]
    return void_edit_intents(stale[:BATCH])
