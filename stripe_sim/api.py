"""The /v1 endpoints: parameter validation and dispatch to state transitions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from werkzeug.routing import Map, Rule

from . import params as p
from .events import RequestContext
from .state import SimState, paginate

Handler = Callable[..., dict[str, Any]]

_LIST_PARAMS = {"limit", "starting_after", "ending_before", "created", "expand"}
_PI_COMMON = {
    "amount",
    "currency",
    "capture_method",
    "metadata",
    "payment_method_options",
    "payment_method",
    "description",
    "receipt_email",
    "automatic_payment_methods",
    "expand",
    "customer",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "payment_method_types",
    "setup_future_usage",
    "shipping",
    "transfer_group",
}
_CONFIRM_PARAMS = {
    "payment_method",
    "return_url",
    "expand",
    "payment_method_options",
    "capture_method",
    "receipt_email",
    "off_session",
    "error_on_requires_action",
    "use_stripe_sdk",
    "mandate_data",
    "setup_future_usage",
    "shipping",
}
_CAPTURE_METHODS = ("automatic", "automatic_async", "manual")
_INCREMENTAL_CHOICES = ("if_available", "required", "never")


@dataclass(frozen=True)
class Route:
    """A /v1 endpoint: handler plus the top-level parameters it accepts."""

    handler: Handler
    allowed: frozenset[str]


ROUTES: dict[str, Route] = {}
URL_MAP = Map(strict_slashes=False)


def route(method: str, rule: str, allowed: set[str]) -> Callable[[Handler], Handler]:
    """Register a handler for ``method rule`` accepting ``allowed`` parameters."""

    def register(fn: Handler) -> Handler:
        endpoint = fn.__name__
        ROUTES[endpoint] = Route(fn, frozenset(allowed))
        URL_MAP.add(Rule(rule, methods=[method], endpoint=endpoint))
        return fn

    return register


# ------------------------------------------------------------------ validation


def _intent_fields(params: dict[str, Any]) -> dict[str, Any]:
    """Validate the PaymentIntent fields shared by create and update."""
    fields: dict[str, Any] = {}
    if "amount" in params:
        fields["amount"] = p.to_positive_amount(params["amount"], "amount")
    if "currency" in params:
        fields["currency"] = p.to_currency(params["currency"])
    if "capture_method" in params:
        fields["capture_method"] = p.to_enum(params["capture_method"], _CAPTURE_METHODS, "capture_method")
    if "payment_method_options" in params:
        fields["payment_method_options"] = _payment_method_options(params["payment_method_options"])
    for name in ("payment_method", "description", "receipt_email", "customer", "statement_descriptor"):
        if name in params:
            fields[name] = p.to_string(params[name], name)
    if "automatic_payment_methods" in params:
        apm = params["automatic_payment_methods"]
        if not isinstance(apm, dict) or "enabled" not in apm:
            raise p.invalid_param("Missing required param: automatic_payment_methods[enabled].",
                                  param="automatic_payment_methods[enabled]", code="parameter_missing")
        fields["automatic_payment_methods"] = {
            "enabled": p.to_bool(apm["enabled"], "automatic_payment_methods[enabled]"),
            "allow_redirects": apm.get("allow_redirects", "always"),
        }
    return fields


def _payment_method_options(value: Any) -> dict[str, Any]:
    """Validate payment_method_options; only the card branch is modelled."""
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise p.invalid_param("Invalid payment_method_options: must be a hash.", param="payment_method_options")
    card = value.get("card")
    if isinstance(card, dict) and "request_incremental_authorization" in card:
        p.to_enum(
            card["request_incremental_authorization"],
            _INCREMENTAL_CHOICES,
            "payment_method_options[card][request_incremental_authorization]",
        )
    return value


def _limit(params: dict[str, Any]) -> int:
    if "limit" not in params:
        return 10
    limit = p.to_int(params["limit"], "limit")
    if not 1 <= limit <= 100:
        raise p.invalid_param("Invalid limit: must be between 1 and 100", param="limit")
    return limit


_CREATED_BOUNDS = {
    "gt": lambda created, bound: created > bound,
    "gte": lambda created, bound: created >= bound,
    "lt": lambda created, bound: created < bound,
    "lte": lambda created, bound: created <= bound,
}


def _created_filter(params: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    """``created`` as Stripe takes it: an exact timestamp, or a range ``created[gte]=...&created[lt]=...``."""
    value = params.get("created")
    if value is None or value == "":
        return lambda item: True
    if not isinstance(value, dict):
        exact = p.to_int(value, "created")
        return lambda item: item["created"] == exact
    unknown = set(value) - set(_CREATED_BOUNDS)
    if unknown:
        name = min(unknown)
        raise p.invalid_param(f"Received unknown parameter: created[{name}]", param=f"created[{name}]",
                              code="parameter_unknown")
    bounds = [(_CREATED_BOUNDS[op], p.to_int(raw, f"created[{op}]")) for op, raw in value.items()]
    return lambda item: all(test(item["created"], bound) for test, bound in bounds)


def _list(sim: SimState, items: list[dict[str, Any]], url: str, params: dict[str, Any]) -> dict[str, Any]:
    # Tables keep insertion (creation) order, which also orders objects created in the same second.
    newest_first = list(reversed(items))
    page = paginate(newest_first, url, _limit(params), params.get("starting_after"), params.get("ending_before"),
                    keep=_created_filter(params))
    expand = [e[len("data."):] for e in p.to_expand(params.get("expand")) if e.startswith("data.")]
    page["data"] = [sim.render(item, expand) for item in page["data"]]
    return page


# ------------------------------------------------------------- payment intents


@route("POST", "/v1/payment_intents", _PI_COMMON | {"confirm", "return_url", "off_session"})
def create_payment_intent(sim: SimState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Create (and optionally confirm) a PaymentIntent."""
    p.require(params, "amount")
    p.require(params, "currency")
    fields = _intent_fields(params)
    if "metadata" in params:
        fields["metadata"] = p.merge_metadata({}, params["metadata"])
    confirm = p.to_bool(params["confirm"], "confirm") if "confirm" in params else False
    if confirm and not fields.get("payment_method"):
        raise p.invalid_param(
            "A payment_method is required when creating a PaymentIntent with confirm=true.",
            param="payment_method",
            code="parameter_missing",
        )
    expand = p.to_expand(params.get("expand"))
    pi = sim.create_intent(ctx, fields)
    if confirm:
        pi = sim.confirm_intent(ctx, pi["id"], {})
    return sim.render(pi, expand)


@route("GET", "/v1/payment_intents/<pi_id>", {"expand", "client_secret"})
def retrieve_payment_intent(sim: SimState, ctx: RequestContext, params: dict[str, Any], pi_id: str) -> dict[str, Any]:
    """Retrieve a PaymentIntent."""
    return sim.render(sim.get_intent(pi_id), p.to_expand(params.get("expand")))


@route("GET", "/v1/payment_intents", _LIST_PARAMS | {"customer"})
def list_payment_intents(sim: SimState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """List PaymentIntents, newest first."""
    items = list(sim.payment_intents.values())
    if params.get("customer"):
        items = [pi for pi in items if pi["customer"] == params["customer"]]
    return _list(sim, items, "/v1/payment_intents", params)


@route("POST", "/v1/payment_intents/<pi_id>", _PI_COMMON - {"confirm"})
def update_payment_intent(sim: SimState, ctx: RequestContext, params: dict[str, Any], pi_id: str) -> dict[str, Any]:
    """Update a PaymentIntent."""
    fields = _intent_fields(params)
    expand = p.to_expand(params.get("expand"))
    if "metadata" in params:
        fields["metadata"] = p.merge_metadata(sim.get_intent(pi_id)["metadata"], params["metadata"])
    return sim.render(sim.update_intent(ctx, pi_id, fields), expand)


@route("POST", "/v1/payment_intents/<pi_id>/confirm", _CONFIRM_PARAMS)
def confirm_payment_intent(sim: SimState, ctx: RequestContext, params: dict[str, Any], pi_id: str) -> dict[str, Any]:
    """Confirm a PaymentIntent with a test payment method."""
    fields: dict[str, Any] = {}
    if "payment_method" in params:
        fields["payment_method"] = p.to_string(params["payment_method"], "payment_method")
    if "capture_method" in params:
        fields["capture_method"] = p.to_enum(params["capture_method"], _CAPTURE_METHODS, "capture_method")
    if "payment_method_options" in params:
        fields["payment_method_options"] = _payment_method_options(params["payment_method_options"])
    if "receipt_email" in params:
        fields["receipt_email"] = p.to_string(params["receipt_email"], "receipt_email")
    expand = p.to_expand(params.get("expand"))
    return sim.render(sim.confirm_intent(ctx, pi_id, fields), expand)


@route(
    "POST",
    "/v1/payment_intents/<pi_id>/capture",
    {"amount_to_capture", "metadata", "expand", "application_fee_amount", "statement_descriptor",
     "statement_descriptor_suffix", "final_capture", "transfer_data"},
)
def capture_payment_intent(sim: SimState, ctx: RequestContext, params: dict[str, Any], pi_id: str) -> dict[str, Any]:
    """Capture an authorized PaymentIntent."""
    amount = None
    if "amount_to_capture" in params:
        amount = p.to_positive_amount(params["amount_to_capture"], "amount_to_capture")
    expand = p.to_expand(params.get("expand"))
    metadata = None
    if "metadata" in params:
        metadata = p.merge_metadata(sim.get_intent(pi_id)["metadata"], params["metadata"])
    return sim.render(sim.capture_intent(ctx, pi_id, amount, metadata), expand)


@route("POST", "/v1/payment_intents/<pi_id>/cancel", {"cancellation_reason", "expand"})
def cancel_payment_intent(sim: SimState, ctx: RequestContext, params: dict[str, Any], pi_id: str) -> dict[str, Any]:
    """Cancel a PaymentIntent."""
    reason = None
    if "cancellation_reason" in params:
        reason = p.to_enum(
            params["cancellation_reason"],
            ("duplicate", "fraudulent", "requested_by_customer", "abandoned"),
            "cancellation_reason",
        )
    expand = p.to_expand(params.get("expand"))
    return sim.render(sim.cancel_intent(ctx, pi_id, reason), expand)


@route(
    "POST",
    "/v1/payment_intents/<pi_id>/increment_authorization",
    {"amount", "description", "metadata", "expand", "application_fee_amount", "statement_descriptor", "transfer_data"},
)
def increment_authorization(sim: SimState, ctx: RequestContext, params: dict[str, Any], pi_id: str) -> dict[str, Any]:
    """Increase the authorized amount of a requires_capture PaymentIntent."""
    amount = p.to_positive_amount(p.require(params, "amount"), "amount")
    fields: dict[str, Any] = {}
    if "description" in params:
        fields["description"] = p.to_string(params["description"], "description")
    expand = p.to_expand(params.get("expand"))
    if "metadata" in params:
        fields["metadata"] = p.merge_metadata(sim.get_intent(pi_id)["metadata"], params["metadata"])
    return sim.render(sim.increment_intent(ctx, pi_id, amount, fields), expand)


# ---------------------------------------------------------------------- refunds


@route(
    "POST",
    "/v1/refunds",
    {"payment_intent", "charge", "amount", "reason", "metadata", "expand", "instructions_email",
     "refund_application_fee", "reverse_transfer"},
)
def create_refund(sim: SimState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Refund a captured payment, fully or partially."""
    pi_id = p.to_string(params.get("payment_intent", ""), "payment_intent")
    charge_id = p.to_string(params.get("charge", ""), "charge")
    if not pi_id and not charge_id:
        raise p.invalid_param(
            "One of the following params should be provided for this request: payment_intent or charge.",
            code="parameter_missing",
        )
    amount = p.to_positive_amount(params["amount"], "amount") if "amount" in params else None
    reason = None
    if params.get("reason"):
        reason = p.to_enum(params["reason"], ("duplicate", "fraudulent", "requested_by_customer"), "reason")
    metadata = p.merge_metadata({}, params.get("metadata", {}))
    expand = p.to_expand(params.get("expand"))
    return sim.render(sim.create_refund(ctx, pi_id, charge_id, amount, reason, metadata), expand)


@route("GET", "/v1/refunds/<re_id>", {"expand"})
def retrieve_refund(sim: SimState, ctx: RequestContext, params: dict[str, Any], re_id: str) -> dict[str, Any]:
    """Retrieve a Refund."""
    return sim.render(sim.get_refund(re_id), p.to_expand(params.get("expand")))


@route("GET", "/v1/refunds", _LIST_PARAMS | {"payment_intent", "charge"})
def list_refunds(sim: SimState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """List Refunds, optionally for one PaymentIntent or Charge."""
    items = list(sim.refunds.values())
    if params.get("payment_intent"):
        items = [r for r in items if r["payment_intent"] == params["payment_intent"]]
    if params.get("charge"):
        items = [r for r in items if r["charge"] == params["charge"]]
    return _list(sim, items, "/v1/refunds", params)


# ------------------------------------------------------------- charges, events


@route("GET", "/v1/charges/<ch_id>", {"expand"})
def retrieve_charge(sim: SimState, ctx: RequestContext, params: dict[str, Any], ch_id: str) -> dict[str, Any]:
    """Retrieve a Charge."""
    return sim.render(sim.get_charge(ch_id), p.to_expand(params.get("expand")))


@route("GET", "/v1/charges", _LIST_PARAMS | {"payment_intent", "customer"})
def list_charges(sim: SimState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """List Charges, optionally for one PaymentIntent."""
    items = list(sim.charges.values())
    if params.get("payment_intent"):
        items = [c for c in items if c["payment_intent"] == params["payment_intent"]]
    return _list(sim, items, "/v1/charges", params)


@route("GET", "/v1/events/<evt_id>", {"expand"})
def retrieve_event(sim: SimState, ctx: RequestContext, params: dict[str, Any], evt_id: str) -> dict[str, Any]:
    """Retrieve an Event."""
    return sim.render(sim.get_event(evt_id))


MAX_EVENT_TYPES = 20  # Stripe's limit on `types`


def _wanted_types(params: dict[str, Any]) -> list[str]:
    """``type`` (one name, a trailing ``*`` as wildcard) or ``types`` (up to 20 exact names); Stripe refuses both."""
    if params.get("type") and params.get("types"):
        raise p.invalid_param("You may pass either type or types, but not both.", param="types")
    if params.get("type"):
        return [p.to_string(params["type"], "type") or ""]
    types = params.get("types")
    if types is None or types == "":
        return []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise p.invalid_param("Invalid array: types must be a list of strings.", param="types")
    if len(types) > MAX_EVENT_TYPES:
        raise p.invalid_param(f"Invalid array: types must have at most {MAX_EVENT_TYPES} elements.", param="types")
    return types


@route("GET", "/v1/events", _LIST_PARAMS | {"type", "types", "delivery_success"})
def list_events(sim: SimState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """List Events newest first (by ``created``, then by creation order), whether or not they were delivered."""
    wanted = _wanted_types(params)
    in_range = _created_filter(params)

    def keep(event: dict[str, Any]) -> bool:
        return in_range(event) and (not wanted or any(_type_matches(event["type"], w) for w in wanted))

    items = list(sim.events.values())[::-1]  # newest first by creation
    # A stable sort: events of the same second keep that order; a backdated one moves back.
    items.sort(key=lambda e: e["created"], reverse=True)
    page = paginate(items, "/v1/events", _limit(params), params.get("starting_after"), params.get("ending_before"),
                    keep=keep)
    page["data"] = [sim.render(e) for e in page["data"]]
    return page


def _type_matches(event_type: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return event_type.startswith(pattern[:-1])
    return event_type == pattern
