"""The engine's processes and tools: `flask worker`, `flask scheduler`, `flask capture-listener`, `flask sweep`,
`flask reconcile`."""

from __future__ import annotations

import logging
import signal
from datetime import datetime, timezone

import click
from flask import Flask, current_app

from app.extensions import db
from app.models.base import isoformat

log = logging.getLogger(__name__)

SWEEP_JOB_ID = "periodic-fallback-sweep"
RECONCILE_JOB_ID = "periodic-reconcile"
# Listing 30 days of events after a long outage takes many pages; an hourly run lists one hour's.
RECONCILE_JOB_TIMEOUT = 1800


def _register_periodic(scheduler, job_id: str, func: str, interval: int, timeout: int) -> bool:
    """Schedule `func` (a dotted path) under a stable id; a restart or a second scheduler never adds a second one.

    Returns True when the schedule was (re)created. An existing schedule with another interval
    is replaced, so a changed interval setting takes effect on restart.
    """
    for job in scheduler.get_jobs():
        if job.id == job_id:
            if job.meta.get("interval") == interval:
                return False
            scheduler.cancel(job)
            job.delete()
    scheduler.schedule(
        scheduled_time=datetime.now(timezone.utc),
        func=func,
        interval=interval,
        repeat=None,
        id=job_id,
        queue_name="default",
        timeout=timeout,
        result_ttl=interval * 2,
        meta={"interval": interval},
    )
    return True


def register_periodic_sweep(scheduler, interval: int) -> bool:
    """The fallback sweep every FALLBACK_SWEEP_INTERVAL_SECONDS, under `periodic-fallback-sweep`."""
    from app.queues import SWEEP_JOB

    return _register_periodic(scheduler, SWEEP_JOB_ID, SWEEP_JOB, interval, timeout=600)


def register_periodic_reconcile(scheduler, interval: int) -> bool:
    """Reconciliation with Stripe's event list every RECONCILE_INTERVAL_SECONDS, under `periodic-reconcile`."""
    from app.queues import RECONCILE_JOB

    return _register_periodic(scheduler, RECONCILE_JOB_ID, RECONCILE_JOB, interval, timeout=RECONCILE_JOB_TIMEOUT)


def engine_scheduler(connection, sweep_interval: int, reconcile_interval: int, poll_interval: int = 5):
    """rq-scheduler that puts its periodic jobs back if Redis lost its schedule (a restart, a flush)."""
    from rq_scheduler import Scheduler

    class EngineScheduler(Scheduler):
        def enqueue_jobs(self):
            # Runs under rq-scheduler's lock, so only the active copy re-registers.
            if SWEEP_JOB_ID not in self:
                register_periodic_sweep(self, sweep_interval)
                log.warning("fallback sweep was not scheduled (Redis lost it?): scheduled again")
            if RECONCILE_JOB_ID not in self:
                register_periodic_reconcile(self, reconcile_interval)
                log.warning("reconciliation was not scheduled (Redis lost it?): scheduled again")
            return super().enqueue_jobs()

    return EngineScheduler(queue_name="default", connection=connection, interval=poll_interval)


def engine_worker_class(*, forked: bool = False):
    """RQ's SimpleWorker (no fork per job, so captures drain fast; SIGTERM still finishes the current
    job) that registers itself again when Redis has lost its data (a restart without persistence):
    RQ's own worker only refreshes the TTL of a key that is gone, and drops off `rq:workers`, the
    list the dashboard counts, until it is restarted."""
    from rq import SimpleWorker

    class EngineWorker(SimpleWorker):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if forked:
                # A worker of a pool is a forked process: the database connections it inherited
                # belong to the parent, so it opens its own (SQLAlchemy's documented way after a fork).
                db.engine.dispose(close=False)

        def heartbeat(self, timeout=None, pipeline=None):
            if pipeline is None and not self.connection.exists(self.key):
                self.log.warning("Worker %s: registration lost (Redis restarted?); registering again", self.name)
                self.register_birth()
            super().heartbeat(timeout, pipeline)

    return EngineWorker


def engine_worker(queues, connection):
    return engine_worker_class()(queues, connection=connection)


def _iso_time(ctx, param, value: str | None) -> datetime | None:
    """`2026-12-01T10:00:00Z`, `2026-12-01T12:00+02:00`, `2026-12-01`: UTC unless it names a zone."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("not an ISO 8601 time (e.g. 2026-12-01T10:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def init_app(app: Flask) -> None:
    @app.cli.command("capture-listener")
    def capture_listener_command() -> None:
        """Enqueue captures on capture-intent expiry (the `listener` process)."""
        from app.payments.listener import CaptureListener

        listener = CaptureListener(current_app._get_current_object())

        def stop(signum, frame):
            log.info("listener stopping", extra={"signal": signum})
            listener.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        listener.run()

    @app.cli.command("sweep")
    def sweep_command() -> None:
        """Run one fallback sweep now; prints how many captures it enqueued."""
        from app.payments.sweep import sweep

        result = sweep()
        resolved = ", ".join(f"{count} {name}" for name, count in result.resolved.items() if count)
        click.echo(
            f"enqueued {result.enqueued} capture(s) "
            f"(recovered {result.recovered} stuck, re-armed {result.rearmed} grace period(s)"
            + (f"; resolved {resolved}" if resolved else "") + ")"
        )

    @app.cli.command("reconcile")
    @click.option("--since", callback=_iso_time, default=None, metavar="ISO_TIME",
                  help="List events created since then (UTC unless it names a zone) instead of since the last run; "
                       "at most 30 days back.")
    def reconcile_command(since: datetime | None) -> None:
        """Process the Stripe events this engine never received; prints how many it found and processed."""
        from app.payments.provider_errors import PaymentProviderError
        from app.webhooks.reconciliation import reconcile

        try:
            result = reconcile(since)
        except PaymentProviderError as exc:
            # Nothing is recorded: the next run lists the same window again.
            raise click.ClickException(f"could not list Stripe's events: {exc}") from None
        click.echo(
            f"found {result.found} event(s) since {isoformat(result.since)}: "
            f"{result.new} new, {result.processed} processed, {result.failed} failed"
        )

    @app.cli.command("worker")
    @click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
    def worker_command(burst: bool) -> None:
        """Run an RQ worker for the capture, events and default queues (the `worker` process)."""
        from app.queues import QUEUE_NAMES, queue

        connection = current_app.extensions["redis"]
        concurrency = current_app.config["ENGINE"].worker_concurrency
        if concurrency == 1:
            worker = engine_worker([queue(name) for name in QUEUE_NAMES], connection)
            worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
            return
        # Capture jobs mostly wait (PostgreSQL, Redis, Stripe: ~0.3-1 s per real capture), so one
        # process running one job at a time cannot use a Stripe budget of 100 requests/s. RQ's
        # WorkerPool forks `concurrency` workers (this app context included) and restarts any that dies.
        from rq.worker_pool import WorkerPool

        pool = WorkerPool(list(QUEUE_NAMES), connection=connection, num_workers=concurrency,
                          worker_class=engine_worker_class(forked=True))
        pool.start(burst=burst, logging_level="INFO")

    @app.cli.command("scheduler")
    @click.option("--burst", is_flag=True, help="Enqueue what is due once, then stop.")
    def scheduler_command(burst: bool) -> None:
        """Run rq-scheduler with the periodic sweep and reconciliation (the `scheduler` process)."""
        settings = current_app.config["ENGINE"]
        sweep_interval, reconcile_interval = settings.fallback_sweep_interval_seconds, settings.reconcile_interval_seconds
        scheduler = engine_scheduler(current_app.extensions["redis"], sweep_interval, reconcile_interval)
        if register_periodic_sweep(scheduler, sweep_interval):
            log.info("fallback sweep scheduled", extra={"interval": sweep_interval})
        if register_periodic_reconcile(scheduler, reconcile_interval):
            log.info("reconciliation scheduled", extra={"interval": reconcile_interval})
        # rq-scheduler holds a lock in Redis: a second copy waits instead of enqueuing twice.
        scheduler.run(burst=burst)
