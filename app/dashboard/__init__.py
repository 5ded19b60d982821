"""Staff dashboard (server-rendered HTML, login required)."""

from app.dashboard.views import bp

__all__ = ["bp"]
