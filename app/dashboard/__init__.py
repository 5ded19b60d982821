"""Staff dashboard (server-rendered HTML, login required)."""

from app.dashboard import notice_views  # noqa: F401  (its routes on the same blueprint)
from app.dashboard.views import bp

__all__ = ["bp"]
