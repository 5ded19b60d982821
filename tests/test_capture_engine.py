"""The grace-period engine on a real Redis: every authorized order captured exactly once, after its deadline."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import redis as redis_module

from app.payments.capture_intents import intent_key
from tests.engine_helpers import (
    captures_at_stripe,
    drain_queues,
    queued_capture_ids,
    running_listeners,
    wait_until,
)
from tests.helpers import place_order, stripe_client


def _order(client, order_id):
    return client.get(f"/store/orders/{order_id}").get_json()["order"]


def _worker_env(app, redis_url, sim, **extra: str) -> dict:
    """The environment of a `flask worker` process on the test's database, Redis and simulator."""
    return {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "REDIS_URL": redis_url,
            "STRIPE_SECRET_KEY": "sk_test_suite", "STRIPE_API_BASE": sim.url, "SECRET_KEY": "test", **extra}


def _payment(db_session):
    from app.models import Payment

    db_session.expire_all()
    return db_session.query(Payment).one()


def test_capture_intent_key_has_the_grace_period_as_ttl_and_is_not_extended(app, client, sim_control):
    from app.payments.capture_intents import service_for

    order = place_order(client, sim_control)
    redis = app.extensions["redis"]
    ttl_ms = redis.pttl(intent_key(order["id"]))
    assert 3_598_000 <= ttl_ms <= 3_600_000
    with app.app_context():
        assert service_for(app).create_intent(order["id"]) is False  # a repeated order.placed
        assert service_for(app).validate_intent(order["id"]) is True
    assert redis.pttl(intent_key(order["id"])) <= ttl_ms


def test_expiry_enqueues_and_the_worker_captures_the_order_total(app, client, sim_control, settings, db_session):
    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    with running_listeners(app):
        assert wait_until(lambda: queued_capture_ids(app) == [f"capture-{order['id']}"], timeout=10)
    drain_queues(app)
    captured = _order(client, order["id"])
    assert captured["payment_status"] == "captured" and captured["status"] == "completed"
    assert captured["captured_amount"] == order["total"] and captured["capture"]["status"] == "succeeded"
    payment = _payment(db_session)
    [capture] = captures_at_stripe(sim_control, payment.stripe_payment_intent_id)
    assert capture["amount"] == order["total"]
    assert capture["idempotency_key"] == f"capture:{payment.id}"


def test_no_capture_before_the_deadline(app, client, sim_control, settings):
    from app.payments.capture import CaptureOutcome, capture_order
    from app.queues import enqueue_capture

    settings(grace_period_seconds=60)
    order = place_order(client, sim_control)
    with app.app_context():
        assert capture_order(order["id"], trigger="expiry") == CaptureOutcome.NOT_DUE
        assert enqueue_capture(order["id"], "expiry")
    drain_queues(app)
    assert captures_at_stripe(sim_control) == []
    body = _order(client, order["id"])
    assert body["payment_status"] == "authorized" and body["grace_period"]["editable"] is True


def test_listener_down_during_expiry_catches_up_after_connecting(app, client, sim_control, settings):
    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    time.sleep(1.3)  # the key expires while no listener is subscribed: its event is lost
    assert app.extensions["redis"].exists(intent_key(order["id"])) == 0
    with running_listeners(app) as [listener]:
        assert wait_until(lambda: listener.enqueued == 1)
    drain_queues(app)
    assert _order(client, order["id"])["payment_status"] == "captured"
    assert len(captures_at_stripe(sim_control)) == 1


def test_without_any_listener_the_sweep_captures(app, client, runner, sim_control, settings):
    settings(grace_period_seconds=1, fallback_capture_after_seconds=1)
    order = place_order(client, sim_control)
    time.sleep(1.3)
    result = runner.invoke(args=["sweep"])
    assert result.exit_code == 0 and "enqueued 1 capture(s)" in result.output
    assert "enqueued 0 capture(s)" in runner.invoke(args=["sweep"]).output  # already queued: not twice
    drain_queues(app)
    assert _order(client, order["id"])["payment_status"] == "captured"
    assert len(captures_at_stripe(sim_control)) == 1


def test_two_listeners_queue_and_capture_once(app, client, sim_control, settings):
    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    with running_listeners(app, count=2) as listeners:
        assert wait_until(lambda: sum(listener.enqueued for listener in listeners) >= 1)
        time.sleep(0.5)
        assert queued_capture_ids(app) == [f"capture-{order['id']}"]
        assert sum(listener.enqueued for listener in listeners) == 1
    drain_queues(app)
    assert len(captures_at_stripe(sim_control)) == 1


def test_listener_turns_on_expired_events(app):
    from app.payments.listener import ensure_expired_events

    redis = app.extensions["redis"]
    redis.config_set("notify-keyspace-events", "")
    assert ensure_expired_events(redis) is True
    flags = redis.config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert "E" in flags and ("x" in flags or "A" in flags)


def test_stripe_500_then_success_gives_one_capture(app, client, sim_control, settings):
    """Stripe stores the 500 under the key and replays it for 24 h: the retry needs a key of its own,
    which is safe once Stripe says the PaymentIntent is still uncaptured."""
    import pytest

    from app.payments.capture import CaptureOutcome, CaptureRetryLater, capture_order

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    time.sleep(1.1)
    sim_control.set_faults(script=[{"fault": "500", "method": "POST", "path_contains": "/capture", "times": 1}])
    with app.app_context(), pytest.raises(CaptureRetryLater):
        capture_order(order["id"], trigger="expiry")
    with app.app_context():  # RQ's retry
        assert capture_order(order["id"], trigger="expiry") == CaptureOutcome.CAPTURED
    assert len(captures_at_stripe(sim_control)) == 1
    assert sim_control.ledger()["faults"]["500"] == 1


def test_a_capture_error_stripe_stored_under_the_key_is_not_replayed_to_every_retry(
        app, client, sim_control, settings):
    """S6: with one key forever, every retry (RQ's, the sweep's, staff's) got the stored 500 for a day."""
    import pytest

    from app.payments.capture import CaptureRetryLater, capture_order

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    time.sleep(1.1)
    sim_control.set_faults(script=[{"fault": "500", "method": "POST", "path_contains": "/capture", "times": 1}])
    with app.app_context(), pytest.raises(CaptureRetryLater):
        capture_order(order["id"], trigger="expiry")
    outcomes = []
    for _ in range(3):  # the retries, with no fault left at Stripe
        with app.app_context():
            try:
                outcomes.append(capture_order(order["id"], trigger="retry"))
            except CaptureRetryLater:
                outcomes.append("replayed 500")
    assert outcomes[0] == "captured" and len(captures_at_stripe(sim_control)) == 1


def test_rate_limited_capture_is_retried_with_the_same_key(app, client, sim_control, settings, db_session):
    import pytest

    from app.payments.capture import CaptureOutcome, CaptureRetryLater, capture_order

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    time.sleep(1.1)
    sim_control.set_faults(script=[{"fault": "429", "method": "POST", "path_contains": "/capture", "times": 1}])
    with app.app_context(), pytest.raises(CaptureRetryLater):
        capture_order(order["id"], trigger="expiry")
    assert _payment(db_session).status == "authorized"  # released for the retry
    with app.app_context():
        assert capture_order(order["id"], trigger="expiry") == CaptureOutcome.CAPTURED
    payment = _payment(db_session)
    [capture] = captures_at_stripe(sim_control)
    assert capture["idempotency_key"] == f"capture:{payment.id}" and payment.capture_attempts == 2


def test_lost_response_is_resolved_by_the_same_key_without_a_second_capture(app, client, sim_control, settings):
    from app.payments.capture import capture_order

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    time.sleep(1.1)
    sim_control.set_faults(
        lost_response_seconds=3,
        script=[{"fault": "lost_response", "method": "POST", "path_contains": "/capture", "times": 1}],
    )
    with app.app_context():
        assert capture_order(order["id"], trigger="expiry") in ("captured", "already_captured")
    assert _order(client, order["id"])["payment_status"] == "captured"
    assert len(captures_at_stripe(sim_control)) == 1


def test_capture_already_made_at_stripe_is_reconciled_not_repeated(app, client, sim, sim_control, settings, db_session):
    from app.payments.capture import capture_order

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    payment = _payment(db_session)
    stripe_client(sim.url).v1.payment_intents.capture(payment.stripe_payment_intent_id)
    time.sleep(1.1)
    with app.app_context():
        capture_order(order["id"], trigger="expiry")
    assert _order(client, order["id"])["payment_status"] == "captured"
    assert len(captures_at_stripe(sim_control)) == 1


def test_expired_authorization_cancels_instead_of_capturing(app, client, sim_control, settings, db_session):
    from app.payments.capture import CaptureOutcome, capture_order

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    sim_control.expire(_payment(db_session).stripe_payment_intent_id)
    time.sleep(1.1)
    with app.app_context():
        assert capture_order(order["id"], trigger="expiry") == CaptureOutcome.CANCELED
    body = _order(client, order["id"])
    assert body["payment_status"] == "canceled" and body["capture"]["status"] == "canceled"
    assert captures_at_stripe(sim_control) == []


def test_refused_capture_is_visible_and_retryable(app, client, sim_control, settings, db_session):
    from app.payments.capture import CaptureOutcome, capture_order, retry_failed_capture

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    time.sleep(1.1)
    sim_control.set_faults(script=[{"fault": "card_declined", "method": "POST", "path_contains": "/capture", "times": 1}])
    with app.app_context():
        assert capture_order(order["id"], trigger="expiry") == CaptureOutcome.FAILED
        # the engine does not retry a refusal by itself
        assert capture_order(order["id"], trigger="sweep") == CaptureOutcome.NOT_CAPTURABLE
    body = _order(client, order["id"])
    assert body["capture"]["status"] == "failed" and "card_declined" in body["capture"]["last_error"]
    with app.app_context():
        assert retry_failed_capture(order["id"], actor="staff:ops@example.com") == CaptureOutcome.CAPTURED
    assert _order(client, order["id"])["payment_status"] == "captured"
    assert len(captures_at_stripe(sim_control)) == 1


def test_flushed_redis_gets_its_keys_rearmed_with_the_remaining_ttl(app, client, runner, sim_control):
    order = place_order(client, sim_control)
    redis = app.extensions["redis"]
    time.sleep(1)
    redis.flushdb()
    assert "re-armed 1" in runner.invoke(args=["sweep"]).output
    remaining_ms = redis.pttl(intent_key(order["id"]))
    expected_ms = _order(client, order["id"])["grace_period"]["remaining_seconds"] * 1000
    assert expected_ms - 3000 <= remaining_ms <= expected_ms + 1000
    assert remaining_ms < 3_599_000  # not a fresh full hour


def test_a_key_whose_write_failed_is_rearmed_by_the_next_sweep_and_the_others_are_left_alone(
        app, client, runner, sim_control, monkeypatch):
    from app.payments.capture_intents import CaptureIntentService

    kept = place_order(client, sim_control)
    redis = app.extensions["redis"]
    kept_ttl = redis.pttl(intent_key(kept["id"]))

    def unreachable(self, order_id, deadline=None):
        raise redis_module.ConnectionError("Redis is briefly unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(CaptureIntentService, "create_intent", unreachable)
        lost = place_order(client, sim_control)  # the checkout still succeeds
    assert not redis.exists(intent_key(lost["id"]))
    assert "re-armed 1" in runner.invoke(args=["sweep"]).output
    assert redis.exists(intent_key(lost["id"]))
    assert redis.pttl(intent_key(kept["id"])) <= kept_ttl  # not extended by the pass
    assert "re-armed 0" in runner.invoke(args=["sweep"]).output


def test_worker_killed_mid_capture_gives_one_capture(app, client, sim, sim_control, settings, monkeypatch, redis_url, db_session):
    from app.payments import sweep as sweep_module

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    time.sleep(1.1)
    with app.app_context():
        from app.queues import enqueue_capture

        assert enqueue_capture(order["id"], "expiry")
    # Stripe performs the capture but the answer never arrives; the worker is killed while waiting.
    sim_control.set_faults(
        lost_response_seconds=30,
        script=[{"fault": "lost_response", "method": "POST", "path_contains": "/capture", "times": 1}],
    )
    env = _worker_env(app, redis_url, sim, STRIPE_TIMEOUT_SECONDS="60")
    worker = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--burst"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: len(captures_at_stripe(sim_control)) == 1, timeout=20)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert _payment(db_session).status == "capturing"

    monkeypatch.setattr(sweep_module, "STUCK_CAPTURE_AFTER", timedelta(0))
    with app.app_context():
        result = sweep_module.sweep()
    assert result.recovered == 1
    drain_queues(app)
    assert _order(client, order["id"])["payment_status"] == "captured"
    assert len(captures_at_stripe(sim_control)) == 1


def test_trace_id_of_the_cause_travels_with_the_capture_job(app, client, sim_control, settings, caplog):
    import logging

    from app.log import trace
    from app.queues import CAPTURE_QUEUE, enqueue_capture, queue

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    time.sleep(1.1)
    with app.app_context(), trace("trace-from-the-expiry"):
        enqueue_capture(order["id"], "expiry")
        [job] = queue(CAPTURE_QUEUE).get_jobs()
        assert job.meta["trace_id"] == "trace-from-the-expiry"
    caplog.set_level(logging.INFO)
    drain_queues(app)
    captured_lines = [r for r in caplog.records if r.getMessage() == "payment captured"]
    assert [record.trace_id for record in captured_lines] == ["trace-from-the-expiry"]


def test_batched_enqueue_queues_each_capture_once_and_replaces_finished_jobs(app):
    from rq.job import Job

    from app.queues import CAPTURE_QUEUE, capture_job_id, enqueue_captures, queue

    ids = [f"order_batch{i}" for i in range(50)]
    with app.app_context():
        assert enqueue_captures(ids, "expiry") == 50
        assert enqueue_captures(ids[:10], "expiry") == 0  # a second listener's batch
        captures = queue(CAPTURE_QUEUE)
        assert sorted(captures.get_job_ids()) == sorted(capture_job_id(i) for i in ids)
        job = Job.fetch(capture_job_id(ids[0]), connection=captures.connection)
        assert job.meta["trace_id"] and job.args == (ids[0], "expiry")
        # an earlier attempt's failed job still holds the id: it is replaced, not a blocker
        captures.remove(job)
        job.set_status("failed")
        assert enqueue_captures([ids[0]], "catch_up") == 1
        assert captures.get_job_ids().count(capture_job_id(ids[0])) == 1


def test_a_job_no_worker_will_run_is_replaced_by_the_fallback(app, monkeypatch):
    """Chaos-run findings: a job popped by a killed worker, or a retry whose scheduler died."""
    from datetime import timedelta

    from rq.job import Job

    from app import queues
    from app.queues import CAPTURE_QUEUE, capture_job_id, enqueue_capture, queue

    with app.app_context():
        captures = queue(CAPTURE_QUEUE)
        assert enqueue_capture("order_popped", "expiry")
        captures.connection.lpop(captures.key)  # a worker took it a moment ago...
        assert enqueue_capture("order_popped", "expiry") is False  # the second listener's event: no duplicate
        assert enqueue_capture("order_popped", "sweep", replace_stale=True) is False  # ...and may still start it
        monkeypatch.setattr(queues, "STALE_STARTED_JOB", timedelta(0))  # ...or died before starting it
        assert enqueue_capture("order_popped", "sweep", replace_stale=True) is True
        assert captures.get_job_ids() == [capture_job_id("order_popped")]

        assert enqueue_capture("order_waiting", "expiry")
        assert enqueue_capture("order_waiting", "sweep", replace_stale=True) is False  # really queued: not twice
        job = Job.fetch(capture_job_id("order_waiting"), connection=captures.connection)
        captures.remove(job)
        job.set_status("scheduled")  # a retry RQ's scheduler may not run for minutes
        assert enqueue_capture("order_waiting", "catch_up", replace_stale=True) is True


def test_payment_intent_unknown_to_stripe_fails_visibly_instead_of_retrying_forever(app, client, sim_control, settings,
                                                                                   db_session):
    from sqlalchemy import update

    from app.models import Payment
    from app.payments.capture import CaptureOutcome, capture_order

    settings(grace_period_seconds=1)
    order = place_order(client, sim_control)
    # e.g. the app pointed at another Stripe account, or the test data at Stripe was deleted
    db_session.execute(update(Payment).values(stripe_payment_intent_id="pi_unknown_to_stripe"))
    time.sleep(1.1)
    with app.app_context():
        assert capture_order(order["id"], trigger="expiry") == CaptureOutcome.FAILED
    body = _order(client, order["id"])
    assert body["capture"]["status"] == "failed" and "not found at Stripe" in body["capture"]["last_error"]


def test_a_worker_process_with_concurrency_runs_a_pool_that_captures_each_order_once(
        app, client, sim, sim_control, settings, redis_url, db_session):
    """WORKER_CONCURRENCY=3: one `flask worker` forks three RQ workers (each with its own database connections)."""
    from app.models import Payment
    from app.queues import enqueue_captures

    settings(grace_period_seconds=1)
    orders = [place_order(client, sim_control) for _ in range(6)]
    time.sleep(1.1)
    with app.app_context():
        assert enqueue_captures([order["id"] for order in orders], "expiry") == 6
    env = _worker_env(app, redis_url, sim, WORKER_CONCURRENCY="3")
    worker = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--burst"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert worker.stderr.count("Starting worker started with PID") == 3
    db_session.expire_all()
    assert {p.status for p in db_session.query(Payment)} == {"captured"}
    assert sorted(c["payment_intent"] for c in captures_at_stripe(sim_control)) == sorted(
        p.stripe_payment_intent_id for p in db_session.query(Payment))
