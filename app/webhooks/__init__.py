"""Stripe webhooks: verify the raw body, store the event once, dispatch it."""

from flask import Blueprint

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

from app.webhooks import routes  # noqa: E402,F401
