"""Configuration, read from the environment once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


class ConfigError(RuntimeError):
    """A required setting is missing or malformed."""


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


def _int_between(name: str, default: int, low: int, high: int, why: str) -> int:
    value = _int(name, default)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high} ({why}), got {value}")
    return value


# An authorization must still be valid when the grace period ends: 5 days, well inside the 7 days
# Stripe keeps most online card authorizations (`capture_before`).
MAX_GRACE_PERIOD_SECONDS = 432_000

# A pooled PostgreSQL connection is replaced once this old (below the idle timeouts of the usual
# firewalls, NATs and proxies, so none of them has dropped it silently).
POOL_RECYCLE_SECONDS = 1800


def database_url_from_env(instance_path: str) -> str:
    """`DATABASE_URL`, with Heroku's `postgres://` meaning PostgreSQL via psycopg 3."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        return "sqlite:///" + os.path.join(instance_path, "payments.sqlite3")
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@dataclass(frozen=True)
class Settings:
    """The engine's own settings (Flask's own keys live in app.config)."""

    redis_url: str | None
    stripe_secret_key: str | None
    stripe_webhook_secret: str | None
    stripe_api_base: str | None
    grace_period_seconds: int
    fallback_capture_after_seconds: int
    fallback_sweep_interval_seconds: int
    reconcile_interval_seconds: int
    stripe_max_network_retries: int
    stripe_timeout_seconds: int
    cors_origins: tuple[str, ...]
    trusted_proxy_hops: int
    stripe_max_requests_per_second: int
    stuck_operation_seconds: int = 300
    worker_concurrency: int = 1  # RQ workers one `worker` process runs (an RQ WorkerPool when above 1)
    # Customer notices (app/notices): without a Resend key or an SMTP URL nothing leaves the machine.
    resend_api_key: str | None = field(default=None, repr=False)
    resend_api_base: str | None = None  # Resend's API base URL (a local stand-in in the tests)
    smtp_url: str | None = field(default=None, repr=False)  # smtp://user:pass@host:port or smtps://...
    mail_from: str = "orders@localhost"
    storefront_order_url: str | None = None  # the customer's order page, `{order_id}` replaced

    @classmethod
    def from_env(cls) -> "Settings":
        smtp_url = os.environ.get("SMTP_URL") or None
        if smtp_url and not smtp_url.startswith(("smtp://", "smtps://")):
            raise ConfigError("SMTP_URL must look like smtp://user:pass@host:port or smtps://user:pass@host:port")
        origins = tuple(o.strip() for o in os.environ.get("CORS_ORIGINS", "").split(",") if o.strip())
        return cls(
            redis_url=os.environ.get("REDIS_URL") or None,
            stripe_secret_key=os.environ.get("STRIPE_SECRET_KEY") or None,
            stripe_webhook_secret=os.environ.get("STRIPE_WEBHOOK_SECRET") or None,
            stripe_api_base=os.environ.get("STRIPE_API_BASE") or None,
            grace_period_seconds=_int_between("GRACE_PERIOD_SECONDS", 3600, 1, MAX_GRACE_PERIOD_SECONDS,
                                              "an authorization must still be valid when it ends"),
            fallback_capture_after_seconds=_int("FALLBACK_CAPTURE_AFTER_SECONDS", 3900),
            fallback_sweep_interval_seconds=_int("FALLBACK_SWEEP_INTERVAL_SECONDS", 300),
            reconcile_interval_seconds=_int("RECONCILE_INTERVAL_SECONDS", 3600),
            stripe_max_network_retries=_int("STRIPE_MAX_NETWORK_RETRIES", 2),
            stripe_timeout_seconds=_int("STRIPE_TIMEOUT_SECONDS", 20),
            cors_origins=origins,
            trusted_proxy_hops=_int("TRUSTED_PROXY_HOPS", 0),
            stripe_max_requests_per_second=_int("STRIPE_MAX_REQUESTS_PER_SECOND", 0),
            stuck_operation_seconds=_int_between("STUCK_OPERATION_SECONDS", 300, 1, 86_400,
                                                 "how long a cancel, refund or event may stay in flight"),
            worker_concurrency=_int_between("WORKER_CONCURRENCY", 1, 1, 32,
                                            "RQ workers per worker process, each a forked process"),
            resend_api_key=os.environ.get("RESEND_API_KEY") or None,
            resend_api_base=os.environ.get("RESEND_API_BASE") or None,
            smtp_url=smtp_url,
            mail_from=os.environ.get("MAIL_FROM") or "orders@localhost",
            storefront_order_url=os.environ.get("STOREFRONT_ORDER_URL") or None,
        )


def flask_config_from_env(instance_path: str) -> dict:
    """Flask and Flask-SQLAlchemy keys derived from the environment."""
    debug = os.environ.get("FLASK_DEBUG") == "1"
    secret_key = os.environ.get("SECRET_KEY")
    database_url = database_url_from_env(instance_path)
    # No `pool_pre_ping`: it cost a round trip at every connection checkout, i.e. at every transaction
    # (5 of a checkout's 55). Instead a connection the server has closed (a restart, a terminated
    # backend, an idle timeout) is replaced at checkout without a round trip (`app.extensions.
    # _replace_closed_connection`), one older than `pool_recycle` is replaced before use (a firewall
    # or proxy may drop idle connections silently), and a disconnect met mid-request is SQLAlchemy's
    # optimistic handling: that request fails, and every connection of the pool is replaced.
    engine_options: dict = {"pool_recycle": POOL_RECYCLE_SECONDS}
    if database_url.startswith("sqlite"):
        # Several processes (web, worker, listener) share the file: wait for locks.
        engine_options = {"connect_args": {"timeout": 30}}
    return {
        "SECRET_KEY": secret_key,
        "DEBUG": debug,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options,
        # The ceiling for any body (Stripe events can be tens of KB); the storefront allows less.
        "MAX_CONTENT_LENGTH": 256 * 1024,
        "JSON_SORT_KEYS": False,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": not debug,
        "ENGINE": Settings.from_env(),
    }
