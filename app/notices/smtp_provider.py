"""SMTP through the standard library: `smtp://user:pass@host:port` (STARTTLS when offered), `smtps://` (TLS).

SMTP has no idempotency key; the notice key is the `Message-ID`, so a retry after a lost answer
can be recognised as the same message, and the claim on the notice row keeps two jobs from
sending it at once.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from hashlib import sha256
from urllib.parse import unquote, urlsplit

from app.notices.mail import Accepted, Email, MailRejected, MailUnavailable

TIMEOUT_SECONDS = 15


class SmtpProvider:
    name = "smtp"

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://user:pass@host:port or smtps://...")
        self._tls = parts.scheme == "smtps"
        self._host = parts.hostname
        self._port = parts.port or (465 if self._tls else 587)
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None

    def _message(self, email: Email) -> EmailMessage:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = email.sender, email.to, email.subject
        message["Date"] = formatdate(usegmt=True)
        domain = email.sender.rpartition("@")[2].strip(">") or "localhost"
        message["Message-ID"] = f"<{sha256(email.idempotency_key.encode()).hexdigest()[:32]}@{domain}>"
        message.set_content(email.text)
        message.add_alternative(email.html, subtype="html")
        return message

    def send(self, email: Email) -> Accepted:
        message = self._message(email)
        try:
            if self._tls:
                client = smtplib.SMTP_SSL(self._host, self._port, timeout=TIMEOUT_SECONDS,
                                          context=ssl.create_default_context())
            else:
                client = smtplib.SMTP(self._host, self._port, timeout=TIMEOUT_SECONDS)
            with client:
                if not self._tls and client.has_extn("starttls"):
                    client.starttls(context=ssl.create_default_context())
                if self._user:
                    client.login(self._user, self._password or "")
                refused = client.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            raise _refusal(exc.recipients) from None
        except smtplib.SMTPResponseException as exc:
            text = f"{exc.smtp_code} {_decode(exc.smtp_error)}"[:500]
            if 500 <= exc.smtp_code < 600:  # SMTP's permanent failures (its 4xx are "try later")
                raise MailRejected(text) from None
            raise MailUnavailable(text) from None
        except (smtplib.SMTPException, OSError, socket.timeout) as exc:
            raise MailUnavailable(f"SMTP server unavailable: {type(exc).__name__}") from None
        if refused:
            raise _refusal(refused)
        return Accepted(self.name, message["Message-ID"], f"accepted by {self._host} as {message['Message-ID']}")


def _decode(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _refusal(recipients: dict) -> Exception:
    """A 5xx reply to RCPT is final; a 4xx one (mailbox busy, greylisting) is worth a retry."""
    code, reply = next(iter(recipients.values()))
    text = f"{code} {_decode(reply)}"[:500]
    return MailRejected(text) if 500 <= code < 600 else MailUnavailable(text)
