"""Catalog of Stripe test PaymentMethods understood by the simulator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CardProfile:
    """Behaviour of one test payment method."""

    brand: str
    last4: str
    funding: str = "credit"
    supports_increment: bool = True
    decline_code: str | None = None
    error_code: str = "card_declined"
    message: str = "Your card was declined."


CARDS: dict[str, CardProfile] = {
    "pm_card_visa": CardProfile("visa", "4242"),
    "pm_card_mastercard": CardProfile("mastercard", "4444"),
    "pm_card_amex": CardProfile("amex", "8431"),
    "pm_card_discover": CardProfile("discover", "1117"),
    "pm_card_visa_debit": CardProfile("visa", "5556", funding="debit"),
    # Sim-specific: authorizes normally but the issuer does not support incremental authorization.
    "pm_card_visa_no_incremental": CardProfile("visa", "4242", supports_increment=False),
    "pm_card_chargeDeclined": CardProfile("visa", "0002", decline_code="generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": CardProfile(
        "visa", "9995", decline_code="insufficient_funds", message="Your card has insufficient funds."
    ),
    "pm_card_chargeDeclinedLostCard": CardProfile("visa", "9987", decline_code="lost_card"),
    "pm_card_chargeDeclinedStolenCard": CardProfile("visa", "9979", decline_code="stolen_card"),
    "pm_card_chargeDeclinedExpiredCard": CardProfile(
        "visa", "0069", decline_code="expired_card", error_code="expired_card", message="Your card has expired."
    ),
    "pm_card_chargeDeclinedIncorrectCvc": CardProfile(
        "visa", "0127", decline_code="incorrect_cvc", error_code="incorrect_cvc",
        message="Your card's security code is incorrect.",
    ),
}


def lookup(payment_method: str) -> CardProfile | None:
    """Return the test card for a PaymentMethod id, or None if unknown."""
    return CARDS.get(payment_method)


def payment_method_object(pm_id: str, card: CardProfile, created: int) -> dict[str, Any]:
    """Render a minimal ``payment_method`` object (used for ``expand[]=payment_method``)."""
    return {
        "id": pm_id,
        "object": "payment_method",
        "type": "card",
        "created": created,
        "customer": None,
        "livemode": False,
        "metadata": {},
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "card": {
            "brand": card.brand,
            "last4": card.last4,
            "exp_month": 12,
            "exp_year": 2034,
            "funding": card.funding,
            "country": "US",
        },
    }
