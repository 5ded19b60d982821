"""`GET /health`: really asks the database and Redis."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify
from sqlalchemy import text

from app.extensions import db, get_redis

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/health")
def health():
    """Report whether the database and Redis answer."""
    result = {"status": "ok", "database": "ok", "redis": "ok"}
    try:
        db.session.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the database is "down"
        log.warning("health: database unreachable", extra={"error": str(exc)})
        result["database"] = "unavailable"
        db.session.rollback()
    try:
        get_redis().ping()
    except Exception as exc:  # including REDIS_URL not configured
        log.warning("health: redis unreachable", extra={"error": str(exc)})
        result["redis"] = "unavailable"
    healthy = result["database"] == "ok" and result["redis"] == "ok"
    if not healthy:
        result["status"] = "unavailable"
    return jsonify(result), 200 if healthy else 503
