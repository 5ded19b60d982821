"""The only module that imports `stripe`: plain data classes in, plain data classes out."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import stripe
from flask import Flask, current_app

from app.payments.provider_errors import (
    CardDeclined,
    IdempotencyConflict,
    PaymentProviderError,
    ProviderMisconfigured,
    ProviderOutcomeUnknown,
    ProviderRefused,
    RateLimited,
    ResourceMissing,
)
from app.payments.rate_limit import RateLimitWaitTooLong, SharedRateLimiter

log = logging.getLogger(__name__)

CREATED_BY = "delayed-capture-engine"


@dataclass(frozen=True)
class PaymentIntent:
    id: str
    status: str
    amount: int
    amount_capturable: int
    amount_received: int
    currency: str
    client_secret: str | None
    latest_charge: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    cancellation_reason: str | None = None
    last_error_code: str | None = None
    last_error_decline_code: str | None = None
    last_error_message: str | None = None
    # When the card's authorization expires (the charge's `capture_before`, Unix seconds), if known.
    capture_before: int | None = None
    # The charge's `payment_method_details.card.incremental_authorization.status` ("available" or
    # "unavailable"), when the charge came expanded; None when unknown.
    incremental_authorization: str | None = None

    @property
    def is_authorized(self) -> bool:
        return self.status == "requires_capture"


@dataclass(frozen=True)
class Refund:
    id: str
    payment_intent: str | None
    charge: str | None
    amount: int
    currency: str
    status: str
    reason: str | None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Charge:
    id: str
    payment_intent: str | None
    amount: int
    amount_captured: int
    amount_refunded: int
    currency: str
    captured: bool
    refunded: bool


@dataclass(frozen=True)
class EventPage:
    """One page of Stripe's event list, newest first; events as plain dicts (the webhook payload's shape)."""

    events: list[dict[str, Any]]
    has_more: bool


def _plain(obj: Any) -> Any:
    """A StripeObject as plain dicts and lists (event payloads already are)."""
    return obj.to_dict() if hasattr(obj, "to_dict") else obj


def _get(obj: Any, key: str, default: Any = None) -> Any:
    try:
        value = obj[key]
    except (KeyError, TypeError):
        return default
    return default if value is None else value


def _metadata(obj: Any) -> dict[str, str]:
    meta = _get(obj, "metadata", {}) or {}
    return {str(k): str(v) for k, v in dict(meta).items()}


def payment_intent_from(obj: Any) -> PaymentIntent:
    """A PaymentIntent from a Stripe object or an event's `data.object` dict."""
    obj = _plain(obj)
    error = _get(obj, "last_payment_error") or {}
    charge = _get(obj, "latest_charge")
    capture_before = incremental = None
    if not isinstance(charge, str) and charge is not None:
        card = _get(_get(charge, "payment_method_details") or {}, "card") or {}
        capture_before = _get(card, "capture_before")
        incremental = _get(_get(card, "incremental_authorization") or {}, "status")
        charge = _get(charge, "id")
    return PaymentIntent(
        id=obj["id"],
        status=obj["status"],
        amount=int(_get(obj, "amount", 0)),
        amount_capturable=int(_get(obj, "amount_capturable", 0)),
        amount_received=int(_get(obj, "amount_received", 0)),
        currency=obj["currency"],
        client_secret=_get(obj, "client_secret"),
        latest_charge=charge,
        metadata=_metadata(obj),
        cancellation_reason=_get(obj, "cancellation_reason"),
        last_error_code=_get(error, "code"),
        last_error_decline_code=_get(error, "decline_code"),
        last_error_message=_get(error, "message"),
        capture_before=int(capture_before) if capture_before else None,
        incremental_authorization=incremental,
    )


def refund_from(obj: Any) -> Refund:
    obj = _plain(obj)
    return Refund(
        id=obj["id"],
        payment_intent=_get(obj, "payment_intent"),
        charge=_get(obj, "charge"),
        amount=int(obj["amount"]),
        currency=obj["currency"],
        status=_get(obj, "status", "pending"),
        reason=_get(obj, "reason"),
        metadata=_metadata(obj),
    )


def charge_from(obj: Any) -> Charge:
    obj = _plain(obj)
    return Charge(
        id=obj["id"],
        payment_intent=_get(obj, "payment_intent"),
        amount=int(_get(obj, "amount", 0)),
        amount_captured=int(_get(obj, "amount_captured", 0)),
        amount_refunded=int(_get(obj, "amount_refunded", 0)),
        currency=obj["currency"],
        captured=bool(_get(obj, "captured", False)),
        refunded=bool(_get(obj, "refunded", False)),
    )


def _translate(exc: stripe.StripeError) -> PaymentProviderError:
    """Stripe's exception classes → the project's own."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None) if error is not None else None
    message = getattr(exc, "user_message", None) or str(exc)
    status = getattr(exc, "http_status", None)
    if isinstance(exc, stripe.CardError):
        return CardDeclined(message, code=code, decline_code=getattr(error, "decline_code", None), http_status=status)
    if isinstance(exc, stripe.RateLimitError):
        return RateLimited(message, code=code or "rate_limit", http_status=status)
    if isinstance(exc, stripe.IdempotencyError):
        return IdempotencyConflict(message, code=code or "idempotency_error", http_status=status)
    if isinstance(exc, stripe.InvalidRequestError):
        if status == 404 or code == "resource_missing":
            return ResourceMissing(message, code=code, param=getattr(exc, "param", None), http_status=status)
        return ProviderRefused(message, code=code, param=getattr(exc, "param", None), http_status=status)
    if isinstance(exc, (stripe.AuthenticationError, stripe.PermissionError)):
        return ProviderMisconfigured(message, code=code, http_status=status)
    if isinstance(exc, (stripe.APIConnectionError, stripe.APIError)):
        return ProviderOutcomeUnknown(message, code=code, http_status=status)
    return PaymentProviderError(message, code=code, http_status=status)


class StripeGateway:
    """The Stripe calls the engine makes; every write takes the caller's idempotency key."""

    def __init__(self, api_key: str, *, api_base: str | None, max_network_retries: int, timeout: int,
                 limiter: SharedRateLimiter | None = None):
        self._limiter = limiter
        http_client = stripe.RequestsClient(timeout=timeout)
        base_addresses = {"api": api_base} if api_base else None
        self._client = stripe.StripeClient(
            api_key,
            base_addresses=base_addresses,
            max_network_retries=max_network_retries,
            http_client=http_client,
        )

    def _call(self, description: str, fn, *args, **kwargs):
        try:
            if self._limiter is not None:
                self._limiter.acquire()
            return fn(*args, **kwargs)
        except RateLimitWaitTooLong as exc:
            raise RateLimited(str(exc), code="rate_limit_local") from exc
        except stripe.StripeError as exc:
            translated = _translate(exc)
            log.info(
                "stripe call failed",
                extra={"call": description, "error_type": type(translated).__name__, "code": translated.code},
            )
            raise translated from exc

    def create_payment_intent(
        self, *, amount: int, currency: str, idempotency_key: str, cart_id: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PaymentIntent:
        """A manual-capture card PaymentIntent for a cart (`cart_id`) or an order's edit (`metadata`:
        `order_id`, `order_edit_id`)."""
        params = {
            "amount": amount,
            "currency": currency,
            "capture_method": "manual",
            # Says who made it: on a Stripe account shared with other integrations, events about
            # PaymentIntents without these are someone else's (stored, ignored, answered 200).
            "metadata": {**({"cart_id": cart_id} if cart_id else {}), **(metadata or {}), "created_by": CREATED_BY},
            # Card only: incremental authorization, capture_before and the grace period assume a card.
            "payment_method_types": ["card"],
            "payment_method_options": {"card": {"request_incremental_authorization": "if_available"}},
        }
        obj = self._call(
            "payment_intents.create",
            self._client.v1.payment_intents.create,
            params=params,
            options={"idempotency_key": idempotency_key},
        )
        return payment_intent_from(obj)

    def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentIntent:
        # The charge comes expanded (same request): its card's `capture_before` is the authorization's expiry.
        obj = self._call("payment_intents.retrieve", self._client.v1.payment_intents.retrieve, payment_intent_id,
                         params={"expand": ["latest_charge"]})
        return payment_intent_from(obj)

    def cancel_payment_intent(
        self, payment_intent_id: str, *, idempotency_key: str, reason: str | None = None
    ) -> PaymentIntent:
        params = {"cancellation_reason": reason} if reason else {}
        obj = self._call(
            "payment_intents.cancel",
            self._client.v1.payment_intents.cancel,
            payment_intent_id,
            params=params,
            options={"idempotency_key": idempotency_key},
        )
        return payment_intent_from(obj)

    def capture_payment_intent(
        self, payment_intent_id: str, *, amount_to_capture: int, idempotency_key: str
    ) -> PaymentIntent:
        obj = self._call(
            "payment_intents.capture",
            self._client.v1.payment_intents.capture,
            payment_intent_id,
            params={"amount_to_capture": amount_to_capture},
            options={"idempotency_key": idempotency_key},
        )
        return payment_intent_from(obj)

    def increment_authorization(self, payment_intent_id: str, *, amount: int, idempotency_key: str) -> PaymentIntent:
        obj = self._call(
            "payment_intents.increment_authorization",
            self._client.v1.payment_intents.increment_authorization,
            payment_intent_id,
            params={"amount": amount},
            options={"idempotency_key": idempotency_key},
        )
        return payment_intent_from(obj)

    def create_refund(
        self, *, payment_intent_id: str, amount: int, idempotency_key: str, metadata: dict[str, str] | None = None
    ) -> Refund:
        params: dict[str, Any] = {"payment_intent": payment_intent_id, "amount": amount}
        if metadata:
            params["metadata"] = metadata
        obj = self._call(
            "refunds.create",
            self._client.v1.refunds.create,
            params=params,
            options={"idempotency_key": idempotency_key},
        )
        return refund_from(obj)

    def list_refunds(self, payment_intent_id: str) -> list[Refund]:
        page = self._call(
            "refunds.list",
            self._client.v1.refunds.list,
            params={"payment_intent": payment_intent_id, "limit": 100},
        )
        return [refund_from(obj) for obj in page.data]

    def retrieve_charge(self, charge_id: str) -> Charge:
        obj = self._call("charges.retrieve", self._client.v1.charges.retrieve, charge_id)
        return charge_from(obj)

    def list_events(
        self, *, created_gte: int, types: list[str], starting_after: str | None = None, limit: int = 100
    ) -> EventPage:
        """One page of the events of `types` created at or after `created_gte` (unix seconds), newest first.

        The next page starts after the last event of this one (`starting_after`): events created
        meanwhile arrive at the head of the list, so paging towards older ones misses none.
        """
        params: dict[str, Any] = {"created": {"gte": created_gte}, "types": types, "limit": limit}
        if starting_after:
            params["starting_after"] = starting_after
        page = self._call("events.list", self._client.v1.events.list, params=params)
        return EventPage(events=[_plain(event) for event in page.data], has_more=bool(page.has_more))


class WebhookSignatureError(Exception):
    """The payload's `Stripe-Signature` is missing, wrong or too old."""


def verify_webhook(payload: bytes, signature_header: str | None, secret: str, tolerance: int = 300) -> dict:
    """Verify Stripe's signature over the raw body, then parse it; raises WebhookSignatureError."""
    if not signature_header:
        raise WebhookSignatureError("missing Stripe-Signature header")
    try:
        stripe.WebhookSignature.verify_header(payload.decode("utf-8"), signature_header, secret, tolerance)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise WebhookSignatureError(str(exc)) from exc
    try:
        event = json.loads(payload)
    except ValueError as exc:
        raise ValueError("the signed payload is not JSON") from exc
    return event


def init_app(app: Flask) -> None:
    settings = app.config["ENGINE"]
    gateway = None
    if settings.stripe_secret_key:
        limiter = None
        if settings.stripe_max_requests_per_second and app.extensions.get("redis") is not None:
            limiter = SharedRateLimiter(app.extensions["redis"], settings.stripe_max_requests_per_second)
        gateway = StripeGateway(
            settings.stripe_secret_key,
            api_base=settings.stripe_api_base,
            max_network_retries=settings.stripe_max_network_retries,
            timeout=settings.stripe_timeout_seconds,
            limiter=limiter,
        )
    app.extensions["stripe_gateway"] = gateway


def get_gateway() -> StripeGateway:
    gateway = current_app.extensions.get("stripe_gateway")
    if gateway is None:
        raise ProviderMisconfigured("STRIPE_SECRET_KEY is not configured")
    return gateway
