"""The WSGI application: request pipeline (auth, rate limit, faults, idempotency) around the /v1 handlers."""

from __future__ import annotations

import base64
import json
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterable
from urllib.parse import parse_qsl

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect
from werkzeug.wrappers import Request, Response

from . import admin, api, errors
from .delivery import WebhookDispatcher
from .errors import StripeError
from .events import DEFAULT_API_VERSION, RequestContext
from .faults import Fault, FaultInjector, TokenBucket
from .idempotency import MAX_KEY_LENGTH, IdempotencyStore, StoredResponse
from .ids import new_id
from .params import parse_pairs, reject_unknown
from .persistence import StateFile
from .state import SimState

log = logging.getLogger("stripe_sim")


@dataclass
class _Dropped:
    """Marker: the operation ran but its response must be lost (fault ``lost_response``)."""

    seconds: float


class SimApp:
    """Owns every simulator component and serves both /v1 and the /_sim control API."""

    def __init__(self, dispatcher: WebhookDispatcher | None = None, state_file: StateFile | None = None) -> None:
        self.webhooks = dispatcher or WebhookDispatcher()
        self.state = SimState(sink=self.webhooks)
        self.idempotency = IdempotencyStore()
        self.faults = FaultInjector()
        self.rate_limit = TokenBucket()
        self.state_file = state_file
        if state_file is not None:
            for event in state_file.load(self):
                self.webhooks.enqueue(event, redelivery=True)  # queued or in flight when the last run stopped
            self.webhooks.on_settled = self.save

    def save(self) -> None:
        """Write the state file, if there is one (after every change)."""
        if self.state_file is not None:
            self.state_file.save(self)

    def reset(self) -> None:
        """Return to a fresh simulator, as started (endpoints added at runtime are dropped)."""
        self.state.reset()
        self.idempotency.reset()
        self.faults.configure({})
        self.faults.reset_counts()
        self.rate_limit.configure(None)
        self.webhooks.reset()

    # ------------------------------------------------------------------- WSGI

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        started = time.monotonic()
        note = ""
        # Reads change nothing a restart needs (the request counter is only a statistic).
        changes = request.method.upper() not in ("GET", "HEAD", "OPTIONS")
        if request.path.startswith("/_sim"):
            response = admin.handle(self, request)
        elif request.path.startswith("/v1/"):
            result = self._handle_api(request)
            if changes:
                self.save()  # before answering: an answer the client saw is never forgotten by a restart
            if isinstance(result, _Dropped):
                log.info("%s %s -> response dropped (fault lost_response)", request.method, request.path)
                return self._drop_connection(environ, start_response, result.seconds)
            response = result
            note = response.headers.get("Stripe-Sim-Fault", "")
        else:
            response = _json_response(404, errors.invalid_request(_unrecognized(request)).body())
        if changes and request.path.startswith("/_sim"):
            self.save()
        elapsed = (time.monotonic() - started) * 1000
        log.info("%s %s -> %d %.1fms%s", request.method, request.path, response.status_code, elapsed,
                 f" [fault {note}]" if note else "")
        return response(environ, start_response)

    @staticmethod
    def _drop_connection(environ: dict[str, Any], start_response: Any, seconds: float) -> Iterable[bytes]:
        """Stall, then close the socket without answering, so the client never sees the result."""
        if seconds > 0:
            time.sleep(seconds)
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # Writing to the shut-down socket fails; werkzeug treats that as a dropped connection.
        return Response(b"", status=500)(environ, start_response)

    # -------------------------------------------------------------- pipeline

    def _handle_api(self, request: Request) -> Response | _Dropped:
        with self.state.lock:
            self.state.request_count += 1
        method = request.method.upper()
        key = request.headers.get("Idempotency-Key") if method == "POST" else None
        ctx = RequestContext(
            request_id=new_id("req", 14),
            idempotency_key=key,
            api_version=request.headers.get("Stripe-Version") or DEFAULT_API_VERSION,
        )
        try:
            _authenticate(request)
            if not self.rate_limit.allow():
                self.faults.count_rate_limited()
                raise errors.rate_limited()
            endpoint, path_args = _match(request)
            fault = self.faults.pick(method, request.path)
            _raise_for_fault(fault)
            params = _request_params(request)
            if key is not None and len(key) > MAX_KEY_LENGTH:
                raise errors.invalid_request(
                    f"Invalid idempotency key: must be at most {MAX_KEY_LENGTH} characters.", param="Idempotency-Key"
                )
        except StripeError as exc:
            return self._respond(exc.status, exc.body(), ctx, exc.headers)

        if key is None:
            status, body, _ = self._execute(endpoint, path_args, params, ctx, fault)
            response = self._respond(status, body, ctx)
        else:
            response = self._execute_idempotent(endpoint, path_args, params, ctx, key, request, fault)
        if fault is not None:
            response.headers["Stripe-Sim-Fault"] = fault.kind  # lets a test (and the log) see what was injected
        if fault is not None and fault.kind == "lost_response":
            return _Dropped(fault.seconds)
        return response

    def _execute_idempotent(
        self, endpoint: str, path_args: dict[str, str], params: dict[str, Any], ctx: RequestContext,
        key: str, request: Request, fault: Fault | None,
    ) -> Response:
        outcome = self.idempotency.claim(key, request.method.upper(), request.path, params)
        if outcome.kind == "replay":
            assert outcome.response is not None
            return self._replay(outcome.response, ctx)
        if outcome.kind == "in_flight":
            err = StripeError(
                409,
                "idempotency_error",
                "There is currently another in-progress request using this Stripe token (that probably means you "
                f"submitted twice, and the other request is still going through): {key}. Please try again later.",
                code="idempotency_key_in_use",
                headers={"Stripe-Should-Retry": "true"},
            )
            return self._respond(err.status, err.body(), ctx, err.headers)
        if outcome.kind == "endpoint_mismatch":
            message = (
                "Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{outcome.first_endpoint}' vs '{request.method.upper()} {request.path}'). "
                f"Try using a key other than '{key}' if you meant to execute a different request."
            )
            return self._respond(400, StripeError(400, "idempotency_error", message).body(), ctx)
        if outcome.kind == "params_mismatch":
            message = (
                "Keys for idempotent requests can only be used with the same parameters they were first used with. "
                f"Try using a key other than '{key}' if you meant to execute a different request."
            )
            return self._respond(400, StripeError(400, "idempotency_error", message).body(), ctx)
        try:
            status, body, storable = self._execute(endpoint, path_args, params, ctx, fault)
            response = self._respond(status, body, ctx, _NO_RETRY if storable and status >= 500 else None)
            if storable:
                self.idempotency.complete(key, StoredResponse(status, response.get_data(), ctx.request_id or ""))
        finally:
            self.idempotency.release(key)  # no-op once a result is stored
        return response

    def _execute(
        self, endpoint: str, path_args: dict[str, str], params: dict[str, Any], ctx: RequestContext,
        fault: Fault | None,
    ) -> tuple[int, dict[str, Any], bool]:
        """Run the handler under the state lock; returns (status, body, whether Stripe would store it)."""
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.seconds)  # the idempotency key stays claimed meanwhile, as a slow Stripe request would
        route = api.ROUTES[endpoint]
        try:
            reject_unknown(params, route.allowed)
            injected = _execution_fault(fault)
            if injected is not None:
                raise injected
            with self.state.lock:
                return 200, route.handler(self.state, ctx, params, **path_args), True
        except StripeError as exc:
            # Stripe saves no idempotent result when validation fails; any other answer once the
            # endpoint began executing is saved, 500s included.
            storable = not getattr(exc, "validation", False)
            return exc.status, exc.body(), storable
        except Exception:
            log.exception("handler %s crashed", endpoint)
            return 500, errors.api_error("An unexpected error occurred in the simulator.").body(), False

    # -------------------------------------------------------------- responses

    @staticmethod
    def _respond(
        status: int, body: dict[str, Any], ctx: RequestContext, headers: dict[str, str] | None = None
    ) -> Response:
        response = _json_response(status, body)
        response.headers["Request-Id"] = ctx.request_id or ""
        response.headers["Stripe-Version"] = ctx.api_version
        if ctx.idempotency_key:
            response.headers["Idempotency-Key"] = ctx.idempotency_key
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    @staticmethod
    def _replay(stored: StoredResponse, ctx: RequestContext) -> Response:
        response = Response(stored.body, status=stored.status, content_type="application/json")
        response.headers["Request-Id"] = ctx.request_id or ""
        response.headers["Original-Request"] = stored.request_id
        response.headers["Idempotent-Replayed"] = "true"
        response.headers["Stripe-Version"] = ctx.api_version
        if ctx.idempotency_key:
            response.headers["Idempotency-Key"] = ctx.idempotency_key
        if stored.status >= 500:
            response.headers.update(_NO_RETRY)
        return response


# ------------------------------------------------------------------ helpers


def _json_response(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, indent=2) + "\n", status=status, content_type="application/json")


def _unrecognized(request: Request) -> str:
    return f"Unrecognized request URL ({request.method}: {request.path})."


def _authenticate(request: Request) -> None:
    """Accept ``Bearer sk_...`` (or HTTP basic with the key as user, like curl -u)."""
    header = request.headers.get("Authorization", "")
    key = ""
    if header.startswith("Bearer "):
        key = header[len("Bearer "):].strip()
    elif header.startswith("Basic "):
        try:
            key = base64.b64decode(header[len("Basic "):]).decode("utf-8").split(":", 1)[0]
        except ValueError:
            key = ""
    if not key:
        raise errors.authentication(
            "You did not provide an API key. You need to provide your API key in the Authorization header, "
            "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
        )
    if not key.startswith(("sk_", "rk_")):
        raise errors.authentication(f"Invalid API Key provided: {key[:8]}{'*' * max(0, len(key) - 12)}{key[-4:]}")


def _match(request: Request) -> tuple[str, dict[str, str]]:
    adapter = api.URL_MAP.bind("localhost")
    try:
        endpoint, args = adapter.match(request.path, method=request.method.upper())
    except (NotFound, MethodNotAllowed, RequestRedirect):
        raise StripeError(404, "invalid_request_error", _unrecognized(request))
    return str(endpoint), dict(args)


# Faults raised once the endpoint has begun executing: Stripe stores their answer under the
# idempotency key and replays it, 500s included, for 24 hours ("Idempotent requests").
EXECUTION_FAULTS = ("500", "card_declined")


# Stripe tells its clients not to retry a stored 500: the retry would get this very answer.
_NO_RETRY = {"Stripe-Should-Retry": "false"}


def _execution_fault(fault: Fault | None) -> StripeError | None:
    if fault is None:
        return None
    if fault.kind == "500":
        return errors.api_error()
    if fault.kind == "card_declined":
        return errors.card_declined("generic_decline", "Your card was declined (simulated fault).")
    return None


def _raise_for_fault(fault: Fault | None) -> None:
    """Faults that answer before the endpoint executes (nothing stored under the key)."""
    if fault is None:
        return
    if fault.kind == "429":
        raise errors.rate_limited()
    if fault.kind == "timeout":
        time.sleep(fault.seconds)
        raise errors.api_error("The request timed out (simulated); it was not performed.")


def _request_params(request: Request) -> dict[str, Any]:
    """Decode query-string and form-body parameters into one nested dict."""
    pairs = parse_qsl(request.query_string.decode("latin-1"), keep_blank_values=True)
    if request.method.upper() == "POST":
        body = request.get_data(as_text=True)
        pairs += parse_qsl(body, keep_blank_values=True)
    return parse_pairs(pairs)
