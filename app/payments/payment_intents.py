"""One PaymentIntent per cart and amount, created with a deterministic idempotency key."""

from __future__ import annotations

import hashlib
import logging
import secrets

from sqlalchemy import func, select, update

from app.carts import lock_open_cart
from app.db_tx import write_transaction
from app.extensions import db
from app.models import Cart, PaymentCollection, PaymentSession, PaymentSessionStatus
from app.payments.errors import CartCompleted, CartEmpty, PaymentIntentUnavailable
from app.payments.payment_records import items_total, record_collection, record_session
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


def _record_session(cart_id: str, intent: PaymentIntent, idempotency_key: str) -> None:
    """Remember the PaymentIntent (once, by its unique id) and make it the cart's current one.

    Three statements: the cart locked while open and its PaymentIntent set (a cart frozen meanwhile
    answers cart_completed), its collection's amount set to the items' total as they are under that
    lock, the session upserted (a concurrent request for the same cart, with the same key and so
    the same PaymentIntent, recorded it first: its status is brought up to date).
    """
    with write_transaction():
        cart = lock_open_cart(cart_id, payment_intent_id=intent.id)
        collection_id = record_collection(cart_id, cart.currency, items_total(cart_id))
        record_session(collection_id, intent, idempotency_key, session_status_for(intent))


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
    cart = require_cart(cart_id, with_items=True)
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
        intent = _create_for_generation(cart, amount, currency)
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


def _generation(cart: Cart, amount: int, currency: str) -> int:
    """How many keys of this cart, amount and currency are spent: PaymentIntents canceled, creations failed.

    Deterministic: a retried request computes the same generation and so the same key.
    """
    canceled_before = 0
    # A PaymentIntent is recorded together with the cart's `payment_intent_id`, never unset
    # afterwards: a cart without one has no session to count, canceled or not.
    if cart.payment_intent_id is not None:
        canceled_before = db.session.scalar(
            select(func.count(PaymentSession.id))
            .join(PaymentCollection)
            .where(
                PaymentCollection.cart_id == cart.id,
                PaymentSession.amount == amount,
                PaymentSession.currency == currency,
                PaymentSession.status == PaymentSessionStatus.CANCELED,
            )
        ) or 0
    return canceled_before + (cart.failed_payment_intent_creates or 0)


def _create_for_generation(cart: Cart, amount: int, currency: str) -> PaymentIntent:
    """Create (or, on a retry, get back) the PaymentIntent of this cart, amount and generation."""
    cart_id = cart.id
    key = payment_intent_idempotency_key(cart_id, amount, currency, _generation(cart, amount, currency))
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
