"""One handler per Stripe event type acted on; each retrieves the object's current state first."""

from __future__ import annotations

import logging
from typing import Callable

from app.extensions import db
from app.models import Cart
from app.payments.errors import PaymentNotAuthorized, PaymentNotPlaceable, StateConflict
from app.payments.pending_edits import apply_authorized_edit, edit_canceled_at_stripe, edit_for_intent
from app.payments.placement import place_order
from app.payments.queries import payment_for_intent, session_for_intent
from app.payments.reconcile import apply_canceled, apply_captured, sync_refunds, sync_session
from app.payments.stripe_gateway import PaymentIntent, get_gateway

log = logging.getLogger(__name__)


def _object_id(event: dict) -> str:
    return event["data"]["object"]["id"]


def is_ours(intent: PaymentIntent) -> bool:
    """Did this engine create the PaymentIntent? (Its metadata names one of our carts, or we recorded it.)

    A Stripe account may be shared with invoices, Payment Links and other apps, all of whose
    `payment_intent.*` events reach this endpoint.
    """
    cart_id = intent.metadata.get("cart_id")
    if cart_id and db.session.get(Cart, cart_id) is not None:
        return True
    return session_for_intent(intent.id) is not None or payment_for_intent(intent.id) is not None


def _place_if_authorized(payment_intent_id: str) -> None:
    """The PaymentIntent as Stripe has it now decides: authorized (or already captured) → an order."""
    intent = get_gateway().retrieve_payment_intent(payment_intent_id)
    if not is_ours(intent):
        log.info("event about a PaymentIntent this engine did not create: ignored",
                 extra={"payment_intent_id": intent.id})
        return
    sync_session(intent)
    if intent.metadata.get("order_edit_id"):
        _apply_edit_if_authorized(intent)
        return
    if intent.status not in ("requires_capture", "succeeded"):
        log.info("payment intent not authorized now; nothing to place", extra={"payment_intent_id": intent.id, "status": intent.status})
        return
    try:
        place_order(intent)
    except PaymentNotPlaceable as exc:
        log.warning("authorized payment not placed", extra={"payment_intent_id": intent.id, "reason": str(exc)})
        return
    if intent.status == "succeeded":
        payment = payment_for_intent(intent.id)
        apply_captured(payment.id, intent, created_by="stripe")


def _apply_edit_if_authorized(intent: PaymentIntent) -> None:
    """The PaymentIntent of an order increase (a pending edit): authorized → the edit applied once, or
    its authorization voided when the edit can no longer apply; captured → recorded."""
    payment = payment_for_intent(intent.id)
    if payment is not None:
        if intent.status == "succeeded":
            apply_captured(payment.id, intent, created_by="stripe")
        return  # applied already (an increment of it, or a redelivery)
    edit = edit_for_intent(intent.id)
    if edit is None or intent.status != "requires_capture":
        log.info("edit payment not authorized now; nothing to apply", extra={"payment_intent_id": intent.id,
                                                                             "status": intent.status})
        return
    try:
        apply_authorized_edit(edit.id, intent)
    except (StateConflict, PaymentNotAuthorized) as exc:
        # Handled: the edit could not apply and its authorization was voided; nothing to retry.
        log.warning("authorized edit not applied", extra={"order_edit_id": edit.id, "reason": exc.message})


def on_amount_capturable_updated(event: dict) -> None:
    """Order placed (the same idempotent placement as /complete)."""
    _place_if_authorized(_object_id(event))


def on_payment_intent_succeeded(event: dict) -> None:
    """Captured, perhaps outside the engine (Stripe's dashboard): recorded once."""
    _place_if_authorized(_object_id(event))


def on_payment_intent_canceled(event: dict) -> None:
    """Voided or expired: the payment and its order are canceled."""
    intent = get_gateway().retrieve_payment_intent(_object_id(event))
    sync_session(intent)
    payment = payment_for_intent(intent.id)
    if payment is not None and intent.status == "canceled":
        apply_canceled(payment, intent)
    elif payment is None and intent.status == "canceled" and intent.metadata.get("order_edit_id"):
        edit_canceled_at_stripe(intent.id)


def on_payment_failed(event: dict) -> None:
    """A declined attempt: kept on the cart's payment session with Stripe's reason."""
    sync_session(get_gateway().retrieve_payment_intent(_object_id(event)))


def on_charge_refunded(event: dict) -> None:
    """Refunds (ours or made in Stripe's dashboard): one Refund row per Stripe refund id."""
    payment_intent_id = event["data"]["object"].get("payment_intent")
    payment = payment_for_intent(payment_intent_id) if payment_intent_id else None
    if payment is None:
        log.warning("refund for an unknown payment", extra={"payment_intent_id": payment_intent_id})
        return
    sync_refunds(payment)


def on_charge_expired(event: dict) -> None:
    """The card's authorization ran out (`capture_before` passed): the payment and order are canceled,
    with the reason shown to staff."""
    payment_intent_id = event["data"]["object"].get("payment_intent")
    payment = payment_for_intent(payment_intent_id) if payment_intent_id else None
    if payment is None:
        return
    intent = get_gateway().retrieve_payment_intent(payment_intent_id)
    if intent.status == "canceled":
        apply_canceled(payment, intent)
    elif intent.status != "succeeded":
        log.error("authorization expired but the PaymentIntent is not canceled",
                  extra={"payment_intent_id": payment_intent_id, "status": intent.status})


def on_refund_changed(event: dict) -> None:
    """A refund's status moved at Stripe (pending → succeeded, or → failed/canceled): ours follow it."""
    on_charge_refunded(event)


HANDLERS: dict[str, Callable[[dict], None]] = {
    "payment_intent.amount_capturable_updated": on_amount_capturable_updated,
    "payment_intent.succeeded": on_payment_intent_succeeded,
    "payment_intent.canceled": on_payment_intent_canceled,
    "payment_intent.payment_failed": on_payment_failed,
    "charge.refunded": on_charge_refunded,
    "charge.expired": on_charge_expired,
    "refund.updated": on_refund_changed,
    "refund.failed": on_refund_changed,
}
