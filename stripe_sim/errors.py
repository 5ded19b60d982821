"""Stripe-shaped API errors raised by the simulator and rendered as JSON."""

from __future__ import annotations

from typing import Any


class StripeError(Exception):
    """An error that renders as Stripe's ``{"error": {...}}`` body."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        payment_intent: dict[str, Any] | None = None,
        charge: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.param = param
        self.decline_code = decline_code
        self.payment_intent = payment_intent
        self.charge = charge
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """Return the JSON body Stripe would send for this error."""
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        for key in ("code", "param", "decline_code", "payment_intent", "charge"):
            value = getattr(self, key)
            if value is not None:
                err[key] = value
        if self.code:
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        return {"error": err}


def invalid_request(message: str, code: str | None = None, param: str | None = None, **kw: Any) -> StripeError:
    """400 invalid_request_error."""
    return StripeError(400, "invalid_request_error", message, code=code, param=param, **kw)


def missing(resource: str, obj_id: str, param: str | None = None) -> StripeError:
    """404 resource_missing (400 when the missing object was named in a parameter, as Stripe does)."""
    status = 400 if param else 404
    return StripeError(
        status, "invalid_request_error", f"No such {resource}: '{obj_id}'", code="resource_missing", param=param
    )


def unexpected_state(message: str, payment_intent: dict[str, Any] | None = None) -> StripeError:
    """400 payment_intent_unexpected_state."""
    return invalid_request(message, code="payment_intent_unexpected_state", payment_intent=payment_intent)


def card_declined(
    decline_code: str, message: str, payment_intent: dict[str, Any] | None = None, charge: str | None = None
) -> StripeError:
    """402 card_error / card_declined."""
    return StripeError(
        402,
        "card_error",
        message,
        code="card_declined",
        decline_code=decline_code,
        payment_intent=payment_intent,
        charge=charge,
    )


def api_error(message: str = "An unknown error occurred (simulated).") -> StripeError:
    """500 api_error."""
    return StripeError(500, "api_error", message)


RATE_LIMIT_MESSAGE = "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests."


def rate_limited(message: str = RATE_LIMIT_MESSAGE) -> StripeError:
    """429 rate limit error (Stripe uses type invalid_request_error, code rate_limit)."""
    return StripeError(429, "invalid_request_error", message, code="rate_limit")


def authentication(message: str) -> StripeError:
    """401 authentication_error."""
    return StripeError(401, "authentication_error", message)
