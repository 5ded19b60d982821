"""Storing and processing an event through the dispatch table.

One path for every way an event arrives: the webhook endpoint (`accept_event`: stored, then left to
a worker's job), reconciliation with Stripe's event list (`receive_event`: stored and processed at
once), the event's job, the sweep and the replay command (`process_event`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.exceptions import RedisError

from app.extensions import db
from app.log import current_trace_id, trace
from app.models import WebhookEvent
from app.queues import enqueue_event_processing
from app.webhooks.handlers import HANDLERS
from app.webhooks.store import claim_attempt, event_payload, insert_event, mark_failed, mark_processed, stored_state

log = logging.getLogger(__name__)


class ProcessingFailed(Exception):
    """A handler raised; the event keeps its error and Stripe (or an operator) retries it."""


@dataclass(frozen=True)
class Receipt:
    """What `receive_event` did with one event."""

    handled: bool  # a handler acts on its type (any other type is stored as processed)
    stored: bool  # this call stored it: the first time its id was seen
    processed: bool  # this call ran its handler to completion
    deferred: bool = False  # left to its job (queued now, or by the sweep if Redis refused the job)
    done_before: bool = False  # found processed already (a redelivery)


def accept_event(event: dict, payload: bytes, trace_id: str | None) -> Receipt:
    """The webhook endpoint's path: store the event once by its id; its handler runs in a worker.

    A new event of an acted-on type is stored unclaimed by the one autocommitted INSERT, then its
    job `event-{id}` is queued; if Redis refuses it the event is stored all the same and the
    sweep runs it once it has waited STUCK_OPERATION_SECONDS. A redelivery of an event that is only
    waiting for its job queues it again (unique: one job). A redelivery of an event whose attempt
    failed (or died) is processed here, as Stripe's retry always was: ProcessingFailed when it fails
    again; not processed when another delivery or job holds it.
    """
    handled = event["type"] in HANDLERS
    stored = insert_event(event, payload, trace_id, handled=handled)
    log.info("webhook event stored" if stored else "webhook event redelivered",
             extra={"event_id": event["id"], "event_type": event["type"]})
    if not handled:
        return Receipt(handled=False, stored=stored, processed=False)
    if not stored:
        processed, attempts = stored_state(event["id"])
        if processed:
            return Receipt(handled=True, stored=False, processed=False, done_before=True)
        if attempts:
            return Receipt(handled=True, stored=False, processed=process_event(event["id"]))
    _enqueue(event["id"], event["type"])
    return Receipt(handled=True, stored=stored, processed=False, deferred=True)


def _enqueue(event_id: str, event_type: str) -> None:
    try:
        enqueue_event_processing(event_id)
    except RedisError:
        # Stored and committed: the sweep's events janitor runs it after STUCK_OPERATION_SECONDS.
        log.warning("webhook event not queued (Redis unavailable); the sweep will process it",
                    extra={"event_id": event_id, "event_type": event_type}, exc_info=True)


def receive_event(event: dict, payload: bytes, trace_id: str | None, *, finish_stored: bool = True) -> Receipt:
    """Store the event once by its id, then process it here; raises ProcessingFailed when its handler fails.

    Reconciliation's path (not a request's). The event stored by this call is claimed by that very
    INSERT and processed at once. An event
    already stored is finished here only with `finish_stored` (a redelivery: Stripe retries until
    it gets a 2xx, so it must not get one for an event nobody processed); otherwise it is left to
    whoever is at it, or to a redelivery and `flask webhooks replay`.
    """
    handled = event["type"] in HANDLERS
    stored = insert_event(event, payload, trace_id, handled=handled, claim=True)
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
