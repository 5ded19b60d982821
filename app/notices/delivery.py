"""Sending notices after the commit: the RQ job's work, the sweep's janitor and staff's resend.

A send is three steps, each its own transaction around the provider call:
1. claim: `pending` (or `sending` past its lease: its worker died) → `sending`, `attempts` + 1,
   whose value is the claim's fencing token;
2. the provider, with the idempotency key `notice:{key}:{generation}`: a retry after a timeout or
   a lost answer is the same send, and Resend answers it with the first result;
3. record: `sent` with the provider's answer; `failed` on a refusal (4xx) or after
   `MAX_ATTEMPTS`; back to `pending` on an outage, and the job raises so RQ retries with backoff.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import and_, or_, select, update

from app.db_tx import write_transaction
from app.extensions import db
from app.models import Notice, NoticeStatus
from app.models.base import utcnow
from app.notices.content import render
from app.notices.outbox import send_after_commit
from app.notices.mail import Email, MailRejected, MailUnavailable
from app.notices.providers import provider_for
from app.queues import enqueue_notice

log = logging.getLogger(__name__)

N = NoticeStatus
# Outages are retried by RQ (NOTICE_RETRY) and then by the sweep, up to this many sends in all.
MAX_ATTEMPTS = 8
BATCH = 100


class NoticeRetryLater(Exception):
    """The provider did not accept the notice now; RQ retries the job (same idempotency key)."""


def provider_key(notice: Notice) -> str:
    """The provider's idempotency key: the notice's own key, and the staff resend it belongs to."""
    return f"notice:{notice.key}:{notice.generation}"


def _lease() -> timedelta:
    return timedelta(seconds=current_app.config["ENGINE"].stuck_operation_seconds)


def _claim(notice_id: str) -> int | None:
    now = utcnow()
    with write_transaction() as session:
        return session.scalar(
            update(Notice)
            .where(Notice.id == notice_id,
                   or_(Notice.status == N.PENDING,
                       and_(Notice.status == N.SENDING, Notice.claimed_at < now - _lease())))
            .values(status=N.SENDING, claimed_at=now, attempts=Notice.attempts + 1, updated_at=now)
            .returning(Notice.attempts)
            .execution_options(synchronize_session=False)
        )


def _record(notice_id: str, token: int, status: str, answer: str, **values) -> bool:
    """sending → `status`, only while the claim is still the one `token` names."""
    with write_transaction() as session:
        return session.execute(
            update(Notice)
            .where(Notice.id == notice_id, Notice.status == N.SENDING, Notice.attempts == token)
            .values(status=status, provider_answer=answer[:1000], claimed_at=None, updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        ).rowcount == 1


def send_notice(notice_id: str) -> str:
    """Send the notice once; returns what happened. Raises `NoticeRetryLater` on a provider outage."""
    token = _claim(notice_id)
    if token is None:
        return "not claimed"  # sent, failed, gone, or another job holds it
    notice = db.session.get(Notice, notice_id)
    settings = current_app.config["ENGINE"]
    provider = provider_for(settings)
    try:
        content = render(notice)
    except Exception as exc:  # a template fault is not an outage: retrying would fail the same way
        _record(notice_id, token, N.FAILED, f"could not be rendered: {type(exc).__name__}", provider=provider.name)
        log.exception("notice not rendered", extra={"notice_id": notice_id, "kind": notice.kind})
        return N.FAILED
    email = Email(sender=settings.mail_from, to=notice.recipient, subject=content.subject,
                  text=content.text, html=content.html, idempotency_key=provider_key(notice))
    where = {"notice_id": notice_id, "order_id": notice.order_id, "kind": notice.kind, "provider": provider.name}
    db.session.rollback()  # no transaction held open across the provider's answer
    try:
        accepted = provider.send(email)
    except MailRejected as exc:
        _record(notice_id, token, N.FAILED, f"refused: {exc}", provider=provider.name)
        log.warning("notice refused by the provider", extra={**where, "error": str(exc)})
        return N.FAILED
    except MailUnavailable as exc:
        if token >= MAX_ATTEMPTS:
            _record(notice_id, token, N.FAILED, f"gave up after {token} attempts: {exc}", provider=provider.name)
            log.error("notice given up", extra={**where, "error": str(exc)})
            return N.FAILED
        _record(notice_id, token, N.PENDING, f"attempt {token} not accepted, retrying: {exc}", provider=provider.name)
        log.warning("notice not sent yet; retrying", extra={**where, "attempt": token, "error": str(exc)})
        raise NoticeRetryLater(str(exc)) from None
    if not _record(notice_id, token, N.SENT, accepted.answer, provider=accepted.provider,
                   provider_message_id=accepted.message_id, sent_at=utcnow()):
        log.warning("notice sent but its claim was taken over", extra=where)
    log.info("notice sent", extra={**where, "message_id": accepted.message_id})
    return N.SENT


def requeue_stuck_notices(now: datetime, stuck_after: timedelta) -> int:
    """The sweep's janitor: notices pending (their job was never queued, or lost) or sending past the
    lease (their worker died) for longer than `stuck_after` are queued again. A job still queued or
    scheduled for a retry keeps its place (its id is taken), so backoff is not cut short."""
    ids = list(db.session.scalars(
        select(Notice.id)
        .where(or_(and_(Notice.status == N.PENDING, Notice.updated_at < now - stuck_after),
                   and_(Notice.status == N.SENDING, Notice.claimed_at < now - stuck_after)))
        .order_by(Notice.updated_at).limit(BATCH)
    ))
    db.session.rollback()
    queued = 0
    for notice_id in ids:
        if enqueue_notice(notice_id):
            queued += 1
    if queued:
        log.warning("stuck notices queued again", extra={"count": queued})
    return queued


def resend_failed_notice(notice_id: str, *, actor: str, request_token: str | None) -> bool:
    """Staff's resend: failed → pending under a new idempotency key; the job is queued after the
    commit. False when there is nothing to resend (not failed), or this confirmation already did."""
    with write_transaction() as session:
        conditions = [Notice.id == notice_id, Notice.status == N.FAILED]
        if request_token:
            conditions.append(or_(Notice.resend_token.is_(None), Notice.resend_token != request_token))
        won = session.execute(
            update(Notice).where(*conditions)
            .values(status=N.PENDING, attempts=0, generation=Notice.generation + 1, resend_token=request_token,
                    provider_answer=f"resend requested by {actor}", updated_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        if won:
            send_after_commit(notice_id)
    if won:
        log.info("notice resend requested", extra={"notice_id": notice_id, "actor": actor})
    return won
