"""Processing a stored event through the dispatch table; shared by the endpoint and the replay command."""

from __future__ import annotations

import logging

from app.extensions import db
from app.log import current_trace_id, trace
from app.models import WebhookEvent
from app.webhooks.handlers import HANDLERS
from app.webhooks.store import claim_attempt, event_payload, mark_failed, mark_processed

log = logging.getLogger(__name__)


class ProcessingFailed(Exception):
    """A handler raised; the event keeps its error and Stripe (or an operator) retries it."""


def process_event(event_id: str, *, force: bool = False) -> bool:
    """Run the event's handler once; False when another delivery already processed or is processing it."""
    row = db.session.get(WebhookEvent, event_id)
    if row is None:
        raise LookupError(event_id)
    if row.processed_at is not None and not force:
        return False
    if not claim_attempt(event_id) and not force:
        return False
    run_claimed(event_id, event_payload(row), row.trace_id)
    return True


def run_claimed(event_id: str, event: dict, trace_id: str | None = None) -> None:
    """Run the handler of an event this delivery has claimed; record the outcome on its row."""
    handler = HANDLERS.get(event["type"])
    with trace(current_trace_id() or trace_id):
        try:
            if handler is not None:
                handler(event)
            else:
                log.info("webhook event type ignored", extra={"event_id": event_id, "event_type": event["type"]})
        except Exception as exc:
            db.session.rollback()
            log.exception("webhook processing failed", extra={"event_id": event_id, "event_type": event["type"]})
            mark_failed(event_id, exc)
            raise ProcessingFailed(str(exc)) from exc
        mark_processed(event_id)
    log.info("webhook event processed", extra={"event_id": event_id, "event_type": event["type"]})
