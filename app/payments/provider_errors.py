"""What Stripe answered, in the project's own words: the gateway maps Stripe's exceptions onto these.

They describe the provider's answer, not what it means for an order; the use cases turn them into
the domain errors of `app.payments.errors` (an increment declined, a grace period over, ...).
"""

from __future__ import annotations


class PaymentProviderError(Exception):
    """Stripe refused or failed a request."""

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status


class CardDeclined(PaymentProviderError):
    """The card issuer declined (authorization, increment or capture)."""

    def __init__(self, message: str, *, code: str | None = None, decline_code: str | None = None, **kw):
        super().__init__(message, code=code, **kw)
        self.decline_code = decline_code


class RateLimited(PaymentProviderError):
    """Stripe asked us to slow down: retry later with the same idempotency key."""


class ProviderOutcomeUnknown(PaymentProviderError):
    """Stripe could not be reached or failed internally; the outcome may be unknown."""


class ProviderRefused(PaymentProviderError):
    """Stripe rejected the request as invalid for the object's current state (its `invalid_request_error`)."""

    def __init__(self, message: str, *, param: str | None = None, **kw):
        super().__init__(message, **kw)
        self.param = param


class IdempotencyConflict(PaymentProviderError):
    """The idempotency key was used before with other parameters."""


class ResourceMissing(ProviderRefused):
    """The Stripe object does not exist."""


class ProviderMisconfigured(PaymentProviderError):
    """Bad API key or no Stripe configured."""

