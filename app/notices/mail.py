"""What every email provider takes and answers: the email, its acceptance, and the two ways it can fail."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Email:
    sender: str
    to: str
    subject: str
    text: str
    html: str
    # Names the send (notice key and staff-resend generation): a retry is the same send.
    idempotency_key: str


@dataclass(frozen=True)
class Accepted:
    provider: str
    message_id: str | None
    answer: str  # shown to staff: never a secret, never the body


class MailRejected(Exception):
    """The provider refused the email (4xx): final for this send."""


class MailUnavailable(Exception):
    """The provider did not accept it now (5xx, timeout, rate limit): retry the same send later."""
