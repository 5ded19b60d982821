"""The domain's own errors: what happened to a cart, an order or a payment, each with the contract's code.

The use cases raise these and know nothing of HTTP. One mapping at the edge
(`DOMAIN_STATUS` in the edge's errors module) turns each kind into the contract's status: `Missing` 404,
`Invalid` 422, `StateConflict` 409, `Declined` 402, `TryAgainLater` 503. The message is
for the person who sent the request; the code is for programs.
"""

from __future__ import annotations


class DomainError(Exception):
    """Something the caller can act on; `code` is the contract's snake_case error code."""

    code = "domain_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# The kinds: one status each at the edge.

class Missing(DomainError):
    """The thing named does not exist."""

    code = "not_found"


class Invalid(DomainError):
    """The request asks for something the rules never allow (whatever the state)."""

    code = "invalid_request"


class StateConflict(DomainError):
    """The request is fine but the cart, order or payment is not in a state that allows it now."""

    code = "conflict"


class Declined(DomainError):
    """The card issuer or Stripe declined the money asked for."""

    code = "payment_declined"


class TryAgainLater(DomainError):
    """Stripe did not answer usefully; nothing was changed, and the same request may succeed later."""

    code = "payment_provider_unavailable"


# Missing

class ProductNotFound(Missing):
    pass


class CartNotFound(Missing):
    pass


class LineItemNotFound(Missing):
    pass


class OrderNotFound(Missing):
    pass


class OrderEditNotFound(Missing):
    pass


class UnknownPaymentIntent(Missing):
    """A PaymentIntent that names no cart of this engine."""


# Invalid

class InvalidItems(Invalid):
    """An edit's item list or a refund's amount breaks a rule of its own (empty, out of range)."""


class TooManyItems(Invalid):
    code = "too_many_items"


class DuplicateProduct(Invalid):
    code = "duplicate_product"


class CurrencyMismatch(Invalid):
    code = "currency_mismatch"


class AmountTooLarge(Invalid):
    code = "amount_too_large"


class QuantityTooLarge(Invalid):
    code = "quantity_too_large"


class CartEmpty(Invalid):
    code = "cart_empty"


class InvalidRefundAmount(Invalid):
    pass


# StateConflict

class CartCompleted(StateConflict):
    code = "cart_completed"


class PaymentNotAuthorized(StateConflict):
    code = "payment_not_authorized"


class PaymentNotPlaceable(StateConflict):
    """The authorization exists but cannot become this cart's order (it was voided instead)."""

    code = "payment_not_placeable"


class PaymentIntentUnavailable(StateConflict):
    code = "payment_intent_unavailable"


class GracePeriodOver(StateConflict):
    code = "grace_period_expired"


class OrderCanceled(StateConflict):
    code = "order_canceled"


class EditConflict(StateConflict):
    """Another edit of the same order won; reload and edit again."""

    code = "edit_conflict"


class IncreaseRefused(StateConflict):
    """Stripe refused the second payment an increase needs (its amount below the minimum charge)."""

    code = "authorization_increase_refused"


class OrderBusy(StateConflict):
    """Another operation holds the payment for a moment (a cancel or capture in flight)."""

    code = "order_busy"


class NotCancelable(StateConflict):
    code = "not_cancelable"


class NotCaptured(StateConflict):
    code = "not_captured"


class RefundExceedsCaptured(StateConflict):
    code = "refund_exceeds_captured"


class RefundRefused(StateConflict):
    code = "refund_refused"


# Declined

class PaymentDeclined(Declined):
    code = "payment_declined"


class IncreaseDeclined(Declined):
    code = "authorization_increase_declined"


class IncreaseUnsupported(Declined):
    code = "authorization_increase_unsupported"


# TryAgainLater

class ProviderUnavailable(TryAgainLater):
    code = "payment_provider_unavailable"
