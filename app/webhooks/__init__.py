"""Stripe webhooks: verify the raw body, store the event once, dispatch it."""

from app.webhooks.routes import bp

__all__ = ["bp"]
