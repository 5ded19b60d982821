"""Resend through its official SDK (`resend`); the only module importing it.

The SDK is configured through its module attributes (`api_key`, `api_url`,
`default_http_client`); sends happen one at a time in a worker, so setting them per send is safe.
`Idempotency-Key` is the email's key: Resend answers a retried send (after a timeout or a lost
answer) with the first send's result instead of sending again, for 24 hours.
"""

from __future__ import annotations

import resend
from resend.exceptions import ResendError

from app.notices.mail import Accepted, Email, MailRejected, MailUnavailable

DEFAULT_API_URL = "https://api.resend.com"
TIMEOUT_SECONDS = 15
# 4xx answers that mean "not now" rather than "never": a rate limit, a quota, or the same key
# still being processed by an earlier attempt.
_TRANSIENT_TYPES = {"rate_limit_exceeded", "concurrent_idempotent_requests"}


class ResendProvider:
    name = "resend"

    def __init__(self, api_key: str, api_url: str | None = None) -> None:
        self._api_key = api_key
        self._api_url = (api_url or DEFAULT_API_URL).rstrip("/")

    def send(self, email: Email) -> Accepted:
        resend.api_key = self._api_key
        resend.api_url = self._api_url
        resend.default_http_client = resend.RequestsClient(timeout=TIMEOUT_SECONDS)
        params: resend.Emails.SendParams = {
            "from": email.sender, "to": [email.to], "subject": email.subject, "text": email.text, "html": email.html,
        }
        try:
            answer = resend.Emails.send(params, {"idempotency_key": email.idempotency_key})
        except ResendError as exc:
            status = _status(exc.code)
            message = f"{status} {exc.error_type}: {exc.message}"[:500]
            if 400 <= status < 500 and exc.error_type not in _TRANSIENT_TYPES and status != 429:
                raise MailRejected(message) from None
            raise MailUnavailable(message) from None  # 5xx, and the SDK's own 500 for a timeout
        message_id = answer.get("id")
        return Accepted(self.name, message_id, f"accepted by Resend as {message_id}")


def _status(code) -> int:
    try:
        return int(code)
    except (TypeError, ValueError):
        return 500
