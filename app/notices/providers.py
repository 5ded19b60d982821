"""The one small interface every email provider implements, and the choice of provider.

`send(email)` returns `Accepted` or raises `MailRejected` (the provider refused this email: a
4xx; retrying would be refused again, so it is recorded for staff) or `MailUnavailable` (a 5xx,
a timeout, a rate limit: the send job retries under the same idempotency key).
Without `RESEND_API_KEY` or `SMTP_URL` the outbox is the only record and nothing leaves the machine.
"""

from __future__ import annotations

from typing import Protocol

from app.config import Settings
from app.notices.mail import Accepted, Email


class Provider(Protocol):
    name: str

    def send(self, email: Email) -> Accepted: ...


class OutboxOnly:
    """No provider configured (`make run`, the tests): the notice row is the record."""

    name = "outbox"

    def send(self, email: Email) -> Accepted:
        return Accepted(self.name, None, "kept in the outbox: no email provider configured")


def provider_for(settings: Settings) -> Provider:
    """Resend when `RESEND_API_KEY` is set, else SMTP when `SMTP_URL` is, else the outbox only."""
    if settings.resend_api_key:
        from app.notices.resend_provider import ResendProvider

        return ResendProvider(settings.resend_api_key, settings.resend_api_base)
    if settings.smtp_url:
        from app.notices.smtp_provider import SmtpProvider

        return SmtpProvider(settings.smtp_url)
    return OutboxOnly()
