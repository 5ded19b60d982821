"""The notices page's reads: every notice newest first, by status, in keyset pages (no OFFSET)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from sqlalchemy import and_, or_, select

from app.dashboard.queries import decode_cursor
from app.extensions import db
from app.models import Notice, NoticeStatus, Order

PAGE_SIZE = 50


@dataclass(frozen=True)
class NoticeRow:
    notice: Notice
    display_id: int


@dataclass(frozen=True)
class NoticePage:
    rows: list[NoticeRow]
    older: str | None  # the cursor of the next (older) page, if there is one


def notice_cursor(notice: Notice) -> str:
    """The (created_at, id) cursor, encoded as the orders list encodes its own (`decode_cursor`)."""
    raw = f"{notice.created_at.isoformat()}|{notice.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def list_notices(status: str | None, order_id: str | None = None, before: str | None = None) -> NoticePage:
    statement = select(Notice, Order.display_id).join(Order, Order.id == Notice.order_id)
    if status in NoticeStatus.ALL:
        statement = statement.where(Notice.status == status)
    if order_id:
        statement = statement.where(Notice.order_id == order_id)
    cursor = decode_cursor(before)
    if cursor is not None:
        created_at, notice_id = cursor
        statement = statement.where(or_(Notice.created_at < created_at,
                                        and_(Notice.created_at == created_at, Notice.id < notice_id)))
    found = db.session.execute(
        statement.order_by(Notice.created_at.desc(), Notice.id.desc()).limit(PAGE_SIZE + 1)).all()
    rows = [NoticeRow(notice, display_id) for notice, display_id in found[:PAGE_SIZE]]
    older = notice_cursor(rows[-1].notice) if len(found) > PAGE_SIZE else None
    return NoticePage(rows, older)
