"""Events stored but never finished (a handler failed, the process that held them died): run them again.

Part of the periodic sweep. A 2xx to Stripe promised the event would be processed to completion;
this is what keeps that promise when the answering process did not.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from app.webhooks.processing import ProcessingFailed, process_event
from app.webhooks.store import stale_unprocessed_ids

log = logging.getLogger(__name__)

BATCH = 100


def rerun_stale_events(now: datetime, lease: timedelta) -> int:
    """Process events nobody has been at for `lease`; returns how many were processed now."""
    processed = failed = 0
    for event_id in stale_unprocessed_ids(now, lease, BATCH):
        try:
            if process_event(event_id):
                processed += 1
        except ProcessingFailed:
            failed += 1  # kept with its error; counted on the operations panel; tried again next sweep
    if processed or failed:
        log.info("stale webhook events re-run", extra={"processed": processed, "failed": failed})
    return processed
