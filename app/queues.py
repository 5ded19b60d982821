"""RQ queues on the app's Redis, and the one way to enqueue a capture.

Jobs are named by their dotted path (`CAPTURE_JOB`, `SWEEP_JOB`, `RECONCILE_JOB`): RQ imports the
function in the worker, so this module, which the use cases call, never imports the jobs that call
the use cases.
RQ is reached through its public API only; the listener's batched unique enqueue is this module's
own Lua script (`UNIQUE_ENQUEUE_SCRIPT`), fed by `Job.to_dict()`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from flask import current_app
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus

from app.log import current_trace_id, new_trace_id, trace

log = logging.getLogger(__name__)

CAPTURE_JOB = "app.jobs.capture_order_job"
SWEEP_JOB = "app.jobs.sweep_job"
RECONCILE_JOB = "app.jobs.reconcile_job"
NOTICE_JOB = "app.jobs.send_notice_job"
EVENT_JOB = "app.jobs.process_event_job"

CAPTURE_QUEUE = "captures"
DEFAULT_QUEUE = "default"
EVENT_QUEUE = "events"
QUEUE_NAMES = (CAPTURE_QUEUE, EVENT_QUEUE, DEFAULT_QUEUE)  # a worker takes them in this order

# Stripe rate limits and outages: the same job (and so the same idempotency key) again later.
CAPTURE_RETRY = Retry(max=6, interval=[5, 15, 60, 180, 600, 1800])
CAPTURE_JOB_TIMEOUT = 120
FAILED_JOB_TTL = 7 * 24 * 3600
# A provider outage (5xx, timeout): the same notice, under the same idempotency key, later.
NOTICE_RETRY = Retry(max=4, interval=[30, 120, 600, 1800])
NOTICE_JOB_TIMEOUT = 60
# A handler that failed (Stripe unreachable, a lock timeout): the same event again later, then the sweep.
EVENT_RETRY = Retry(max=5, interval=[10, 60, 300, 900, 1800])
EVENT_JOB_TIMEOUT = 120
# A job popped from the queue but not marked started after this long lost its worker.
STALE_STARTED_JOB = timedelta(seconds=30)
_FINISHED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


def queue(name: str = CAPTURE_QUEUE) -> Queue:
    return Queue(name, connection=current_app.extensions["redis"])


def capture_job_id(order_id: str) -> str:
    """`capture-{order_id}`: the design's `capture:{order_id}`, spelled as RQ 2 allows job ids ([A-Za-z0-9_-])."""
    return f"capture-{order_id}"


def _will_never_run(job: Job, status: JobStatus | None, captures: Queue) -> bool:
    """A job that holds the id but that nothing will run (found by the chaos run, docs/reliability.md).

    Capturing twice is harmless (the claim is a compare-and-set, the Stripe key is per
    payment), so a fallback path may replace such a job:
    - scheduled for a retry, while RQ's scheduler may be dead for up to 10 minutes after a Redis restart;
    - queued but in no queue: a worker popped it and was killed before starting it;
    - started longer ago than the job timeout: its worker died.
    Only the fallback paths (sweep, catch-up) pass `replace_stale`: a second listener's event
    for a job a worker popped a moment ago must not queue it again.
    """
    if status == JobStatus.SCHEDULED:
        return True
    if status == JobStatus.QUEUED:
        # Popped a moment ago by a live worker looks the same until it marks the job started: wait a while.
        enqueued = job.enqueued_at
        if enqueued is not None and enqueued.tzinfo is None:
            enqueued = enqueued.replace(tzinfo=timezone.utc)
        old_enough = enqueued is None or datetime.now(timezone.utc) - enqueued > STALE_STARTED_JOB
        return old_enough and captures.connection.lpos(captures.key, job.id) is None
    if status == JobStatus.STARTED and job.started_at is not None:
        # RQ enforces the job timeout, so a job started longer ago than that is not running any more.
        started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=timezone.utc)
        return datetime.now(timezone.utc) - started > timedelta(seconds=CAPTURE_JOB_TIMEOUT + 30)
    return False


def enqueue_capture(order_id: str, trigger: str, *, replace_started: bool = False, replace_stale: bool = False) -> bool:
    """Queue the order's capture under job id `capture-{order_id}`; False if it is already queued or running.

    RQ's `unique=True` makes the check-and-enqueue atomic in Redis, so several listeners,
    or a listener and the sweep, never queue the same capture twice. `replace_started` is for
    the sweep's recovery of a claim whose worker died: its job still looks "started".
    """
    captures = queue(CAPTURE_QUEUE)

    def replaceable(old: Job, status) -> bool:
        return (status in _FINISHED
                or (replace_started and status == JobStatus.STARTED)
                or (replace_stale and _will_never_run(old, status, captures)))

    queued = _enqueue_unique(
        captures, CAPTURE_JOB, (order_id, trigger), capture_job_id(order_id), replaceable,
        retry=CAPTURE_RETRY, job_timeout=CAPTURE_JOB_TIMEOUT, description=f"capture order {order_id} ({trigger})",
    )
    if queued:
        log.info("capture enqueued", extra={"order_id": order_id, "trigger": trigger})
    return queued


def _enqueue_unique(q: Queue, func: str, args: tuple, job_id: str, replaceable, **options) -> bool:
    """Enqueue `func(*args)` under `job_id` unless a job of that id is queued, scheduled or running.

    RQ's `unique=True` makes the check-and-enqueue atomic in Redis. A finished or failed job of an
    earlier attempt still holds the id: if `replaceable(old_job, status)` says so it is deleted and
    the enqueue tried once more. False when a live job already has the id."""
    for _ in range(2):
        try:
            q.enqueue(func, *args, job_id=job_id, unique=True, result_ttl=0, failure_ttl=FAILED_JOB_TTL,
                      meta={"trace_id": current_trace_id()}, **options)
            return True
        except DuplicateJobError:
            try:
                old = Job.fetch(job_id, connection=q.connection)
            except NoSuchJobError:
                continue
            if not replaceable(old, old.get_status(refresh=True)):
                return False
            old.delete()
    return False


# KEYS[1] the queue's list, KEYS[1 + k] the hash of the batch's k-th job. ARGV[1] how many template
# values follow, then the template (field, value, ...: what every job of the batch shares), then per
# job: its id, how many values of its own follow, and those (field, value, ...) overriding the template.
# Each job's check and write are one step in Redis: of two listeners enqueuing the same capture, one
# wins. Returns per job 1 (queued now) or the status of the job already holding the id ('' if none),
# so a second listener's copy of a batch costs one EXISTS and one HGET per job, not a round trip.
UNIQUE_ENQUEUE_SCRIPT = """
local template_size = tonumber(ARGV[1])
local template = {}
for i = 2, template_size + 1, 2 do template[ARGV[i]] = ARGV[i + 1] end
local results = {}
local i = template_size + 2
local job = 1
while i <= #ARGV do
    local job_id, own = ARGV[i], tonumber(ARGV[i + 1])
    job = job + 1
    local key = KEYS[job]
    if redis.call('EXISTS', key) == 1 then
        results[#results + 1] = redis.call('HGET', key, 'status') or ''
    else
        local fields = {}
        for name, value in pairs(template) do fields[name] = value end
        for j = i + 2, i + own, 2 do fields[ARGV[j]] = ARGV[j + 1] end
        local flat = {}
        for name, value in pairs(fields) do flat[#flat + 1] = name; flat[#flat + 1] = value end
        redis.call('HSET', key, unpack(flat))
        redis.call('RPUSH', KEYS[1], job_id)
        results[#results + 1] = 1
    end
    i = i + 2 + own
end
return results
"""
# A job that is queued, scheduled or running already is the capture: nothing to do.
_LIVE_STATUSES = {JobStatus.QUEUED.value, JobStatus.SCHEDULED.value, JobStatus.STARTED.value,
                  JobStatus.DEFERRED.value}
ENQUEUE_BATCH = 500  # jobs per script call: Redis runs a script alone, so keep each one short


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _hash_fields(job: Job) -> dict[str, bytes | str]:
    """The job as RQ stores it (`Job.to_dict()`), its values as HSET sends them."""
    return {name: value if isinstance(value, (bytes, str)) else str(value)
            for name, value in job.to_dict().items() if value is not None}


def _capture_job(captures: Queue, order_id: str, trigger: str, trace_id: str | None, now: datetime) -> Job:
    job = captures.create_job(
        CAPTURE_JOB,
        args=(order_id, trigger),
        job_id=capture_job_id(order_id),
        retry=CAPTURE_RETRY,
        timeout=CAPTURE_JOB_TIMEOUT,
        result_ttl=0,
        failure_ttl=FAILED_JOB_TTL,
        meta={"trace_id": trace_id},
        description=f"capture order {order_id} ({trigger})",
        status=JobStatus.QUEUED,
    )
    job.created_at = job.enqueued_at = now  # one moment per batch: the timestamps join the shared template
    return job


def _script_calls(queue_key: str, jobs: list[Job]) -> list[tuple[list, list]]:
    """(KEYS, ARGV) of UNIQUE_ENQUEUE_SCRIPT for the jobs: the fields they share sent once, then each
    job's id and the values of its own. Jobs with another set of fields (none, as `_capture_job` makes
    them) start a call of their own, so no job is given a field RQ would not store."""
    calls: list[tuple[list, list]] = []
    template: dict = {}
    for job in jobs:
        fields = _hash_fields(job)
        if not calls or fields.keys() != template.keys():
            template = fields
            flat = [item for pair in template.items() for item in pair]
            calls.append(([queue_key], [len(flat), *flat]))
        keys, args = calls[-1]
        own = [item for name, value in fields.items() if template[name] != value for item in (name, value)]
        keys.append(job.key)
        args += [job.id, len(own), *own]
    return calls


def _write_unique_jobs(q: Queue, jobs: list[Job]) -> list:
    """Write each job unless its id is taken, in one pipelined round trip (the queue registered as
    RQ registers it, then `UNIQUE_ENQUEUE_SCRIPT` per `ENQUEUE_BATCH` jobs); per job 1 (queued now)
    or the status of the job that holds its id."""
    script = q.connection.register_script(UNIQUE_ENQUEUE_SCRIPT)
    pipe = q.connection.pipeline(transaction=False)
    pipe.sadd(q.redis_queues_keys, q.key)
    for start in range(0, len(jobs), ENQUEUE_BATCH):
        for keys, args in _script_calls(q.key, jobs[start:start + ENQUEUE_BATCH]):
            script(keys=keys, args=args, client=pipe)
    return [outcome for batch in pipe.execute()[1:] for outcome in batch]


def enqueue_captures(order_ids: list[str], trigger: str, *, replace_stale: bool = False) -> int:
    """Many captures in one Redis round trip, with `enqueue_capture`'s exactly-once semantics.

    At 100k live grace periods expiries arrive faster than one round trip per job allows
    (bench/capture_lag.py: p99 8.5 s → 0.3 s), and every listener copy receives every expiry. Each
    batch goes through `UNIQUE_ENQUEUE_SCRIPT` (one call per 500 jobs, pipelined); only an id still
    held by an earlier finished or failed job (or, with `replace_stale`, by one nothing will run)
    falls back to `enqueue_capture`. tests/test_queues.py checks that a job written this way is the
    job `Queue.enqueue` writes, so an RQ upgrade that changes the stored shape fails there.
    """
    order_ids = list(dict.fromkeys(order_ids))  # the same expiry twice in one batch is one job
    if not order_ids:
        return 0
    captures = queue(CAPTURE_QUEUE)
    connection = captures.connection
    if not replace_stale:
        # Every listener copy receives every expiry: a copy that is behind finds the jobs the first
        # one queued, and skips them for one HGET each instead of building them (bench/capture_lag.py).
        pipe = connection.pipeline(transaction=False)
        for order_id in order_ids:
            pipe.hget(Job.key_for(capture_job_id(order_id)), "status")
        order_ids = [order_id for order_id, status in zip(order_ids, pipe.execute())
                     if _text(status) not in _LIVE_STATUSES]
        if not order_ids:
            return 0
    now = datetime.now(timezone.utc)
    traces = [new_trace_id() for _ in order_ids]  # one trace per expiry, carried by the job
    outcomes = _write_unique_jobs(captures, [_capture_job(captures, order_id, trigger, trace_id, now)
                                             for order_id, trace_id in zip(order_ids, traces)])
    queued = 0
    for order_id, trace_id, outcome in zip(order_ids, traces, outcomes):
        with trace(trace_id):
            if outcome == 1:
                queued += 1
                log.info("capture enqueued", extra={"order_id": order_id, "trigger": trigger})
            elif _text(outcome) in _LIVE_STATUSES and not replace_stale:
                continue  # another listener (or the sweep) queued it a moment ago
            elif enqueue_capture(order_id, trigger, replace_stale=replace_stale):
                queued += 1
    return queued


def notice_job_id(notice_id: str) -> str:
    return f"notice-{notice_id}"


def enqueue_notice(notice_id: str) -> bool:
    """Queue the notice's send job under job id `notice-{notice_id}`; False if it is already queued,
    scheduled for a retry or running (the row's claim decides anyway: a second job sends nothing)."""
    return _enqueue_unique(
        queue(DEFAULT_QUEUE), NOTICE_JOB, (notice_id,), notice_job_id(notice_id),
        lambda old, status: status in _FINISHED,
        retry=NOTICE_RETRY, job_timeout=NOTICE_JOB_TIMEOUT, description=f"send notice {notice_id}",
    )


def event_job_id(event_id: str) -> str:
    return f"event-{event_id}"


def enqueue_event_processing(event_id: str) -> bool:
    """Queue the stored webhook event's processing under job id `event-{event_id}`; False if that job is
    already queued, scheduled for a retry or running (the row's claim decides anyway: a second job does nothing).

    One Redis round trip, also for a redelivery whose job is still queued: the job RQ would write
    (`create_job`, `Job.to_dict()`), written by `UNIQUE_ENQUEUE_SCRIPT` as the listener's captures are;
    only an id still held by an earlier finished or failed job goes through `_enqueue_unique`, which
    replaces it.
    """
    events = queue(EVENT_QUEUE)
    job = events.create_job(
        EVENT_JOB, args=(event_id,), job_id=event_job_id(event_id), retry=EVENT_RETRY, timeout=EVENT_JOB_TIMEOUT,
        result_ttl=0, failure_ttl=FAILED_JOB_TTL, meta={"trace_id": current_trace_id()},
        description=f"process webhook event {event_id}", status=JobStatus.QUEUED,
    )
    job.enqueued_at = datetime.now(timezone.utc)
    [outcome] = _write_unique_jobs(events, [job])
    if outcome == 1:
        return True
    if _text(outcome) in _LIVE_STATUSES:
        return False  # queued, scheduled for a retry or running: that job will do
    return _enqueue_unique(
        events, EVENT_JOB, (event_id,), job.id, lambda old, status: status in _FINISHED,
        retry=EVENT_RETRY, job_timeout=EVENT_JOB_TIMEOUT, description=f"process webhook event {event_id}",
    )
