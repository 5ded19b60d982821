"""What a notice says: subject, plain-text and HTML bodies from `templates/email/`.

The facts come from the row's `context` (as they were when the change committed); amounts are
formatted in the order's currency with its own decimals (`app.money`), times in UTC with the
offset spelled out. Nothing secret is in a context (no client secret, no key), so nothing secret
can reach an email.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from flask import current_app

from app.models import Notice, NoticeKind
from app.money import format_amount

SUBJECTS = {
    NoticeKind.ORDER_PLACED: "Order #{display_id} received: you can change it until {deadline}",
    NoticeKind.ORDER_EDITED: "Order #{display_id} changed",
    NoticeKind.PAYMENT_REQUIRED: "Order #{display_id}: {amount_due} to pay for your change",
    NoticeKind.ORDER_CANCELED: "Order #{display_id} canceled",
    NoticeKind.PAYMENT_CAPTURED: "Receipt for order #{display_id}",
    NoticeKind.REFUND_ISSUED: "Order #{display_id}: {amount} refunded",
}


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def utc_text(value: str | None) -> str:
    """`2026-12-03T19:54:00Z` → `Thursday 3 December 2026, 19:54 UTC (UTC+00:00)`."""
    if not value:
        return ""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)
    return f"{moment:%A} {moment.day} {moment:%B %Y, %H:%M} UTC (UTC+00:00)"


def render(notice: Notice) -> Rendered:
    context = dict(notice.context)
    currency = context["currency"]

    def money(amount: int) -> str:
        return format_amount(int(amount), currency)

    deadline = context.get("editable_until") or context.get("expires_at")
    subject = SUBJECTS[notice.kind].format(
        display_id=context.get("display_id"),
        deadline=utc_text(deadline),
        amount_due=money(context.get("amount_due", 0)),
        amount=money(context.get("amount", 0)),
    )
    values = {**context, "subject": subject, "money": money, "utc": utc_text, "kind": notice.kind}
    env = current_app.jinja_env  # autoescapes `.html` templates, not `.txt` ones
    return Rendered(
        subject=subject,
        text=env.get_template(f"email/{notice.kind}.txt").render(values),
        html=env.get_template(f"email/{notice.kind}.html").render(values),
    )
