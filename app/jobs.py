"""RQ job functions: ids in, exceptions out (RQ records and retries them).

Enqueued by dotted path (`app.queues.CAPTURE_JOB`, `SWEEP_JOB`, `RECONCILE_JOB`, `NOTICE_JOB`, `EVENT_JOB`), so the queues
module never imports this one. Each job runs in a fresh app context (its own database session) of
the app the worker process runs in (`flask --app wsgi worker`), under the trace id of the request
or event that caused it.
"""

from __future__ import annotations

from flask import Flask, current_app, has_app_context
from rq import get_current_job

from app.log import trace
from app.notices.delivery import send_notice
from app.payments.capture import capture_order
from app.payments.sweep import sweep
from app.webhooks.processing import process_event
from app.webhooks.reconciliation import reconcile


def _job_app() -> Flask:
    if not has_app_context():
        raise RuntimeError("engine jobs run in an app's worker: start it with `flask --app wsgi worker`")
    return current_app._get_current_object()


def _trace_id() -> str | None:
    job = get_current_job()
    return (job.meta or {}).get("trace_id") if job is not None else None


def capture_order_job(order_id: str, trigger: str) -> str:
    """Capture the order's payment if its grace period is over (exactly once)."""
    with _job_app().app_context(), trace(_trace_id()):
        return capture_order(order_id, trigger=trigger)


def sweep_job() -> dict:
    """The fallback sweep, as run by rq-scheduler."""
    with _job_app().app_context(), trace(_trace_id()):
        return sweep().as_dict()


def reconcile_job() -> dict:
    """Reconciliation with Stripe's event list, as run by rq-scheduler."""
    with _job_app().app_context(), trace(_trace_id()):
        return reconcile().as_dict()


def send_notice_job(notice_id: str) -> str:
    """Send one customer notice (exactly once per provider idempotency key); raises to be retried."""
    with _job_app().app_context(), trace(_trace_id()):
        return send_notice(notice_id)


def process_event_job(event_id: str) -> str:
    """Run a stored webhook event's handler (the row's claim makes it once); raises to be retried."""
    with _job_app().app_context(), trace(_trace_id()):
        return "processed" if process_event(event_id) else "not processed: done already or held by another attempt"
