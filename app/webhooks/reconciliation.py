"""Reconciliation with Stripe's event list: the events Stripe never delivered are looked for.

A webhook can be lost for good: the endpoint was down longer than Stripe retries, an endpoint
was misconfigured, an event type was not subscribed. Stripe keeps every event 30 days and lists
them; `reconcile()` (`flask reconcile`, and the scheduler every RECONCILE_INTERVAL_SECONDS)
lists the types the engine acts on and feeds each event it has not stored through the webhook
endpoint's own path (`receive_event`): stored once by its id, claimed by that insert, processed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select

from app.db_tx import write_transaction
from app.extensions import db
from app.log import current_trace_id, trace
from app.models import ReconciliationRun, WebhookEvent
from app.models.base import isoformat, utcnow
from app.payments.stripe_gateway import get_gateway
from app.webhooks.handlers import HANDLERS
from app.webhooks.processing import ProcessingFailed, receive_event

log = logging.getLogger(__name__)

# Stripe lists the events of the last 30 days only.
EVENT_RETENTION = timedelta(days=30)
# Each run starts this long before the last one ended: an event can become listable with a
# `created` slightly in the past (and Stripe's clock is not ours).
OVERLAP = timedelta(minutes=5)
PAGE_SIZE = 100  # Stripe's largest page
MAX_TYPES_PER_LIST = 20  # Stripe refuses a longer `types`


@dataclass(frozen=True)
class ReconcileResult:
    found: int  # events of the handled types Stripe listed for the window
    new: int  # of those, stored by this run (the engine had never received them)
    processed: int  # new events whose handler ran to completion
    failed: int  # new events whose handler failed: stored with their error, like a failed delivery
    since: datetime
    until: datetime

    def as_dict(self) -> dict:
        return {
            "found": self.found, "new": self.new, "processed": self.processed, "failed": self.failed,
            "since": isoformat(self.since), "until": isoformat(self.until),
        }


def window_start(since: datetime | None, until: datetime) -> datetime:
    """Where listing starts: `since`, else the last run's end less the overlap; never beyond Stripe's 30 days."""
    oldest = until - EVENT_RETENTION
    if since is None:
        last_until = db.session.scalar(select(func.max(ReconciliationRun.until)))
        db.session.rollback()  # no read transaction held open while Stripe is called
        since = last_until - OVERLAP if last_until is not None else oldest
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    return max(since, oldest)


def reconcile(since: datetime | None = None, *, page_size: int = PAGE_SIZE) -> ReconcileResult:
    """List the handled event types created since `since` (all pages); store and process the ones not stored."""
    started_at = until = utcnow()
    since = window_start(since, until)
    with trace(current_trace_id()) as trace_id:
        found, missing = 0, []
        for page in _pages(since, page_size):
            found += len(page)
            missing += _not_stored(page)
        new = processed = failed = 0
        # Pages run newest first; the missing ones go oldest first, the order Stripe would have delivered them in.
        for event in reversed(missing):
            try:
                receipt = receive_event(event, json.dumps(event).encode("utf-8"), trace_id, finish_stored=False)
            except ProcessingFailed:
                new, failed = new + 1, failed + 1
                continue
            if receipt.stored:  # not when a delivery stored it since the listing: then it is not ours
                new += 1
            if receipt.processed:
                processed += 1
        result = ReconcileResult(found, new, processed, failed, since, until)
        _record(started_at, result)
        log.info("reconciled with stripe's event list", extra=result.as_dict())
        return result


def _pages(since: datetime, page_size: int) -> Iterator[list[dict]]:
    """Every page of handled events created at or after `since`, newest first, one `types` batch at a time."""
    types = sorted(HANDLERS)
    created_gte = int(since.timestamp())
    gateway = get_gateway()
    for first in range(0, len(types), MAX_TYPES_PER_LIST):
        batch = types[first:first + MAX_TYPES_PER_LIST]
        starting_after = None
        while True:
            page = gateway.list_events(created_gte=created_gte, types=batch, starting_after=starting_after,
                                       limit=page_size)
            if page.events:
                yield page.events
            if not page.has_more or not page.events:
                break
            starting_after = page.events[-1]["id"]


def _not_stored(events: list[dict]) -> list[dict]:
    """The events of one page whose id the engine has not stored (one query per page)."""
    ids = [event["id"] for event in events]
    stored = set(db.session.scalars(select(WebhookEvent.id).where(WebhookEvent.id.in_(ids))))
    db.session.rollback()  # no read transaction held open while Stripe is called
    return [event for event in events if event["id"] not in stored]


def _record(started_at: datetime, result: ReconcileResult) -> None:
    """Only a run that listed every page is recorded: after a failed one, the next starts from the same place."""
    with write_transaction() as session:
        session.add(ReconciliationRun(
            started_at=started_at, since=result.since, until=result.until,
            found=result.found, new=result.new, processed=result.processed, failed=result.failed,
        ))
