"""`POST /webhooks/stripe`: 400 unless signed, 200 once stored (and its processing queued), 5xx when a retried processing failed."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, g, jsonify, request

from app.errors import ApiError, ServiceUnavailable
from app.payments.stripe_gateway import WebhookSignatureError, verify_webhook
from app.webhooks.processing import ProcessingFailed, accept_event
from app.webhooks.store import is_processed

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

log = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 256 * 1024


def _check_shape(event: object) -> dict:
    if not isinstance(event, dict):
        raise ApiError("The event is not a JSON object.", code="invalid_event", status=400)
    event_id, event_type = event.get("id"), event.get("type")
    data = event.get("data")
    if not (isinstance(event_id, str) and event_id.startswith("evt_") and len(event_id) <= 255):
        raise ApiError("The event has no valid id.", code="invalid_event", status=400)
    if not (isinstance(event_type, str) and 0 < len(event_type) <= 100):
        raise ApiError("The event has no valid type.", code="invalid_event", status=400)
    if not (isinstance(data, dict) and isinstance(data.get("object"), dict)):
        raise ApiError("The event has no data.object.", code="invalid_event", status=400)
    return event


@bp.post("/stripe")
def stripe_webhook():
    """Verify, store once, queue the processing; Stripe retries anything not answered 2xx."""
    secret = current_app.config["ENGINE"].stripe_webhook_secret
    if not secret:
        raise ServiceUnavailable("The webhook signing secret is not configured.", code="webhook_not_configured")
    if request.content_length and request.content_length > MAX_WEBHOOK_BYTES:
        raise ApiError("The event is too large.", code="payload_too_large", status=413)
    payload = request.get_data(cache=False)  # the raw bytes: verified before anything parses them
    try:
        event = _check_shape(verify_webhook(payload, request.headers.get("Stripe-Signature"), secret))
    except WebhookSignatureError as exc:
        log.warning("webhook signature rejected", extra={"reason": str(exc)})
        raise ApiError("The Stripe-Signature header is missing, invalid or too old.", code="invalid_signature", status=400) from None
    except (ValueError, RecursionError):
        raise ApiError("The signed body is not valid JSON.", code="malformed_json", status=400) from None

    try:
        receipt = accept_event(event, payload, g.get("trace_id"))
    except ProcessingFailed:
        return jsonify({"error": {"code": "processing_failed", "message": "The event could not be processed; retry later."}}), 500
    settled = receipt.stored or receipt.processed or receipt.deferred or receipt.done_before
    if receipt.handled and not settled and not is_processed(event["id"]):
        # Another delivery holds it, or died holding it: a 2xx now would end Stripe's retries before
        # the event is done. Stripe retries; the sweep re-runs it once its lease has run out.
        return jsonify({"error": {"code": "event_in_progress",
                                  "message": "The event is being processed; retry later."}}), 409
    duplicate = not (receipt.stored or receipt.processed)
    return jsonify({"received": True, "duplicate": duplicate})
