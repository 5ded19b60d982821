"""Fixtures: a fresh simulator per test, a real stripe client pointed at it, and a webhook receiver."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import pytest
import stripe
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from stripe_sim.control import SimControl
from stripe_sim.server import SimServer

WEBHOOK_SECRET = "whsec_test_secret"


class _SilentHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        pass


class WebhookReceiver:
    """Records webhook deliveries; answers with ``fail_first`` 500s before succeeding."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail_first = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True, request_handler=_SilentHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/webhooks/stripe"
        self._thread = threading.Thread(target=lambda: self._server.serve_forever(poll_interval=0.05), daemon=True)
        self._thread.start()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self._cond:
            self.received.append({"body": request.get_data(), "signature": request.headers.get("Stripe-Signature")})
            failing = self.fail_first > 0
            if failing:
                self.fail_first -= 1
            self._cond.notify_all()
        return Response("fail" if failing else "ok", status=500 if failing else 200)(environ, start_response)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` deliveries arrived."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(port=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def control(sim: SimServer) -> SimControl:
    return sim.control


def make_client(url: str, timeout: float = 5, retries: int = 2) -> tuple[stripe.StripeClient, stripe.RequestsClient]:
    http_client = stripe.RequestsClient(timeout=timeout)
    client = stripe.StripeClient(
        "sk_test_123", base_addresses={"api": url}, max_network_retries=retries, http_client=http_client
    )
    return client, http_client


@pytest.fixture
def client(sim: SimServer) -> Iterator[stripe.StripeClient]:
    stripe_client, http_client = make_client(sim.url)
    try:
        yield stripe_client
    finally:
        http_client.close()


@pytest.fixture
def fast_client(sim: SimServer) -> Iterator[stripe.StripeClient]:
    """Short client timeout (0.5 s) for timeout / lost-response tests."""
    stripe_client, http_client = make_client(sim.url, timeout=0.5)
    try:
        yield stripe_client
    finally:
        http_client.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    rec = WebhookReceiver()
    try:
        yield rec
    finally:
        rec.close()


MANUAL = {
    "amount": 1000,
    "currency": "usd",
    "capture_method": "manual",
    "metadata": {"cart_id": "cart_1"},
    "payment_method_options": {"card": {"request_incremental_authorization": "if_available"}},
}


def authorize(client: stripe.StripeClient, pm: str = "pm_card_visa", **overrides: Any) -> stripe.PaymentIntent:
    """Create and confirm a manual-capture PaymentIntent."""
    pi = client.v1.payment_intents.create(params={**MANUAL, **overrides})
    return client.v1.payment_intents.confirm(pi.id, params={"payment_method": pm})
