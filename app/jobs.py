"""RQ job functions: ids in, exceptions out (RQ records and retries them).

Each job runs in a fresh app context (its own database session) under the trace id of the
request or event that caused it.
"""

from __future__ import annotations

from flask import Flask, current_app, has_app_context
from rq import get_current_job

from app.log import trace

_app: Flask | None = None


def _job_app() -> Flask:
    global _app
    if has_app_context():
        return current_app._get_current_object()
    if _app is None:
        from app import create_app

        _app = create_app()
    return _app


def _trace_id() -> str | None:
    job = get_current_job()
    return (job.meta or {}).get("trace_id") if job is not None else None


def capture_order_job(order_id: str, trigger: str) -> str:
    """Capture the order's payment if its grace period is over (exactly once)."""
    from app.payments.capture import capture_order

    with _job_app().app_context(), trace(_trace_id()):
        return capture_order(order_id, trigger=trigger)


def sweep_job() -> dict:
    """The fallback sweep, as run by rq-scheduler."""
    from app.payments.sweep import sweep

    with _job_app().app_context(), trace(_trace_id()):
        return sweep().as_dict()
