"""The delayed-capture payment engine: a Flask application factory."""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from app import errors, security
from app.config import ConfigError, flask_config_from_env
from app.extensions import csrf, db, migrate, redis_ext
from app.log import clean_trace_id, configure_logging, set_trace_id


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app: configuration from the environment, then `config` on top (tests)."""
    configure_logging()
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder="../templates",
        static_folder="../static",
    )
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(flask_config_from_env(app.instance_path))
    if config:
        app.config.update(config)
    if not app.config.get("SECRET_KEY"):
        if app.config.get("DEBUG") or app.config.get("TESTING"):
            app.config["SECRET_KEY"] = "dev-only-not-secret"
        else:
            raise ConfigError("SECRET_KEY must be set (or FLASK_DEBUG=1 for development)")

    hops = app.config["ENGINE"].trusted_proxy_hops
    if hops:
        # Behind Heroku's router (1 hop): the client's address and scheme come from X-Forwarded-*.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)

    from app import models  # noqa: F401  (register every table with the metadata)

    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(__file__), "..", "migrations"))
    redis_ext.init_app(app)
    csrf.init_app(app)
    errors.init_app(app)
    security.init_app(app)
    _init_request_tracing(app)

    from app.payments import stripe_gateway

    stripe_gateway.init_app(app)

    from app.dashboard import bp as dashboard_bp
    from app.health import bp as health_bp
    from app.storefront import bp as storefront_bp
    from app.webhooks import bp as webhooks_bp

    app.register_blueprint(dashboard_bp)
    app.register_blueprint(health_bp)
    from app.openapi import bp as openapi_bp

    app.register_blueprint(openapi_bp)
    app.register_blueprint(storefront_bp)
    app.register_blueprint(webhooks_bp)
    # JSON APIs authenticate by other means (none for the storefront, a signature for Stripe).
    csrf.exempt(storefront_bp)
    csrf.exempt(webhooks_bp)

    from app.payments.capture_intents import on_order_placed
    from app.signals import order_placed

    order_placed.connect(on_order_placed, sender=app, weak=False)

    # What the periodic sweep resolves besides captures: every intermediate state has a way out.
    from app.notices.delivery import requeue_stuck_notices
    from app.payments.janitor import resolve_stuck_cancels
    from app.payments.pending_edits import resolve_pending_edits
    from app.payments.refunds import resolve_stuck_refunds
    from app.payments.sweep import register_janitor
    from app.webhooks.janitor import rerun_stale_events

    register_janitor(app, "cancels", resolve_stuck_cancels)
    register_janitor(app, "refunds", resolve_stuck_refunds)
    register_janitor(app, "events", rerun_stale_events)
    register_janitor(app, "edits", resolve_pending_edits)
    register_janitor(app, "notices", requeue_stuck_notices)

    from app import cli, engine_cli

    cli.init_app(app)
    engine_cli.init_app(app)
    return app


def _init_request_tracing(app: Flask) -> None:
    """A trace id per request (from `X-Request-Id` or fresh), in every log line and the response."""
    import logging

    access_log = logging.getLogger("app.access")

    @app.before_request
    def start_trace() -> None:
        g.trace_id = clean_trace_id(request.headers.get("X-Request-Id"))
        g.trace_token = set_trace_id(g.trace_id)
        g.started = time.perf_counter()

    @app.after_request
    def finish_trace(response):
        trace_id = g.get("trace_id")
        if trace_id:
            response.headers["X-Request-Id"] = trace_id
            access_log.info(
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round((time.perf_counter() - g.started) * 1000, 2),
                },
            )
        return response

    @app.teardown_request
    def end_trace(exc: BaseException | None) -> None:
        set_trace_id(None)
