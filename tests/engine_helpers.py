"""Running the capture machinery inside a test: listeners in threads, a worker draining the queues."""

from __future__ import annotations

import contextlib
import threading
import time

from rq import SimpleWorker


def drain_queues(app) -> None:
    """Run every queued job now, like a `worker` process would (burst mode, in this thread)."""
    from app.queues import QUEUE_NAMES, queue

    with app.app_context():
        worker = SimpleWorker([queue(name) for name in QUEUE_NAMES], connection=app.extensions["redis"])
        worker.work(burst=True, logging_level="WARNING")


def process_queued_events(app) -> int:
    """Run the queued webhook-event jobs now, as a worker would (only the `events` queue: what they
    queue in turn, captures and notices, stays queued as after a delivery processed inline).
    Returns how many jobs ran."""
    from app.queues import EVENT_QUEUE, queue

    with app.app_context():
        events = queue(EVENT_QUEUE)
        count = events.count
        SimpleWorker([events], connection=app.extensions["redis"]).work(burst=True, logging_level="WARNING")
        return count


def run_event_job_here(app, event_id: str) -> bool | None:
    """Run the event's queued job in this thread (any thread: no RQ worker, whose job timeout needs the
    main thread's signals), as a worker would: the job's own function. None when no job was queued,
    else whether it processed the event (False: its handler failed, RQ would retry it, or another
    attempt held it)."""
    from rq.job import Job

    from app.queues import EVENT_QUEUE, event_job_id, queue
    from app.webhooks.processing import ProcessingFailed, process_event

    with app.app_context():
        events = queue(EVENT_QUEUE)
        if not events.remove(event_job_id(event_id)):
            return None
        Job.fetch(event_job_id(event_id), connection=events.connection).delete()  # taken, as a worker takes it
        try:
            return process_event(event_id)
        except ProcessingFailed:
            return False


def run_event_retries_now(app) -> int:
    """Move the event jobs RQ scheduled for a retry (after a failure) back onto their queue at once."""
    from rq.job import Job
    from rq.registry import ScheduledJobRegistry

    from app.queues import EVENT_QUEUE, queue

    with app.app_context():
        events = queue(EVENT_QUEUE)
        registry = ScheduledJobRegistry(queue=events)
        ids = registry.get_job_ids()
        for job_id in ids:
            registry.remove(job_id)
            events.enqueue_job(Job.fetch(job_id, connection=events.connection))
        return len(ids)


@contextlib.contextmanager
def running_listeners(app, count: int = 1):
    from app.payments.listener import CaptureListener

    listeners = [CaptureListener(app, name=f"test-listener-{i}") for i in range(count)]
    threads = [threading.Thread(target=listener.run, daemon=True) for listener in listeners]
    for thread in threads:
        thread.start()
    try:
        yield listeners
    finally:
        for listener in listeners:
            listener.stop()
        for thread in threads:
            thread.join(timeout=5)


def queued_capture_ids(app) -> list[str]:
    from app.queues import CAPTURE_QUEUE, queue

    with app.app_context():
        return queue(CAPTURE_QUEUE).get_job_ids()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def captures_at_stripe(sim_control, payment_intent_id: str | None = None) -> list[dict]:
    operations = sim_control.ledger()["operations"]
    return [
        op for op in operations
        if op["op"] == "capture" and (payment_intent_id is None or op["payment_intent"] == payment_intent_id)
    ]
