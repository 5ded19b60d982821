"""The one way to reach RQ: jobs named by dotted path, and the listener's own unique-enqueue script."""

from __future__ import annotations

TIMESTAMPS = {"created_at", "enqueued_at"}


def test_job_paths_name_the_job_functions():
    from rq.utils import import_attribute

    from app import jobs
    from app.queues import CAPTURE_JOB, SWEEP_JOB

    assert import_attribute(CAPTURE_JOB) is jobs.capture_order_job
    assert import_attribute(SWEEP_JOB) is jobs.sweep_job


def test_batched_enqueue_writes_the_job_rq_itself_writes(app):
    """A job from our Lua script is field for field the job `Queue.enqueue(unique=True)` stores."""
    from app.log import trace
    from app.queues import CAPTURE_QUEUE, capture_job_id, enqueue_capture, enqueue_captures, queue

    with app.app_context():
        connection = queue(CAPTURE_QUEUE).connection
        with trace("trace-x"):
            assert enqueue_capture("order_by_rq", "expiry")
        with trace("trace-x"):
            assert enqueue_captures(["order_by_script"], "expiry") == 1
        by_rq = connection.hgetall(f"rq:job:{capture_job_id('order_by_rq')}")
        by_script = connection.hgetall(f"rq:job:{capture_job_id('order_by_script')}")

    assert set(by_script) == set(by_rq)
    differing = {field for field in by_rq if by_rq[field] != by_script[field]}
    # The arguments (order id), the description naming it, the trace id and the timestamps differ.
    assert differing - {f.encode() for f in TIMESTAMPS} <= {b"data", b"description", b"meta"}
    assert by_script[b"status"] == b"queued" and by_script[b"origin"] == CAPTURE_QUEUE.encode()


def test_script_enqueues_once_and_the_worker_runs_the_job(app, client, sim_control, settings):
    import time

    from rq.job import Job

    from app.queues import CAPTURE_QUEUE, capture_job_id, enqueue_captures, queue
    from tests.engine_helpers import drain_queues
    from tests.helpers import place_order

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    time.sleep(1.1)
    with app.app_context():
        captures = queue(CAPTURE_QUEUE)
        assert enqueue_captures([order["id"], order["id"]], "expiry") == 1  # the same id twice in one batch
        assert enqueue_captures([order["id"]], "expiry") == 0  # a second listener's batch
        assert captures.get_job_ids() == [capture_job_id(order["id"])]
        job = Job.fetch(capture_job_id(order["id"]), connection=captures.connection)
        assert job.args == (order["id"], "expiry") and job.timeout == 120
    drain_queues(app)
    assert client.get(f"/store/orders/{order['id']}").get_json()["order"]["payment_status"] == "captured"


def test_a_copy_of_an_expiry_leaves_a_queued_or_running_capture_alone(app):
    """Every listener copy receives every expiry: the ones behind must neither queue nor replace the job."""
    from rq.job import Job

    from app.queues import CAPTURE_QUEUE, capture_job_id, enqueue_captures, queue

    with app.app_context():
        captures = queue(CAPTURE_QUEUE)
        assert enqueue_captures(["order_running", "order_waiting"], "expiry") == 2
        running = Job.fetch(capture_job_id("order_running"), connection=captures.connection)
        running.set_status("started")
        captures.remove(running)  # a worker popped it
        assert enqueue_captures(["order_running", "order_waiting", "order_new"], "expiry") == 1
        assert sorted(captures.get_job_ids()) == [capture_job_id("order_new"), capture_job_id("order_waiting")]
        assert running.get_status(refresh=True) == "started"


def test_the_webhook_endpoints_one_round_trip_enqueue_writes_the_job_rq_itself_writes(app):
    """`enqueue_event_processing`'s script writes, field for field, what `Queue.enqueue(unique=True)` writes,
    registers the queue as RQ does, and queues an id once."""
    from rq.utils import import_attribute

    from app import jobs
    from app.log import trace
    from app.queues import (
        EVENT_JOB, EVENT_JOB_TIMEOUT, EVENT_QUEUE, EVENT_RETRY, FAILED_JOB_TTL, enqueue_event_processing,
        event_job_id, queue,
    )

    assert import_attribute(EVENT_JOB) is jobs.process_event_job
    with app.app_context():
        events = queue(EVENT_QUEUE)
        with trace("trace-x"):
            events.enqueue(EVENT_JOB, "evt_by_rq", job_id=event_job_id("evt_by_rq"), unique=True, result_ttl=0,
                           failure_ttl=FAILED_JOB_TTL, meta={"trace_id": "trace-x"}, retry=EVENT_RETRY,
                           job_timeout=EVENT_JOB_TIMEOUT, description="process webhook event evt_by_rq")
            assert enqueue_event_processing("evt_by_script") is True
            assert enqueue_event_processing("evt_by_script") is False  # queued already: one job
        by_rq = events.connection.hgetall(f"rq:job:{event_job_id('evt_by_rq')}")
        by_script = events.connection.hgetall(f"rq:job:{event_job_id('evt_by_script')}")
        assert events.get_job_ids() == [event_job_id("evt_by_rq"), event_job_id("evt_by_script")]
        assert events.connection.sismember("rq:queues", events.key)

    assert set(by_script) == set(by_rq)
    differing = {field for field in by_rq if by_rq[field] != by_script[field]}
    assert differing - {f.encode() for f in TIMESTAMPS} <= {b"data", b"description"}
    assert by_script[b"status"] == b"queued" and by_script[b"origin"] == EVENT_QUEUE.encode()
