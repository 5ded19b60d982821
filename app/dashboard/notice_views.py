"""Dashboard pages for customer notices: the outbox list, one notice, and staff's resend."""

from __future__ import annotations

import logging
import re
import secrets

from flask import abort, flash, g, redirect, render_template, request, url_for

from app.dashboard.notice_queries import list_notices
from app.dashboard.timeline import NOTICE_TONES
from app.dashboard.views import bp
from app.extensions import db
from app.models import Notice, NoticeStatus, Order
from app.models.base import utcnow
from app.notices.content import render
from app.notices.delivery import resend_failed_notice

log = logging.getLogger(__name__)

_REQUEST_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")



@bp.get("/notices")
def notices():
    """Every customer notice, newest first, with a filter by status."""
    status = request.args.get("status") or None
    status = status if status in NoticeStatus.ALL else None
    order_id = (request.args.get("order") or "").strip()[:40] or None
    page = list_notices(status, order_id, before=request.args.get("before"))
    return render_template("admin/notices.html", page=page, status=status, order_id=order_id,
                           statuses=NoticeStatus.ALL, tones=NOTICE_TONES, now=utcnow())


def _notice_or_404(notice_id: str) -> tuple[Notice, Order]:
    notice = db.session.get(Notice, notice_id[:40])
    if notice is None:
        abort(404)
    return notice, db.session.get(Order, notice.order_id)


@bp.get("/notices/<notice_id>")
def notice(notice_id: str):
    """One notice: what it says (as the customer reads it) and what the provider answered."""
    item, order = _notice_or_404(notice_id)
    return render_template("admin/notice.html", notice=item, order=order, content=render(item),
                           tones=NOTICE_TONES, now=utcnow())


@bp.route("/notices/<notice_id>/resend", methods=["GET", "POST"])
def notice_resend(notice_id: str):
    """GET: the confirmation step. POST (with `confirmed=yes`): resend a failed notice, once per confirmation."""
    item, order = _notice_or_404(notice_id)
    back = redirect(url_for("dashboard.notice", notice_id=item.id))
    if request.method == "GET" or request.form.get("confirmed") != "yes":
        if item.status != NoticeStatus.FAILED:
            flash(f"Only a failed notice can be resent; this one is {item.status}.", "info")
            return back
        return render_template("admin/notice_resend.html", notice=item, order=order,
                               request_token=secrets.token_urlsafe(18), now=utcnow())
    token = request.form.get("request_token", "")
    token = token if _REQUEST_TOKEN.fullmatch(token) else None
    resent = resend_failed_notice(item.id, actor=f"staff:{g.staff.email}", request_token=token)
    log.info("staff action", extra={"action": "resend_notice", "notice_id": item.id, "staff_id": g.staff.id,
                                    "result": "resent" if resent else "unchanged"})
    if resent:
        flash("The notice is queued to be sent again.", "success")
    else:
        db.session.expire_all()
        flash(f"Nothing to resend: the notice is {db.session.get(Notice, item.id).status}.", "info")
    return back
