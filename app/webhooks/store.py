"""The WebhookEvent rows: stored once by Stripe's event id, processed until one attempt succeeds."""

from __future__ import annotations

import functools
import json
import logging
import traceback
from datetime import timedelta

from flask import current_app
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from app.db_tx import single_statement, write_transaction
from app.extensions import db
from app.models import WebhookEvent
from app.models.base import utcnow

log = logging.getLogger(__name__)


def processing_lease() -> timedelta:
    """How long a delivery holds an event: after this (STUCK_OPERATION_SECONDS) one that died
    mid-processing stops blocking redeliveries, and the sweep re-runs it (the same lease for both)."""
    return timedelta(seconds=current_app.config["ENGINE"].stuck_operation_seconds)


@functools.cache
def _insert_statement(dialect: str):
    """The Core INSERT ... ON CONFLICT (id) DO NOTHING RETURNING id, built once per dialect.

    (Core with bound parameters, not an ORM insert built per call: it halves the CPU of the
    store, the bulk of an ingest request's work; see docs/performance.md.)
    """
    table = WebhookEvent.__table__
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(table).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)


_table = WebhookEvent.__table__
_STATE_STATEMENT = select(_table.c.processed_at, _table.c.attempts).where(_table.c.id == bindparam("id"))


def _run(statement, parameters: dict, *, row: bool = False):
    """Execute one statement atomic on its own (`single_statement`: autocommitted on PostgreSQL, on a
    pool without a ping), once more on a fresh connection if the server had dropped the first (the
    statements are idempotent by the event id); its first value, or with `row` its first row."""
    for attempt in (1, 2):
        try:
            with single_statement() as connection:
                result = connection.execute(statement, parameters)
                return result.first() if row else result.scalar()
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


def insert_event(event: dict, payload: bytes, trace_id: str | None, *, handled: bool, claim: bool = False) -> bool:
    """Store a new event in one autocommitted INSERT ... ON CONFLICT DO NOTHING; False for a known id.

    A type no handler acts on is stored already processed. A type some handler acts on is stored
    unprocessed: unclaimed for a worker's job to claim (the webhook endpoint), or with `claim`
    claimed by this very statement (`processing_started_at`, attempt 1), so a caller that processes
    it at once (reconciliation) needs no claim round trip. One statement is atomic on its own: no
    BEGIN, no COMMIT, and no ping either (`single_statement`): one round trip.
    """
    now = utcnow()
    data_object = (event.get("data") or {}).get("object") or {}
    claimed = handled and claim
    inserted = _run(_insert_statement(db.engine.dialect.name), {
        "id": event["id"],
        "type": event["type"],
        "payload": payload.decode("utf-8"),
        "object_id": data_object.get("id") if isinstance(data_object, dict) else None,
        "trace_id": trace_id,
        "received_at": now,
        "processed_at": None if handled else now,
        "processing_started_at": now if claimed else None,
        "attempts": 0 if handled and not claimed else 1,
    })
    return inserted is not None


def stored_state(event_id: str) -> tuple[bool, int] | None:
    """(processed, attempts) of a stored event, read in one autocommitted statement (no transaction); None if unknown."""
    row = _run(_STATE_STATEMENT, {"id": event_id}, row=True)
    return None if row is None else (row[0] is not None, row[1])


def claim_attempt(event_id: str) -> bool:
    """Start processing unless it is done or another delivery is at it (a compare-and-set)."""
    now = utcnow()
    with write_transaction() as session:
        result = session.execute(
            update(WebhookEvent)
            .where(
                WebhookEvent.id == event_id,
                WebhookEvent.processed_at.is_(None),
                or_(
                    WebhookEvent.processing_started_at.is_(None),
                    WebhookEvent.processing_started_at < now - processing_lease(),
                ),
            )
            .values(attempts=WebhookEvent.attempts + 1, processing_started_at=now)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1


def is_processed(event_id: str) -> bool:
    return db.session.scalar(select(WebhookEvent.processed_at).where(WebhookEvent.id == event_id)) is not None


def stale_unprocessed_ids(now, lease: timedelta, limit: int) -> list[str]:
    """Events stored but not processed, and nobody at them within `lease`: failed, or their process died."""
    return list(db.session.scalars(
        select(WebhookEvent.id)
        .where(
            WebhookEvent.processed_at.is_(None),
            or_(WebhookEvent.processing_started_at.is_(None), WebhookEvent.processing_started_at < now - lease),
            WebhookEvent.received_at < now - lease,
        )
        .order_by(WebhookEvent.received_at)
        .limit(limit)
    ))


def mark_processed(event_id: str) -> None:
    with write_transaction() as session:
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event_id)
            .values(processed_at=utcnow(), last_error=None, processing_started_at=None)
            .execution_options(synchronize_session=False)
        )


def mark_failed(event_id: str, error: BaseException) -> None:
    text = "".join(traceback.format_exception_only(type(error), error)).strip()[:2000]
    with write_transaction() as session:
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event_id)
            .values(last_error=text, processing_started_at=None)
            .execution_options(synchronize_session=False)
        )


def event_payload(row: WebhookEvent) -> dict:
    return json.loads(row.payload)
