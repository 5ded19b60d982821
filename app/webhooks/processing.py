"""Storing and processing an event through the dispatch table.

One path for every way an event arrives: the webhook endpoint, reconciliation with Stripe's event
list (`receive_event`) and the replay command (`process_event`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.extensions import db
from app.log import current_trace_id, trace
from app.models import WebhookEvent
from app.webhooks.handlers import HANDLERS
from app.webhooks.store import claim_attempt, event_payload, insert_event, mark_failed, mark_processed

log = logging.getLogger(__name__)


class ProcessingFailed(Exception):
    """A handler raised; the event keeps its error and Stripe (or an operator) retries it."""


@dataclass(frozen=True)
class Receipt:
    """What `receive_event` did with one event."""

    handled: bool  # a handler acts on its type (any other type is stored as processed)
    stored: bool  # this call stored it: the first time its id was seen
    processed: bool  # this call ran its handler to completion


def receive_event(event: dict, payload: bytes, trace_id: str | None, *, finish_stored: bool = True) -> Receipt:
    """Store the event once by its id, then process it; raises ProcessingFailed when its handler fails.

    The event stored by this call is claimed by that very INSERT and processed at once. An event
    already stored is finished here only with `finish_stored` (a redelivery: Stripe retries until
    it gets a 2xx, so it must not get one for an event nobody processed); otherwise it is left to
    whoever is at it, or to a redelivery and `flask webhooks replay`.
    """
    handled = event["type"] in HANDLERS
    stored = insert_event(event, payload, trace_id, handled=handled)
    log.info("webhook event stored" if stored else "webhook event redelivered",
             extra={"event_id": event["id"], "event_type": event["type"]})
    if not handled:
        return Receipt(handled=False, stored=stored, processed=False)
    if stored:
        run_claimed(event["id"], event, trace_id)
        return Receipt(handled=True, stored=True, processed=True)
    processed = finish_stored and process_event(event["id"])
    return Receipt(handled=True, stored=False, processed=processed)


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
