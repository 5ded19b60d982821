"""One PaymentIntent per cart and amount, created with a deterministic idempotency key."""

from __future__ import annotations

import hashlib
import logging
import secrets

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from app.carts import lock_open_cart
from app.db_tx import write_transaction
from app.extensions import db
from app.models import Cart, PaymentCollection, PaymentSession, PaymentSessionStatus
from app.payments.errors import CartCompleted, CartEmpty, PaymentIntentUnavailable
from app.payments.provider_errors import ProviderOutcomeUnknown, ProviderRefused
from app.payments.queries import require_cart, session_for_intent
from app.payments.stripe_gateway import PaymentIntent, get_gateway

log = logging.getLogger(__name__)

# States in which the cart path voids a PaymentIntent it replaces. Never `requires_capture`: an
# authorized PaymentIntent may be becoming an order right now (the webhook); only placement
# decides what becomes of an authorization (an order, or voided as not matching its cart).
_CANCELABLE = {"requires_payment_method", "requires_confirmation", "requires_action"}


def payment_intent_idempotency_key(cart_id: str, amount: int, currency: str, generation: int = 0) -> str:
    """`sha256(cart_id:amount:currency)`; a later generation only after that PaymentIntent was canceled."""
    material = f"{cart_id}:{amount}:{currency}"
    if generation:
        material += f":{generation}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def session_status_for(intent: PaymentIntent) -> str:
    if intent.status == "requires_capture":
        return PaymentSessionStatus.AUTHORIZED
    if intent.status == "succeeded":
        return PaymentSessionStatus.CAPTURED
    if intent.status == "canceled":
        return PaymentSessionStatus.CANCELED
    if intent.status == "requires_action":
        return PaymentSessionStatus.REQUIRES_MORE
    if intent.status == "requires_payment_method" and intent.last_error_message:
        return PaymentSessionStatus.ERROR
    return PaymentSessionStatus.PENDING


def collection_for_cart(cart: Cart) -> PaymentCollection:
    """The cart's PaymentCollection (created on first use), its amount set to the cart's total."""
    collection = db.session.scalar(select(PaymentCollection).where(PaymentCollection.cart_id == cart.id))
    if collection is None:
        collection = PaymentCollection(cart_id=cart.id, currency=cart.currency, amount=cart.total)
        db.session.add(collection)
    collection.amount = cart.total
    return collection


def _record_session(cart_id: str, intent: PaymentIntent, idempotency_key: str) -> None:
    """Remember the PaymentIntent (once, by its unique id) and make it the cart's current one."""
    try:
        with write_transaction() as session:
            cart = lock_open_cart(cart_id)  # a cart frozen meanwhile answers cart_completed
            collection = collection_for_cart(cart)
            existing = session_for_intent(intent.id)
            if existing is None:
                session.add(
                    PaymentSession(
                        payment_collection=collection,
                        stripe_payment_intent_id=intent.id,
                        idempotency_key=idempotency_key,
                        amount=intent.amount,
                        currency=intent.currency,
                        status=session_status_for(intent),
                    )
                )
            else:
                existing.status = session_status_for(intent)
            cart.payment_intent_id = intent.id
    except IntegrityError:
        # A concurrent request for the same cart recorded it first: same key, same PaymentIntent.
        db.session.rollback()
        with write_transaction():
            lock_open_cart(cart_id).payment_intent_id = intent.id


def _mark_canceled(payment_intent_id: str) -> None:
    with write_transaction():
        row = session_for_intent(payment_intent_id)
        if row is not None:
            row.status = PaymentSessionStatus.CANCELED


def _cancel_stale(intent_id: str) -> None:
    """Void a PaymentIntent for an old cart total so it can never be captured."""
    gateway = get_gateway()
    intent = gateway.retrieve_payment_intent(intent_id)
    if intent.status not in _CANCELABLE and intent.status != "canceled":
        # Authorized (or captured): placement's to decide, when its webhook or /complete comes.
        log.info("replaced payment intent left to placement", extra={"payment_intent_id": intent_id, "status": intent.status})
        return
    if intent.status in _CANCELABLE:
        try:
            # A key per attempt (Stripe voids once; a fixed key would replay a stored error for 24 h).
            gateway.cancel_payment_intent(intent_id, idempotency_key=f"cancel-stale:{intent_id}:{secrets.token_hex(6)}",
                                          reason="abandoned")
            log.info("stale payment intent canceled", extra={"payment_intent_id": intent_id})
        except ProviderRefused as exc:
            # It moved on meanwhile (e.g. canceled already); the next retrieve tells the truth.
            log.warning("stale payment intent not canceled", extra={"payment_intent_id": intent_id, "error": exc.message})
            return
    _mark_canceled(intent_id)


def ensure_payment_intent(cart_id: str) -> PaymentIntent:
    """The cart's PaymentIntent for its current total: the same one on every call until the total changes."""
    cart = require_cart(cart_id)
    if cart.completed_at is not None:
        raise CartCompleted("The cart was already turned into an order.")
    amount, currency = cart.total, cart.currency
    if not cart.items or amount <= 0:
        raise CartEmpty("The cart is empty; add items before paying.")
    gateway = get_gateway()

    if cart.payment_intent_id:
        current = session_for_intent(cart.payment_intent_id)
        if current is not None and current.amount == amount and current.currency == currency:
            intent = gateway.retrieve_payment_intent(current.stripe_payment_intent_id)
            if intent.status != "canceled":
                return intent
            _mark_canceled(intent.id)
        else:
            _cancel_stale(cart.payment_intent_id)

    for _ in range(3):
        intent = _create_for_generation(cart_id, amount, currency)
        if intent.status != "canceled":
            log.info("payment intent ready", extra={"cart_id": cart_id, "payment_intent_id": intent.id, "amount": amount})
            return intent
        # The key led to a PaymentIntent canceled behind our back: now recorded, the next generation is fresh.
    raise PaymentIntentUnavailable("Could not obtain a usable PaymentIntent; try again.")


def _count_failed_create(cart_id: str) -> None:
    with write_transaction() as session:
        session.execute(
            update(Cart)
            .where(Cart.id == cart_id)
            .values(failed_payment_intent_creates=Cart.failed_payment_intent_creates + 1)
            .execution_options(synchronize_session=False)
        )


def _create_for_generation(cart_id: str, amount: int, currency: str) -> PaymentIntent:
    """Create (or, on a retry, get back) the PaymentIntent of this cart, amount and generation."""
    # Deterministic: a retried request computes the same generation and so the same key.
    canceled_before = db.session.scalar(
        select(func.count(PaymentSession.id))
        .join(PaymentCollection)
        .where(
            PaymentCollection.cart_id == cart_id,
            PaymentSession.amount == amount,
            PaymentSession.currency == currency,
            PaymentSession.status == PaymentSessionStatus.CANCELED,
        )
    )
    failed_before = db.session.scalar(select(Cart.failed_payment_intent_creates).where(Cart.id == cart_id)) or 0
    key = payment_intent_idempotency_key(cart_id, amount, currency, (canceled_before or 0) + failed_before)
    try:
        intent = get_gateway().create_payment_intent(amount=amount, currency=currency, cart_id=cart_id,
                                                     idempotency_key=key)
    except ProviderOutcomeUnknown as exc:
        if exc.http_status and exc.http_status >= 500:
            # Stripe answered with an error it stores under the key for 24 hours: without a new
            # generation every retry of this checkout would get that error back. (Whatever the failed
            # attempt may have left at Stripe was never given to the customer: nothing can pay it.)
            _count_failed_create(cart_id)
        raise
    _record_session(cart_id, intent, key)
    return intent
