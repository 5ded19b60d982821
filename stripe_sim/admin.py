"""The /_sim control API (no auth, JSON) used by tests to steer and inspect the simulator."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from .errors import StripeError
from .state import INCREMENT_BEHAVIORS

if TYPE_CHECKING:
    from .app import SimApp

ControlHandler = Callable[..., Any]

_HANDLERS: dict[str, ControlHandler] = {}
_MAP = Map(strict_slashes=False)


def _control(method: str, rule: str) -> Callable[[ControlHandler], ControlHandler]:
    def register(fn: ControlHandler) -> ControlHandler:
        _HANDLERS[fn.__name__] = fn
        _MAP.add(Rule(rule, methods=[method], endpoint=fn.__name__))
        return fn

    return register


class ControlError(Exception):
    """A bad control request (rendered as ``{"error": {"message": ...}}``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def handle(sim: SimApp, request: Request) -> Response:
    """Dispatch one /_sim request."""
    try:
        endpoint, args = _MAP.bind("localhost").match(request.path, method=request.method.upper())
    except NotFound:
        return _json(404, {"error": {"message": f"no control endpoint {request.path}"}})
    except MethodNotAllowed:
        return _json(405, {"error": {"message": f"{request.method} not allowed on {request.path}"}})
    try:
        body = _body(request)
        result = _HANDLERS[str(endpoint)](sim, body, **args)
        return _json(200, result)
    except ControlError as exc:
        return _json(exc.status, {"error": {"message": str(exc)}})
    except StripeError as exc:
        return _json(exc.status, exc.body())
    except (ValueError, TypeError) as exc:
        return _json(400, {"error": {"message": str(exc)}})


def _body(request: Request) -> dict[str, Any]:
    raw = request.get_data(as_text=True)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ControlError(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ControlError("body must be a JSON object")
    return body


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body, indent=2, default=str) + "\n", status=status, content_type="application/json")


# -------------------------------------------------------------------- endpoints


@_control("GET", "/_sim/health")
def health(sim: SimApp, body: dict[str, Any]) -> dict[str, Any]:
    """Liveness probe."""
    return {"ok": True, "requests": sim.state.request_count, "webhook_endpoints": sim.webhooks.endpoint_count()}


@_control("POST", "/_sim/reset")
def reset(sim: SimApp, body: dict[str, Any]) -> dict[str, Any]:
    """Back to the state at start: no objects, keys, faults or deliveries; only the startup webhook endpoints."""
    sim.reset()
    return {"ok": True}


@_control("POST", "/_sim/faults")
def set_faults(sim: SimApp, body: dict[str, Any]) -> dict[str, Any]:
    """Replace the fault configuration (``{}`` clears it)."""
    sim.faults.configure(body)
    return get_faults(sim, {})


@_control("GET", "/_sim/faults")
def get_faults(sim: SimApp, body: dict[str, Any]) -> dict[str, Any]:
    """Current fault configuration, unconsumed script entries and counters."""
    return {
        "config": sim.faults.config,
        "pending_script": sim.faults.pending_script(),
        "counts": dict(sim.faults.counts),
    }


@_control("POST", "/_sim/rate_limit")
def set_rate_limit(sim: SimApp, body: dict[str, Any]) -> dict[str, Any]:
    """Enforce ``requests_per_second`` (optional ``burst``) over all /v1 requests; null/0 disables."""
    unknown = set(body) - {"requests_per_second", "burst"}
    if unknown:
        raise ControlError(f"unknown rate limit settings: {sorted(unknown)}")
    sim.rate_limit.configure(body.get("requests_per_second"), body.get("burst"))
    return {"requests_per_second": sim.rate_limit.rate, "burst": sim.rate_limit.burst}


@_control("POST", "/_sim/webhooks")
def add_webhook(sim: SimApp, body: dict[str, Any]) -> dict[str, Any]:
    """Register a webhook endpoint ``{"url", "secret"}``."""
    if not body.get("url") or not body.get("secret"):
        raise ControlError("url and secret are required")
    sim.webhooks.add_endpoint(str(body["url"]), str(body["secret"]))
    return list_webhooks(sim, {})


@_control("GET", "/_sim/webhooks")
def list_webhooks(sim: SimApp, body: dict[str, Any]) -> dict[str, Any]:
    """Configured webhook endpoints."""
    return {"endpoints": [{"url": e.url, "secret": e.secret} for e in sim.webhooks.endpoints]}


@_control("DELETE", "/_sim/webhooks")
def clear_webhooks(sim: SimApp, body: dict[str, Any]) -> dict[str, Any]:
    """Remove every webhook endpoint."""
    sim.webhooks.clear_endpoints()
    return {"endpoints": []}


@_control("POST", "/_sim/delivery")
def set_delivery(sim: SimApp, body: dict[str, Any]) -> dict[str, Any]:
    """Change delivery options (duplicate_rate, shuffle_window_ms, paused, delay_ms, max_attempts, ...)."""
    sim.webhooks.configure(body)
    return get_delivery(sim, {})


@_control("GET", "/_sim/delivery")
def get_delivery(sim: SimApp, body: dict[str, Any]) -> dict[str, Any]:
    """Delivery options, queue length and every delivery attempt so far."""
    return {
        "options": dict(vars(sim.webhooks.options)),
        "pending": sim.webhooks.pending(),
        "attempts": list(sim.webhooks.attempts),
    }


@_control("POST", "/_sim/events/<evt_id>/redeliver")
def redeliver(sim: SimApp, body: dict[str, Any], evt_id: str) -> dict[str, Any]:
    """Send an existing event to every endpoint again."""
    with sim.state.lock:
        event = sim.state.get_event(evt_id)
    sim.webhooks.enqueue(event, redelivery=True)
    return {"ok": True, "event": evt_id}


@_control("POST", "/_sim/events/<evt_id>/backdate")
def backdate_event(sim: SimApp, body: dict[str, Any], evt_id: str) -> dict[str, Any]:
    """Move an event's ``created`` back by ``seconds``: events from days ago, for listing by date."""
    seconds = body.get("seconds")
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
        raise ControlError("seconds must be a non-negative integer")
    with sim.state.lock:
        event = sim.state.get_event(evt_id)
        event["created"] -= seconds
        return sim.state.render(event)


@_control("POST", "/_sim/account")
def set_account(sim: SimApp, body: dict[str, Any]) -> dict[str, Any]:
    """Account-level settings: ``{"incremental_authorization": false}`` is a standard-pricing account
    (no incremental authorization for any card, charges confirmed from now on report it unavailable)."""
    unknown = set(body) - {"incremental_authorization"}
    if unknown:
        raise ControlError(f"unknown account settings: {sorted(unknown)}")
    with sim.state.lock:
        if "incremental_authorization" in body:
            sim.state.incremental_authorization_enabled = bool(body["incremental_authorization"])
        return {"incremental_authorization": sim.state.incremental_authorization_enabled}


@_control("POST", "/_sim/payment_intents/<pi_id>/increment_behavior")
def increment_behavior(sim: SimApp, body: dict[str, Any], pi_id: str) -> dict[str, Any]:
    """Make future increments ``approve``, ``decline`` (optional ``decline_code``) or be ``unsupported``."""
    behavior = body.get("behavior")
    if behavior not in INCREMENT_BEHAVIORS:
        raise ControlError(f"behavior must be one of {', '.join(INCREMENT_BEHAVIORS)}")
    with sim.state.lock:
        sim.state.set_increment_behavior(pi_id, behavior, body.get("decline_code"))
        extras = sim.state.raw_intent(pi_id)["_sim"]
    return {key: extras[key] for key in ("increment_behavior", "increment_decline_code", "increment_attempts")}


@_control("POST", "/_sim/payment_intents/<pi_id>/expire")
def expire(sim: SimApp, body: dict[str, Any], pi_id: str) -> dict[str, Any]:
    """Expire an authorization: the intent is canceled with cancellation_reason ``automatic``."""
    with sim.state.lock:
        return sim.state.render(sim.state.expire_intent(pi_id))


@_control("POST", "/_sim/refunds/<re_id>/fail")
def fail_refund(sim: SimApp, body: dict[str, Any], re_id: str) -> dict[str, Any]:
    """Make a refund fail after it succeeded (Stripe then sends refund.failed)."""
    with sim.state.lock:
        return sim.state.render(sim.state.fail_refund(re_id))


@_control("GET", "/_sim/payment_intents/<pi_id>")
def raw_intent(sim: SimApp, body: dict[str, Any], pi_id: str) -> dict[str, Any]:
    """The intent as stored, plus ``_sim``: its charges, refunds, event ids, increment settings and ledger entries."""
    with sim.state.lock:
        return sim.state.raw_intent(pi_id)


@_control("GET", "/_sim/ledger")
def ledger(sim: SimApp, body: dict[str, Any]) -> dict[str, Any]:
    """Every effective operation once, fault counters and the /v1 request count."""
    with sim.state.lock:
        operations = [dict(op) for op in sim.state.operations]
        requests = sim.state.request_count
    return {"operations": operations, "faults": dict(sim.faults.counts), "requests": requests}
