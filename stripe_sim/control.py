"""Small HTTP client for the simulator's /_sim control API."""

from __future__ import annotations

from typing import Any

import requests

TEST_API_KEY = "sk_test_stripe_sim"


class SimControlError(RuntimeError):
    """The control API rejected a request."""


class SimControl:
    """Steer a running simulator: reset, faults, delivery, ledger, increments, expiry."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        # One short-lived session per call: nothing stays open between calls.
        resp = requests.request(method, f"{self.url}{path}", json=body, timeout=self.timeout)
        try:
            data = resp.json()
        except ValueError:
            data = {"error": {"message": resp.text}}
        if resp.status_code >= 400:
            raise SimControlError(f"{method} {path} -> {resp.status_code}: {data}")
        return data

    def health(self) -> dict[str, Any]:
        """GET /_sim/health."""
        return self._call("GET", "/_sim/health")

    def reset(self) -> dict[str, Any]:
        """Back to the state at start (objects, keys, faults, deliveries, runtime-added endpoints all dropped)."""
        return self._call("POST", "/_sim/reset")

    def set_faults(self, **config: Any) -> dict[str, Any]:
        """Replace fault config: rates, seed, timeout_seconds, lost_response_seconds, script; no args clears."""
        return self._call("POST", "/_sim/faults", config)

    def clear_faults(self) -> dict[str, Any]:
        """Disable all faults."""
        return self._call("POST", "/_sim/faults", {})

    def faults(self) -> dict[str, Any]:
        """Fault config, unconsumed script and counters."""
        return self._call("GET", "/_sim/faults")

    def set_rate_limit(self, requests_per_second: float | None, burst: float | None = None) -> dict[str, Any]:
        """Enforce a token-bucket limit on /v1 requests (None disables)."""
        return self._call("POST", "/_sim/rate_limit", {"requests_per_second": requests_per_second, "burst": burst})

    def add_webhook(self, url: str, secret: str) -> dict[str, Any]:
        """Register a webhook endpoint."""
        return self._call("POST", "/_sim/webhooks", {"url": url, "secret": secret})

    def clear_webhooks(self) -> dict[str, Any]:
        """Remove every webhook endpoint."""
        return self._call("DELETE", "/_sim/webhooks")

    def set_delivery(self, **options: Any) -> dict[str, Any]:
        """Change delivery options: duplicate_rate, shuffle_window_ms, paused, delay_ms, max_attempts, ..."""
        return self._call("POST", "/_sim/delivery", options)

    def delivery(self) -> dict[str, Any]:
        """Delivery options, pending count and attempts."""
        return self._call("GET", "/_sim/delivery")

    def redeliver(self, event_id: str) -> dict[str, Any]:
        """Send an event to every endpoint again."""
        return self._call("POST", f"/_sim/events/{event_id}/redeliver")

    def ledger(self) -> dict[str, Any]:
        """Effective operations, fault counters and request count."""
        return self._call("GET", "/_sim/ledger")

    def backdate_event(self, event_id: str, seconds: int) -> dict[str, Any]:
        """Move an event's ``created`` ``seconds`` into the past; returns the event."""
        return self._call("POST", f"/_sim/events/{event_id}/backdate", {"seconds": seconds})

    def increment_behavior(self, pi_id: str, behavior: str, decline_code: str | None = None) -> dict[str, Any]:
        """Make increments on ``pi_id`` approve, decline or be unsupported."""
        body: dict[str, Any] = {"behavior": behavior}
        if decline_code:
            body["decline_code"] = decline_code
        return self._call("POST", f"/_sim/payment_intents/{pi_id}/increment_behavior", body)

    def set_account(self, *, incremental_authorization: bool) -> dict[str, Any]:
        """Account-level switches: ``incremental_authorization=False`` is a standard-pricing account."""
        return self._call("POST", "/_sim/account", {"incremental_authorization": incremental_authorization})

    def expire(self, pi_id: str) -> dict[str, Any]:
        """Expire the authorization of a requires_capture intent."""
        return self._call("POST", f"/_sim/payment_intents/{pi_id}/expire")

    def fail_refund(self, re_id: str) -> dict[str, Any]:
        """Make a refund fail after it succeeded; Stripe sends ``refund.failed``."""
        return self._call("POST", f"/_sim/refunds/{re_id}/fail")

    def payment_intent(self, pi_id: str) -> dict[str, Any]:
        """Raw simulator state for one intent."""
        return self._call("GET", f"/_sim/payment_intents/{pi_id}")

    def confirm(self, pi_id: str, payment_method: str = "pm_card_visa", api_key: str = TEST_API_KEY) -> dict[str, Any]:
        """Confirm an intent as the customer's browser would (Stripe.js), through /v1."""
        resp = requests.post(
            f"{self.url}/v1/payment_intents/{pi_id}/confirm",
            data={"payment_method": payment_method},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=self.timeout,
        )
        return resp.json()
