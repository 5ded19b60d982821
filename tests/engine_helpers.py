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
