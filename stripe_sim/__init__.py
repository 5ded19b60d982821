"""Offline, stateful Stripe API simulator for tests (PaymentIntents, refunds, events, webhooks, faults)."""

from .control import SimControl
from .server import SimServer
from .signing import sign_payload

__all__ = ["SimControl", "SimServer", "sign_payload"]
