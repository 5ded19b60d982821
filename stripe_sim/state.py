"""In-memory Stripe objects (PaymentIntents, Charges, Refunds, Events) and their state transitions."""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from . import cards, errors
from .events import SIM_CONTEXT, RequestContext, build_event
from .ids import new_id, now

CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation", "requires_action", "processing")
INCREMENT_BEHAVIORS = ("approve", "decline", "unsupported")
MAX_INCREMENT_ATTEMPTS = 10  # Stripe allows at most 10 increment attempts per PaymentIntent, declines included.
AUTH_VALIDITY_SECONDS = 7 * 24 * 3600


class EventSink(Protocol):
    """Receives every new Event (the webhook dispatcher)."""

    def endpoint_count(self) -> int: ...

    def enqueue(self, event: dict[str, Any]) -> None: ...


@dataclass
class IntentSimState:
    """Simulator-only facts about a PaymentIntent that Stripe does not expose."""

    increment_behavior: str = "approve"
    increment_decline_code: str = "generic_decline"
    increment_attempts: int = 0


class SimState:
    """All simulated Stripe objects; every access must hold ``lock``."""

    def __init__(self, sink: EventSink | None = None) -> None:
        self.sink = sink
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget every object, event and ledger entry."""
        with self.lock:
            self.payment_intents: dict[str, dict[str, Any]] = {}
            self.charges: dict[str, dict[str, Any]] = {}
            self.refunds: dict[str, dict[str, Any]] = {}
            self.events: dict[str, dict[str, Any]] = {}
            self.intent_sim: dict[str, IntentSimState] = {}
            self.operations: list[dict[str, Any]] = []
            self.request_count = 0
            # The account's pricing: on standard pricing Stripe offers no incremental authorization
            # at all (an IC+ feature), whatever the card: every charge reports it unavailable.
            self.incremental_authorization_enabled = True

    # ----------------------------------------------------------------- helpers

    def _emit(self, type_: str, obj: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        """Record an Event snapshotting ``obj`` and hand it to the webhook dispatcher."""
        pending = self.sink.endpoint_count() if self.sink else 0
        event = build_event(type_, obj, ctx, pending)
        self.events[event["id"]] = event
        if self.sink:
            self.sink.enqueue(event)
        return event

    def _record(self, op: str, pi: dict[str, Any], amount: int, ctx: RequestContext, **extra: Any) -> None:
        """Append one effective money operation to the ledger."""
        self.operations.append(
            {
                "op": op,
                "payment_intent": pi["id"],
                "amount": amount,
                "currency": pi["currency"],
                "at": time.time(),
                "idempotency_key": ctx.idempotency_key,
                "request_id": ctx.request_id,
                **extra,
            }
        )

    def get_intent(self, pi_id: str, param: str | None = None) -> dict[str, Any]:
        """Return a PaymentIntent or raise resource_missing."""
        pi = self.payment_intents.get(pi_id)
        if pi is None:
            raise errors.missing("payment_intent", pi_id, param)
        return pi

    def get_charge(self, ch_id: str, param: str | None = None) -> dict[str, Any]:
        """Return a Charge or raise resource_missing."""
        charge = self.charges.get(ch_id)
        if charge is None:
            raise errors.missing("charge", ch_id, param)
        return charge

    def get_refund(self, re_id: str) -> dict[str, Any]:
        """Return a Refund or raise resource_missing."""
        refund = self.refunds.get(re_id)
        if refund is None:
            raise errors.missing("refund", re_id)
        return refund

    def get_event(self, evt_id: str) -> dict[str, Any]:
        """Return an Event or raise resource_missing."""
        event = self.events.get(evt_id)
        if event is None:
            raise errors.missing("event", evt_id)
        return event

    def _card_for(self, pm_id: str) -> cards.CardProfile:
        card = cards.lookup(pm_id)
        if card is None:
            raise errors.missing("PaymentMethod", pm_id, param="payment_method")
        return card

    # ----------------------------------------------------------- payment intents

    def create_intent(self, ctx: RequestContext, fields: dict[str, Any]) -> dict[str, Any]:
        """Create a PaymentIntent from validated fields (amount, currency, capture_method, ...)."""
        pm_id = fields.get("payment_method")
        if pm_id is not None:
            self._card_for(pm_id)
        pi_id = new_id("pi")
        pi: dict[str, Any] = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": fields["amount"],
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": fields.get("automatic_payment_methods"),
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": fields.get("capture_method") or "automatic_async",
            "client_secret": f"{pi_id}_secret_{new_id('x')[2:]}",
            "confirmation_method": "automatic",
            "created": now(),
            "currency": fields["currency"],
            "customer": fields.get("customer"),
            "description": fields.get("description"),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": fields.get("metadata") or {},
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": pm_id,
            "payment_method_options": fields.get("payment_method_options") or {},
            "payment_method_types": ["card"],
            "processing": None,
            "receipt_email": fields.get("receipt_email"),
            "setup_future_usage": None,
            "shipping": None,
            "statement_descriptor": fields.get("statement_descriptor"),
            "statement_descriptor_suffix": None,
            "status": "requires_confirmation" if pm_id else "requires_payment_method",
            "transfer_data": None,
            "transfer_group": None,
        }
        self.payment_intents[pi_id] = pi
        self.intent_sim[pi_id] = IntentSimState()
        self._emit("payment_intent.created", pi, ctx)
        return pi

    def update_intent(self, ctx: RequestContext, pi_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Update mutable PaymentIntent fields; amount/currency/method only before confirmation."""
        pi = self.get_intent(pi_id)
        pre_confirm = {"amount", "currency", "payment_method", "capture_method", "payment_method_options"}
        if pre_confirm & fields.keys() and pi["status"] not in CONFIRMABLE:
            raise errors.unexpected_state(
                f"You cannot update this PaymentIntent because it has a status of {pi['status']}.",
                payment_intent=self.render(pi),
            )
        if fields.get("payment_method") is not None:
            self._card_for(fields["payment_method"])
        for key, value in fields.items():
            pi[key] = value
        if "payment_method" in fields and pi["status"] in ("requires_payment_method", "requires_confirmation"):
            pi["status"] = "requires_confirmation" if pi["payment_method"] else "requires_payment_method"
        return pi

    def confirm_intent(self, ctx: RequestContext, pi_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Confirm: authorize (manual capture) or charge (automatic) the payment method, or decline."""
        pi = self.get_intent(pi_id)
        if pi["status"] not in CONFIRMABLE:
            raise errors.unexpected_state(
                f"You cannot confirm this PaymentIntent because it has a status of {pi['status']}. "
                "Only a PaymentIntent with one of the following statuses may be confirmed: "
                "requires_confirmation, requires_payment_method, requires_action.",
                payment_intent=self.render(pi),
            )
        for key in ("capture_method", "payment_method_options", "receipt_email"):
            if fields.get(key) is not None:
                pi[key] = fields[key]
        pm_id = fields.get("payment_method") or pi["payment_method"]
        if not pm_id:
            raise errors.invalid_request(
                "You cannot confirm this PaymentIntent because it's missing a payment method. "
                "You can either update the PaymentIntent with a payment method and then confirm it again, "
                "or confirm it again directly with a payment method.",
                code="payment_intent_unexpected_state",
                param="payment_method",
                payment_intent=self.render(pi),
            )
        card = self._card_for(pm_id)
        pi["payment_method"] = pm_id
        charge = self._new_charge(pi, pm_id, card)
        pi["latest_charge"] = charge["id"]
        if card.decline_code:
            return self._decline(ctx, pi, charge, pm_id, card)
        manual = pi["capture_method"] == "manual"
        pi["last_payment_error"] = None
        pi["next_action"] = None
        if manual:
            pi["status"] = "requires_capture"
            pi["amount_capturable"] = pi["amount"]
        else:
            pi["status"] = "succeeded"
            pi["amount_received"] = pi["amount"]
            charge["captured"] = True
            charge["amount_captured"] = pi["amount"]
        self._emit("charge.succeeded", charge, ctx)
        self._record("authorize", pi, pi["amount"], ctx, charge=charge["id"])
        if manual:
            self._emit("payment_intent.amount_capturable_updated", pi, ctx)
        else:
            self._record("capture", pi, pi["amount"], ctx, charge=charge["id"])
            self._emit("payment_intent.succeeded", pi, ctx)
        return pi

    def _new_charge(self, pi: dict[str, Any], pm_id: str, card: cards.CardProfile) -> dict[str, Any]:
        """Create the Charge for a confirmation attempt."""
        requested = (pi["payment_method_options"].get("card") or {}).get("request_incremental_authorization")
        sim = self.intent_sim[pi["id"]]
        incremental = (
            pi["capture_method"] == "manual"
            and requested in ("if_available", "required")
            and card.supports_increment
            and sim.increment_behavior != "unsupported"
            and self.incremental_authorization_enabled
            and not card.decline_code
        )
        created = now()
        charge: dict[str, Any] = {
            "id": new_id("ch"),
            "object": "charge",
            "amount": pi["amount"],
            "amount_captured": 0,
            "amount_refunded": 0,
            "balance_transaction": None,
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "captured": False,
            "created": created,
            "currency": pi["currency"],
            "customer": pi["customer"],
            "description": pi["description"],
            "disputed": False,
            "failure_code": None,
            "failure_message": None,
            "livemode": False,
            "metadata": dict(pi["metadata"]),
            "outcome": {
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
            "paid": True,
            "payment_intent": pi["id"],
            "payment_method": pm_id,
            "payment_method_details": {
                "type": "card",
                "card": {
                    "brand": card.brand,
                    "last4": card.last4,
                    "funding": card.funding,
                    "exp_month": 12,
                    "exp_year": 2034,
                    "country": "US",
                    "capture_before": created + AUTH_VALIDITY_SECONDS,
                    "incremental_authorization": {"status": "available" if incremental else "unavailable"},
                    "network": card.brand,
                },
            },
            "receipt_email": pi["receipt_email"],
            "refunded": False,
            "status": "succeeded",
        }
        self.charges[charge["id"]] = charge
        return charge

    def _decline(
        self, ctx: RequestContext, pi: dict[str, Any], charge: dict[str, Any], pm_id: str, card: cards.CardProfile
    ) -> dict[str, Any]:
        """Fail the confirmation: failed Charge, PI back to requires_payment_method, 402 raised."""
        charge.update(
            status="failed",
            paid=False,
            failure_code=card.error_code,
            failure_message=card.message,
            outcome={
                "network_status": "declined_by_network",
                "reason": card.decline_code,
                "risk_level": "normal",
                "seller_message": "The bank did not return any further details with this decline.",
                "type": "issuer_declined",
            },
        )
        pi["status"] = "requires_payment_method"
        pi["payment_method"] = None  # Stripe detaches the failed payment method from the intent.
        pi["last_payment_error"] = {
            "type": "card_error",
            "code": card.error_code,
            "decline_code": card.decline_code,
            "message": card.message,
            "charge": charge["id"],
            "payment_method": {"id": pm_id, "object": "payment_method", "type": "card"},
        }
        self._emit("charge.failed", charge, ctx)
        self._emit("payment_intent.payment_failed", pi, ctx)
        err = errors.card_declined(card.decline_code or "generic_decline", card.message, self.render(pi), charge["id"])
        err.code = card.error_code
        raise err

    def capture_intent(
        self, ctx: RequestContext, pi_id: str, amount: int | None, metadata: dict[str, str] | None
    ) -> dict[str, Any]:
        """Capture an authorized PaymentIntent fully or partially; the remainder is released."""
        pi = self.get_intent(pi_id)
        if pi["status"] != "requires_capture":
            raise errors.unexpected_state(
                f"This PaymentIntent could not be captured because it has a status of {pi['status']}. "
                "Only a PaymentIntent with one of the following statuses may be captured: requires_capture.",
                payment_intent=self.render(pi),
            )
        capturable = pi["amount_capturable"]
        if amount is None:
            amount = capturable
        if amount > capturable:
            raise errors.invalid_request(
                f"The amount_to_capture ({amount}) must be less than or equal to the amount_capturable ({capturable}).",
                code="amount_too_large",
                param="amount_to_capture",
                payment_intent=self.render(pi),
            )
        charge = self.get_charge(pi["latest_charge"])
        if metadata is not None:
            pi["metadata"] = metadata
        pi["status"] = "succeeded"
        pi["amount_received"] = amount
        pi["amount_capturable"] = 0
        charge["captured"] = True
        charge["amount_captured"] = amount
        self._record("capture", pi, amount, ctx, charge=charge["id"], released=capturable - amount)
        self._emit("charge.captured", charge, ctx)
        self._emit("payment_intent.succeeded", pi, ctx)
        return pi

    def cancel_intent(self, ctx: RequestContext, pi_id: str, reason: str | None, op: str = "cancel") -> dict[str, Any]:
        """Cancel a PaymentIntent, releasing any uncaptured authorization."""
        pi = self.get_intent(pi_id)
        if pi["status"] not in CANCELABLE:
            raise errors.unexpected_state(
                f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}. "
                "Only a PaymentIntent with one of the following statuses may be canceled: "
                "requires_payment_method, requires_capture, requires_confirmation, requires_action, processing.",
                payment_intent=self.render(pi),
            )
        released = pi["amount_capturable"]
        charge = self.charges.get(pi["latest_charge"] or "")
        if released and charge is not None:
            # Stripe refunds the uncaptured amount of the authorization when its intent is canceled.
            charge["amount_refunded"] = charge["amount"]
            charge["refunded"] = True
        pi["status"] = "canceled"
        pi["canceled_at"] = now()
        pi["cancellation_reason"] = reason
        pi["amount_capturable"] = 0
        self._record(op, pi, released, ctx)
        if op == "expire" and charge is not None:
            self._emit("charge.expired", charge, ctx)
        self._emit("payment_intent.canceled", pi, ctx)
        return pi

    def expire_intent(self, pi_id: str) -> dict[str, Any]:
        """Simulate the authorization expiring: Stripe cancels with reason ``automatic``."""
        pi = self.get_intent(pi_id)
        if pi["status"] != "requires_capture":
            raise errors.unexpected_state(
                f"Only an authorized (requires_capture) PaymentIntent can expire; this one is {pi['status']}."
            )
        return self.cancel_intent(SIM_CONTEXT, pi_id, "automatic", op="expire")

    def fail_refund(self, re_id: str) -> dict[str, Any]:
        """Simulate a refund that fails after Stripe accepted it (the card was closed, say): the money
        goes back to the charge, and Stripe sends `refund.failed` and `refund.updated`."""
        refund = self.get_refund(re_id)
        if refund["status"] in ("failed", "canceled"):
            raise errors.unexpected_state(f"The refund is already {refund['status']}.")
        charge = self.get_charge(refund["charge"])
        refund["status"] = "failed"
        refund["failure_reason"] = "expired_or_canceled_card"
        charge["amount_refunded"] -= refund["amount"]
        charge["refunded"] = False
        pi = self.get_intent(refund["payment_intent"])
        self._record("refund_failed", pi, refund["amount"], SIM_CONTEXT, refund=re_id, charge=charge["id"])
        self._emit("refund.failed", refund, SIM_CONTEXT)
        self._emit("refund.updated", refund, SIM_CONTEXT)
        return refund

    def increment_intent(self, ctx: RequestContext, pi_id: str, amount: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Incrementally authorize a higher amount on a requires_capture PaymentIntent."""
        pi = self.get_intent(pi_id)
        sim = self.intent_sim[pi_id]
        if pi["status"] != "requires_capture":
            raise errors.unexpected_state(
                f"This PaymentIntent's status is {pi['status']}, but it must be requires_capture "
                "to increment its authorization.",
                payment_intent=self.render(pi),
            )
        charge = self.get_charge(pi["latest_charge"])
        card_details = charge["payment_method_details"]["card"]
        available = card_details["incremental_authorization"]["status"] == "available"
        if not available or sim.increment_behavior == "unsupported" or not self.incremental_authorization_enabled:
            card_details["incremental_authorization"]["status"] = "unavailable"
            raise errors.invalid_request(
                "Incremental authorization is not available for this PaymentIntent. It must be confirmed with "
                "payment_method_options[card][request_incremental_authorization]=if_available "
                "on a card that supports it.",
                code="incremental_authorization_not_available",
                payment_intent=self.render(pi),
            )
        if amount <= pi["amount"]:
            raise errors.invalid_request(
                f"The amount ({amount}) must be greater than the PaymentIntent's current amount ({pi['amount']}).",
                code="amount_too_small",
                param="amount",
                payment_intent=self.render(pi),
            )
        if sim.increment_attempts >= MAX_INCREMENT_ATTEMPTS:
            raise errors.invalid_request(
                f"This PaymentIntent has reached the maximum of {MAX_INCREMENT_ATTEMPTS} "
                "incremental authorization attempts.",
                code="incremental_authorization_attempts_exceeded",
                payment_intent=self.render(pi),
            )
        sim.increment_attempts += 1
        if sim.increment_behavior == "decline":
            raise errors.card_declined(
                sim.increment_decline_code, "Your card was declined.", self.render(pi), charge["id"]
            )
        previous = pi["amount"]
        for key, value in fields.items():
            pi[key] = value
        pi["amount"] = amount
        pi["amount_capturable"] = amount
        charge["amount"] = amount
        self._record("increment", pi, amount, ctx, previous_amount=previous, charge=charge["id"])
        self._emit("payment_intent.amount_capturable_updated", pi, ctx)
        return pi

    def set_increment_behavior(self, pi_id: str, behavior: str, decline_code: str | None = None) -> None:
        """Choose how future increment_authorization calls on this intent behave."""
        pi = self.get_intent(pi_id)
        sim = self.intent_sim[pi_id]
        sim.increment_behavior = behavior
        if decline_code:
            sim.increment_decline_code = decline_code
        charge = self.charges.get(pi["latest_charge"] or "")
        if behavior == "unsupported" and charge is not None:
            charge["payment_method_details"]["card"]["incremental_authorization"]["status"] = "unavailable"

    # ------------------------------------------------------------------ refunds

    def create_refund(
        self,
        ctx: RequestContext,
        pi_id: str | None,
        charge_id: str | None,
        amount: int | None,
        reason: str | None,
        metadata: dict[str, str],
    ) -> dict[str, Any]:
        """Refund all or part of a captured payment."""
        if pi_id:
            pi = self.get_intent(pi_id, param="payment_intent")
            charge = self.charges.get(pi["latest_charge"] or "")
            if pi["status"] != "succeeded" or charge is None:
                raise errors.unexpected_state(
                    "This PaymentIntent does not have a successful captured charge to refund "
                    f"(status: {pi['status']}).",
                    payment_intent=self.render(pi),
                )
            if charge_id and charge_id != charge["id"]:
                raise errors.invalid_request(
                    f"Charge {charge_id} does not belong to PaymentIntent {pi_id}.", param="charge"
                )
        else:
            assert charge_id is not None
            charge = self.get_charge(charge_id, param="charge")
            pi = self.get_intent(charge["payment_intent"])
            if not charge["captured"] or charge["status"] != "succeeded":
                raise errors.invalid_request(
                    f"Charge {charge['id']} has not been captured and cannot be refunded.",
                    code="charge_not_refundable",
                    param="charge",
                )
        remaining = charge["amount_captured"] - charge["amount_refunded"]
        if remaining <= 0:
            raise errors.invalid_request(
                f"Charge {charge['id']} has already been refunded.", code="charge_already_refunded"
            )
        if amount is None:
            amount = remaining
        if amount > remaining:
            raise errors.invalid_request(
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining}).",
                code="amount_too_large",
                param="amount",
            )
        refund = {
            "id": new_id("re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": None,
            "charge": charge["id"],
            "created": now(),
            "currency": charge["currency"],
            "destination_details": {"card": {"type": "refund"}, "type": "card"},
            "metadata": metadata,
            "payment_intent": pi["id"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
        self.refunds[refund["id"]] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
        self._record("refund", pi, amount, ctx, refund=refund["id"], charge=charge["id"])
        self._emit("refund.created", refund, ctx)
        self._emit("charge.refunded", charge, ctx)
        return refund

    # --------------------------------------------------------------- rendering

    def _lookup_any(self, obj_id: str) -> dict[str, Any] | None:
        for table in (self.payment_intents, self.charges, self.refunds, self.events):
            if obj_id in table:
                return table[obj_id]
        if obj_id.startswith("pm_"):
            card = cards.lookup(obj_id)
            if card is not None:
                return cards.payment_method_object(obj_id, card, now())
        return None

    def render(self, obj: dict[str, Any], expand: list[str] | None = None) -> dict[str, Any]:
        """Deep-copy ``obj`` for a response, replacing expanded id fields by their objects."""
        out = copy.deepcopy(obj)
        for path in expand or []:
            self._expand(out, path.split("."), path)
        return out

    def _expand(self, node: Any, parts: list[str], full: str) -> None:
        if not parts or node is None:
            return
        head, rest = parts[0], parts[1:]
        if isinstance(node, dict) and node.get("object") == "charge" and head == "refunds" and head not in node:
            # Charges no longer embed their refunds unless asked to (API versions since 2022-11-15).
            refunds = [copy.deepcopy(r) for r in reversed(list(self.refunds.values())) if r["charge"] == node["id"]]
            node[head] = {"object": "list", "data": refunds, "has_more": False,
                          "url": f"/v1/charges/{node['id']}/refunds"}
        if isinstance(node, dict) and node.get("object") == "list" and head == "data":
            for item in node["data"]:
                self._expand(item, rest, full)
            return
        if not isinstance(node, dict) or head not in node:
            raise errors.invalid_request(f"This property cannot be expanded ({full}).", param="expand")
        value = node[head]
        if isinstance(value, str):
            target = self._lookup_any(value)
            if target is None:
                raise errors.invalid_request(f"This property cannot be expanded ({full}).", param="expand")
            value = node[head] = copy.deepcopy(target)
        self._expand(value, rest, full)

    def raw_intent(self, pi_id: str) -> dict[str, Any]:
        """The PaymentIntent as stored, plus a ``_sim`` key with its charges, refunds, events and sim settings."""
        pi = self.get_intent(pi_id)
        sim = self.intent_sim[pi_id]
        raw = copy.deepcopy(pi)
        raw["_sim"] = {
            "charges": [copy.deepcopy(c) for c in self.charges.values() if c["payment_intent"] == pi_id],
            "refunds": [copy.deepcopy(r) for r in self.refunds.values() if r["payment_intent"] == pi_id],
            "events": [e["id"] for e in self.events.values() if _event_mentions(e, pi_id)],
            "increment_behavior": sim.increment_behavior,
            "increment_decline_code": sim.increment_decline_code,
            "increment_attempts": sim.increment_attempts,
            "operations": [dict(op) for op in self.operations if op["payment_intent"] == pi_id],
        }
        return raw


def _event_mentions(event: dict[str, Any], pi_id: str) -> bool:
    obj = event["data"]["object"]
    return obj.get("id") == pi_id or obj.get("payment_intent") == pi_id


def paginate(
    items: list[dict[str, Any]], url: str, limit: int, starting_after: str | None, ending_before: str | None,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Build a Stripe list object from newest-first ``items`` using cursor pagination.

    ``keep`` filters after the cursor is placed: as on Stripe, the cursor may name an object the
    filters leave out (the last event of a page listed with other filters, say).
    """
    ids = [item["id"] for item in items]
    keep = keep or (lambda item: True)
    if starting_after:
        if starting_after not in ids:
            raise errors.missing("object", starting_after, param="starting_after")
        window = [item for item in items[ids.index(starting_after) + 1 :] if keep(item)]
        page, has_more = window[:limit], len(window) > limit
    elif ending_before:
        if ending_before not in ids:
            raise errors.missing("object", ending_before, param="ending_before")
        window = [item for item in items[: ids.index(ending_before)] if keep(item)]
        page, has_more = window[-limit:], len(window) > limit
    else:
        window = [item for item in items if keep(item)]
        page, has_more = window[:limit], len(window) > limit
    return {"object": "list", "data": page, "has_more": has_more, "url": url}
