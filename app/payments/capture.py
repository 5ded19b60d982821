"""Capturing an order's payment: exactly once, for the order's final total, never before its deadline.

Three phases, each its own transaction, with Stripe in between (Brandur Leach's
"atomic phases"): claim the payment (authorized → capturing, once the deadline has passed by
the database's clock), call Stripe with the idempotency key `capture:{payment_id}`, record the
outcome. A crash between the phases leaves the payment `capturing`; the sweep releases such
stale claims and the retry uses the same key, so Stripe answers with the first capture instead
of making a second one. The claim returns a fencing token: the release or failure of a worker
that stalled past its lease is refused once another job has claimed the payment.
"""

from __future__ import annotations

import logging

from flask import current_app

from app.db_clock import read_db_now
from app.db_tx import write_transaction
from app.extensions import db
from app.log import current_trace_id
from app.models import CaptureAttempt, Order, OrderEditStatus, Payment, PaymentStatus
from app.models.base import utcnow
from app.payments import transitions
from app.payments.capture_intents import service_for
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
from app.payments.order_payments import allocate, payments_for_order
from app.payments.pending_edits import LAPSED, retire_pending, void_edit_intents
from app.payments.reconcile import apply_canceled, apply_captured, remove_capture_intent
from app.payments.stripe_gateway import PaymentIntent, get_gateway
from app.queues import enqueue_capture

log = logging.getLogger(__name__)


class CaptureOutcome:
    CAPTURED = "captured"
    RECONCILED = "reconciled"  # Stripe had already captured it: recorded, no second capture
    ALREADY_CAPTURED = "already_captured"
    NOT_DUE = "not_due"
    NOT_CAPTURABLE = "not_capturable"  # canceled, being canceled, or another job holds the claim
    FAILED = "failed"
    CANCELED = "canceled"
    RETRYING = "retrying"  # Stripe gave no usable answer; the capture job is queued to try again


class CaptureRetryLater(Exception):
    """Stripe was rate limiting or unreachable; RQ retries the job and its same idempotency key."""


def capture_idempotency_key(payment_id: str, generation: int = 0) -> str:
    """`capture:{payment_id}`, the same on every retry of one attempt (a lost answer is replayed).

    Stripe replays the first answer under a key for 24 hours, errors included: after an error it
    may have stored, with the PaymentIntent still uncaptured, the next attempt takes a new
    generation (`capture:{payment_id}:{n}`). Safe: Stripe captures a PaymentIntent only once.
    """
    return f"capture:{payment_id}" if not generation else f"capture:{payment_id}:{generation}"


def _record_attempt(payment: Payment, outcome: str, amount: int, trigger: str, error: str | None = None) -> None:
    with write_transaction() as session:
        session.add(
            CaptureAttempt(
                payment_id=payment.id,
                outcome=outcome,
                amount=amount,
                error=error,
                trigger=trigger,
                trace_id=current_trace_id(),
            )
        )


def capture_order(order_id: str, *, trigger: str, allow_failed: bool = False, actor: str = "engine") -> str:
    """Capture the order's final total across its payments, if (and only if) it is due; returns the outcome.

    Each payment is claimed, captured (or voided, when the total no longer needs it) and recorded
    on its own, oldest first, so one that Stripe refuses or does not answer is retried alone. The
    payments are read again after each one: an increase authorized just before the deadline adds
    a payment that this capture must take too.
    """
    done: set[str] = set()
    outcomes: list[str] = []
    retry: CaptureRetryLater | None = None
    payments: list[Payment] | None = None  # as read after the last claim (complete then), or None
    while True:
        if payments is None:
            db.session.expire_all()
            payments = payments_for_order(order_id)
        if not payments:
            log.warning("capture requested for an order without payment", extra={"order_id": order_id})
            return CaptureOutcome.NOT_CAPTURABLE
        capturable = (PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURE_FAILED) if allow_failed else (PaymentStatus.AUTHORIZED,)
        payment = next((p for p in payments if p.id not in done and p.status in capturable), None)
        if payment is None:
            break
        done.add(payment.id)
        try:
            outcome, payments = _capture_payment(order_id, payment.id, trigger=trigger, allow_failed=allow_failed,
                                                 actor=actor)
        except CaptureRetryLater as exc:
            retry, payments = exc, None
            continue
        outcomes.append(outcome)
        if outcome == CaptureOutcome.NOT_DUE:
            break
    if retry is not None:
        raise retry
    if not outcomes:
        statuses = {p.status for p in payments_for_order(order_id)}
        if PaymentStatus.CAPTURED in statuses and not statuses & set(PaymentStatus.OPEN):
            return CaptureOutcome.ALREADY_CAPTURED
        log.info("capture not claimed", extra={"order_id": order_id, "payment_status": sorted(statuses)})
        return CaptureOutcome.NOT_CAPTURABLE
    return _summary_outcome(outcomes)


def _summary_outcome(outcomes: list[str]) -> str:
    """One word for the order: a failure anywhere is a failure; a capture anywhere, a capture."""
    for word in (CaptureOutcome.FAILED, CaptureOutcome.NOT_DUE, CaptureOutcome.CAPTURED,
                 CaptureOutcome.ALREADY_CAPTURED, CaptureOutcome.CANCELED):
        if word in outcomes:
            return word
    return CaptureOutcome.NOT_CAPTURABLE


def _capture_payment(order_id: str, payment_id: str, *, trigger: str, allow_failed: bool,
                     actor: str) -> tuple[str, list[Payment] | None]:
    """Claim one payment, capture its share of the total at Stripe (or void it if its share is 0), record it.

    Returns the outcome and the order's payments as read right after the claim: complete, since no
    increase can apply once one of the order's payments is claimed (the caller takes the next from
    them); None when nothing was claimed."""
    for _ in range(2):
        try:
            with write_transaction():
                # The claim proves the deadline passed, so a pending edit can no longer apply: it lapses
                # with the claim, or not at all (the edit row first, in the order an apply takes them).
                lapsed = retire_pending(order_id, OrderEditStatus.EXPIRED, LAPSED)
                token = transitions.claim_for_capture(payment_id, allow_failed=allow_failed)
                if token is None:
                    raise _NotClaimed()
            break
        except _NotClaimed:
            pass
        db.session.expire_all()
        payment = db.session.get(Payment, payment_id)
        if payment.status != PaymentStatus.AUTHORIZED:
            return (CaptureOutcome.ALREADY_CAPTURED if payment.status == PaymentStatus.CAPTURED
                    else CaptureOutcome.NOT_CAPTURABLE), None
        if _rearm(order_id, payment):
            log.info("capture refused: grace period still running",
                     extra={"order_id": order_id, "due_at": payment.capture_due_at.isoformat()})
            return CaptureOutcome.NOT_DUE, None
        # The deadline passed between the claim and the re-arm: claim again now, not at the fallback.
    else:
        return CaptureOutcome.NOT_DUE, None
    if lapsed:
        log.info("pending edit lapsed at the deadline", extra={"order_id": order_id, "order_edit_id": lapsed[0]})
        void_edit_intents(lapsed)

    # No edit can change the total or add a payment once one payment is `capturing`: read the share now.
    db.session.expire_all()
    order = db.session.get(Order, order_id)
    payments = payments_for_order(order_id)
    payment = next(p for p in payments if p.id == payment_id)
    amount = allocate(order.total, payments).get(payment_id, 0)
    if amount <= 0:
        return _void_unneeded(payment, token, trigger), payments
    return _capture_share(payment, token, amount, trigger, actor), payments


class _NotClaimed(Exception):
    """The claim's compare-and-set did not win: its transaction (and the lapse with it) rolls back."""


def _capture_share(payment: Payment, token: int, amount: int, trigger: str, actor: str) -> str:
    """Capture `amount` of the claimed payment at Stripe, under its key, and record the answer."""
    gateway = get_gateway()
    try:
        intent = gateway.capture_payment_intent(
            payment.stripe_payment_intent_id,
            amount_to_capture=amount,
            idempotency_key=capture_idempotency_key(payment.id, payment.capture_key_generation),
        )
    except RateLimited as exc:
        return _after_rate_limit(payment, token, amount, trigger, exc)
    except ProviderOutcomeUnknown as exc:
        return _after_ambiguous_failure(payment, token, amount, trigger, exc)
    except (CardDeclined, ProviderRefused, IdempotencyConflict) as exc:
        return _after_refusal(payment, token, amount, trigger, exc)
    except (ProviderMisconfigured, PaymentProviderError) as exc:
        return _after_ambiguous_failure(payment, token, amount, trigger, exc)

    return _settle(payment, token, intent, amount, trigger, actor)


def _void_unneeded(payment: Payment, token: int, trigger: str) -> str:
    """The order's total is covered by its earlier payments (it was edited down): release this one."""
    try:
        intent = get_gateway().cancel_payment_intent(
            payment.stripe_payment_intent_id,
            idempotency_key=f"void-unneeded:{payment.id}:{payment.capture_key_generation}",
            reason="abandoned",
        )
    except PaymentProviderError as exc:
        current = _current_intent(payment)
        if isinstance(current, PaymentIntent) and current.status in ("succeeded", "canceled"):
            return _settle(payment, token, current, 0, trigger, actor="engine")
        with write_transaction():
            transitions.release_capture_claim(payment.id, token, error=f"retrying the void: {exc.message}"[:500],
                                              new_key=True)
        raise CaptureRetryLater(exc.message) from exc
    with write_transaction():
        transitions.record_canceled(payment.id, "canceled by the engine: not needed, the order's total is covered by its earlier payments")
    _record_attempt(payment, "canceled", 0, trigger, error="not needed for the order's total: authorization released")
    log.info("unneeded payment voided", extra={"order_id": payment.order_id, "payment_id": payment.id,
                                               "stripe_status": intent.status})
    return CaptureOutcome.CAPTURED if _order_captured(payment.order_id) else CaptureOutcome.CANCELED


def _order_captured(order_id: str) -> bool:
    return any(p.status == PaymentStatus.CAPTURED for p in payments_for_order(order_id))


def _settle(payment: Payment, token: int, intent: PaymentIntent, amount: int, trigger: str, actor: str) -> str:
    """Record what Stripe says the PaymentIntent is now."""
    order_id = payment.order_id
    if intent.status == "succeeded":
        recorded = apply_captured(payment.id, intent, created_by=actor)
        outcome = CaptureOutcome.CAPTURED if recorded else CaptureOutcome.ALREADY_CAPTURED
        _record_attempt(payment, "succeeded" if recorded else "reconciled", intent.amount_received, trigger)
        remove_capture_intent(order_id)
        log.info("payment captured", extra={"order_id": order_id, "payment_id": payment.id, "amount": intent.amount_received})
        return outcome
    if intent.status == "canceled":
        apply_canceled(payment, intent)
        _record_attempt(payment, "canceled", amount, trigger, error=f"authorization {intent.cancellation_reason or 'canceled'}")
        return CaptureOutcome.CANCELED
    error = f"PaymentIntent is {intent.status} after capture"
    with write_transaction():
        transitions.mark_capture_failed(payment.id, token, error)
    _record_attempt(payment, "failed", amount, trigger, error=error)
    return CaptureOutcome.FAILED


class _Missing:
    """Stripe does not know the PaymentIntent (another account or key, a deleted test object)."""


MISSING = _Missing()


def _current_intent(payment: Payment) -> PaymentIntent | _Missing | None:
    try:
        return get_gateway().retrieve_payment_intent(payment.stripe_payment_intent_id)
    except ResourceMissing:
        return MISSING
    except PaymentProviderError as exc:
        log.warning("could not retrieve payment intent to reconcile", extra={"payment_id": payment.id, "error": exc.message})
        return None


def _after_rate_limit(payment: Payment, token: int, amount: int, trigger: str, exc: PaymentProviderError) -> str:
    """A 429 means Stripe did nothing: no reconcile needed (it would spend another request); retry later."""
    with write_transaction():
        transitions.release_capture_claim(payment.id, token, error=f"retrying: {exc.message}"[:500])
    _record_attempt(payment, "retrying", amount, trigger, error=exc.message[:500])
    log.warning("capture rate limited; will be retried", extra={"payment_id": payment.id})
    raise CaptureRetryLater(exc.message) from exc


def _after_ambiguous_failure(payment: Payment, token: int, amount: int, trigger: str, exc: PaymentProviderError) -> str:
    """Timeout, outage or rate limit: the capture may or may not have happened. Ask Stripe.

    Handing the payment back to `authorized` is safe: its deadline has passed, so no edit or
    customer cancel can commit any more (both compare the deadline in their own write), and the
    retry's capture, under the same key, gets Stripe's first answer.
    """
    intent = _current_intent(payment)
    if isinstance(intent, PaymentIntent) and intent.status in ("succeeded", "canceled"):
        return _settle(payment, token, intent, amount, trigger, actor="engine")
    # Stripe says nothing was captured: the error may be stored under this key, so retry under a new one.
    new_key = isinstance(intent, PaymentIntent) and intent.status == "requires_capture"
    with write_transaction():
        transitions.release_capture_claim(payment.id, token, error=f"retrying: {exc.message}"[:500], new_key=new_key)
    _record_attempt(payment, "retrying", amount, trigger, error=exc.message[:500])
    log.warning("capture will be retried", extra={"payment_id": payment.id, "error_type": type(exc).__name__})
    raise CaptureRetryLater(exc.message) from exc


def _after_refusal(payment: Payment, token: int, amount: int, trigger: str, exc: PaymentProviderError) -> str:
    """Stripe said no. Perhaps because it is already captured or canceled: reconcile; else a visible failure."""
    intent = _current_intent(payment)
    if isinstance(intent, PaymentIntent) and intent.status in ("succeeded", "canceled"):
        return _settle(payment, token, intent, amount, trigger, actor="engine")
    if intent is MISSING:
        # Retrying cannot help: a person must look (wrong Stripe key or account, a deleted object).
        exc = ProviderRefused(f"PaymentIntent {payment.stripe_payment_intent_id} not found at Stripe",
                             code="resource_missing")
    elif intent is None:
        with write_transaction():
            transitions.release_capture_claim(payment.id, token, error=exc.message[:500])
        raise CaptureRetryLater(exc.message) from exc
    error = f"{exc.code or type(exc).__name__}: {exc.message}"[:1000]
    with write_transaction():
        # Stripe stored the refusal under the key: staff's retry must not be answered with it again.
        transitions.mark_capture_failed(payment.id, token, error, new_key=True)
    _record_attempt(payment, "failed", amount, trigger, error=error)
    log.error("capture failed", extra={"payment_id": payment.id, "order_id": payment.order_id, "code": exc.code})
    return CaptureOutcome.FAILED


def _rearm(order_id: str, payment: Payment) -> bool:
    """Early trigger (a key lost and re-created wrongly, Redis's clock ahead of the database's): make
    sure the key fires at the deadline. False when the deadline has passed meanwhile (claim now)."""
    remaining = payment.capture_due_at - read_db_now(db.session)
    db.session.rollback()
    if remaining.total_seconds() <= 0:
        return False
    try:
        service_for(current_app).create_intent(order_id, utcnow() + remaining)
    except Exception as exc:  # the sweep re-arms keys too
        log.warning("could not re-arm capture intent", extra={"order_id": order_id, "error": str(exc)})
    return True


def capture_now(order_id: str, *, actor: str) -> str:
    """Staff ends the grace period early and captures at once (the same exactly-once path as the engine)."""
    if not payments_for_order(order_id):
        return CaptureOutcome.NOT_CAPTURABLE
    with write_transaction():
        transitions.end_grace_period_now(order_id)
    remove_capture_intent(order_id)
    return _capture_or_enqueue(order_id, trigger="staff", allow_failed=False, actor=actor)


def retry_failed_capture(order_id: str, *, actor: str) -> str:
    """Staff retries a capture that Stripe refused (capture_failed → capturing)."""
    return _capture_or_enqueue(order_id, trigger="staff_retry", allow_failed=True, actor=actor)


def _capture_or_enqueue(order_id: str, *, trigger: str, allow_failed: bool, actor: str) -> str:
    try:
        return capture_order(order_id, trigger=trigger, allow_failed=allow_failed, actor=actor)
    except CaptureRetryLater:
        enqueue_capture(order_id, trigger)
        return CaptureOutcome.RETRYING
