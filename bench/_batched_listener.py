"""What-if for capture_lag.py --what-if: the listener with batched enqueues (NOT the app's code).

    python bench/_batched_listener.py        (the app's environment variables, like `flask capture-listener`)

The app's `CaptureListener` handles one `expired` message per loop turn, and each `enqueue_capture`
costs two Redis round trips (a MULTI/EXEC for SADD rq:queues, then the EVALSHA of RQ's unique-enqueue
script) plus building the job in Python. This subclass drains every message already buffered (up to
1000) and sends their unique-enqueue scripts in ONE pipeline; a job id that already exists (the script
answered 0) falls back to the app's own `enqueue_capture`, which clears a finished or failed earlier
job exactly as today. The touching of due keys, heartbeats and catch-up are unchanged.
It is the fix proposed in docs/performance.md, measured without touching `app/`.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rq.job import JobStatus  # noqa: E402
from rq.scripts import _build_hset_args, get_unique_enqueue_script  # noqa: E402

from app import create_app  # noqa: E402
from app.log import new_trace_id, trace  # noqa: E402
from app.payments import listener as listener_module  # noqa: E402
from app.payments.capture_intents import order_id_from_key  # noqa: E402
from app.payments.listener import CaptureListener  # noqa: E402
from app.queues import (  # noqa: E402
    CAPTURE_JOB_TIMEOUT,
    CAPTURE_QUEUE,
    CAPTURE_RETRY,
    FAILED_JOB_TTL,
    capture_job_id,
    enqueue_capture,
    queue,
)

MAX_BATCH = 1000


class BatchingListener(CaptureListener):
    def _listen_once(self) -> None:
        listener_module.ensure_expired_events(self.redis)
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            self.catch_up()
            next_heartbeat = next_touch = 0.0
            while not self.stop_event.is_set():
                message = pubsub.get_message(timeout=listener_module.TOUCH_INTERVAL)
                batch: list[str] = []
                while message is not None and len(batch) < MAX_BATCH:
                    key = message.get("data")
                    order_id = order_id_from_key(key.decode() if isinstance(key, bytes) else (key or ""))
                    if order_id:
                        batch.append(order_id)
                    message = pubsub.get_message(timeout=0)  # only what is already buffered
                if message is not None:  # the one read past a full batch
                    key = message.get("data")
                    order_id = order_id_from_key(key.decode() if isinstance(key, bytes) else (key or ""))
                    if order_id:
                        batch.append(order_id)
                if batch:
                    self._enqueue_batch(batch, "expiry")
                now = time.monotonic()
                if now >= next_touch:
                    self.intents.expire_due_keys(int(time.time() * 1000))
                    next_touch = now + listener_module.TOUCH_INTERVAL
                if now >= next_heartbeat:
                    self.redis.hset(listener_module.HEARTBEAT_KEY, self.name, f"{time.time():.3f}")
                    next_heartbeat = now + listener_module.HEARTBEAT_INTERVAL
        finally:
            try:
                pubsub.close()
            except Exception:
                pass

    def _enqueue_batch(self, order_ids: list[str], trigger: str) -> None:
        from app.jobs import capture_order_job

        with self.app.app_context():
            captures = queue(CAPTURE_QUEUE)
            script = get_unique_enqueue_script(captures.connection)
            pipe = captures.connection.pipeline(transaction=False)
            pipe.sadd(captures.redis_queues_keys, captures.key)
            traces = []
            for order_id in order_ids:
                trace_id = new_trace_id()  # one trace per expiry, as the app's listener does
                traces.append(trace_id)
                job = captures.create_job(
                    capture_order_job, args=(order_id, trigger), job_id=capture_job_id(order_id),
                    retry=CAPTURE_RETRY, timeout=CAPTURE_JOB_TIMEOUT, result_ttl=0, failure_ttl=FAILED_JOB_TTL,
                    meta={"trace_id": trace_id}, description=f"capture order {order_id} ({trigger})",
                    status=JobStatus.QUEUED,
                )
                captures._prepare_for_queue(job)
                ttl = job.ttl if job.ttl is not None else -1
                script(keys=[job.key, captures.key], args=[job.id, "R", ttl] + _build_hset_args(job), client=pipe)
            results = pipe.execute()[1:]
            for order_id, trace_id, created in zip(order_ids, traces, results):
                with trace(trace_id):
                    if created:
                        self.enqueued += 1
                        listener_module.log.info("capture enqueued", extra={"order_id": order_id, "trigger": trigger})
                    elif enqueue_capture(order_id, trigger):  # an earlier job holds the id: the app's slow path
                        self.enqueued += 1


def main() -> int:
    app = create_app()
    listener = BatchingListener(app)
    signal.signal(signal.SIGTERM, lambda *_: listener.stop())
    signal.signal(signal.SIGINT, lambda *_: listener.stop())
    listener.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
