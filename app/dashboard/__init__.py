"""Staff dashboard (server-rendered HTML, login required)."""

from flask import Blueprint

bp = Blueprint("dashboard", __name__, url_prefix="/admin")

from app.dashboard import views  # noqa: E402,F401
