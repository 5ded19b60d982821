"""The engine's processes and tools: `flask worker`, `flask scheduler`, `flask capture-listener`, `flask sweep`."""

from __future__ import annotations

import logging
import signal
from datetime import datetime, timezone

import click
from flask import Flask, current_app

log = logging.getLogger(__name__)

SWEEP_JOB_ID = "periodic-fallback-sweep"


def register_periodic_sweep(scheduler, interval: int) -> bool:
    """Schedule the sweep under a stable id; a restart or a second scheduler never adds a second one.

    Returns True when the schedule was (re)created. An existing schedule with another interval
    is replaced, so changing FALLBACK_SWEEP_INTERVAL_SECONDS takes effect on restart.
    """
    from app.queues import SWEEP_JOB

    for job in scheduler.get_jobs():
        if job.id == SWEEP_JOB_ID:
            if job.meta.get("interval") == interval:
                return False
            scheduler.cancel(job)
            job.delete()
    scheduler.schedule(
        scheduled_time=datetime.now(timezone.utc),
        func=SWEEP_JOB,
        interval=interval,
        repeat=None,
        id=SWEEP_JOB_ID,
        queue_name="default",
        timeout=600,
        result_ttl=interval * 2,
        meta={"interval": interval},
    )
    return True


def engine_scheduler(connection, sweep_interval: int, poll_interval: int = 5):
    """rq-scheduler that puts the sweep back if Redis lost its schedule (a restart, a flush)."""
    from rq_scheduler import Scheduler

    class EngineScheduler(Scheduler):
        def enqueue_jobs(self):
            # Runs under rq-scheduler's lock, so only the active copy re-registers.
            if SWEEP_JOB_ID not in self:
                register_periodic_sweep(self, sweep_interval)
                log.warning("fallback sweep was not scheduled (Redis lost it?): scheduled again")
            return super().enqueue_jobs()

    return EngineScheduler(queue_name="default", connection=connection, interval=poll_interval)


def engine_worker(queues, connection):
    """RQ's SimpleWorker (no fork per job, so captures drain fast; SIGTERM still finishes the current
    job) that registers itself again when Redis has lost its data (a restart without persistence):
    RQ's own worker only refreshes the TTL of a key that is gone, and drops off `rq:workers`, the
    list the dashboard counts, until it is restarted."""
    from rq import SimpleWorker

    class EngineWorker(SimpleWorker):
        def heartbeat(self, timeout=None, pipeline=None):
            if pipeline is None and not self.connection.exists(self.key):
                self.log.warning("Worker %s: registration lost (Redis restarted?); registering again", self.name)
                self.register_birth()
            super().heartbeat(timeout, pipeline)

    return EngineWorker(queues, connection=connection)


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

    @app.cli.command("worker")
    @click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
    def worker_command(burst: bool) -> None:
        """Run an RQ worker for the capture and default queues (the `worker` process)."""
        from app.queues import QUEUE_NAMES, queue

        connection = current_app.extensions["redis"]
        worker = engine_worker([queue(name) for name in QUEUE_NAMES], connection)
        worker.work(burst=burst, with_scheduler=True, logging_level="INFO")

    @app.cli.command("scheduler")
    @click.option("--burst", is_flag=True, help="Enqueue what is due once, then stop.")
    def scheduler_command(burst: bool) -> None:
        """Run rq-scheduler with the periodic fallback sweep (the `scheduler` process)."""
        settings = current_app.config["ENGINE"]
        scheduler = engine_scheduler(current_app.extensions["redis"], settings.fallback_sweep_interval_seconds)
        if register_periodic_sweep(scheduler, settings.fallback_sweep_interval_seconds):
            log.info("fallback sweep scheduled", extra={"interval": settings.fallback_sweep_interval_seconds})
        # rq-scheduler holds a lock in Redis: a second copy waits instead of enqueuing twice.
        scheduler.run(burst=burst)
