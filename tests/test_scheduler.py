"""The fallback sweep and the reconciliation are scheduled once, under stable ids, however many schedulers start."""

from rq_scheduler import Scheduler

from app.engine_cli import RECONCILE_JOB_ID, SWEEP_JOB_ID, register_periodic_reconcile, register_periodic_sweep
from app.queues import DEFAULT_QUEUE, queue


def _scheduler(app):
    return Scheduler(queue_name=DEFAULT_QUEUE, connection=app.extensions["redis"], interval=1)


def test_restarting_the_scheduler_never_duplicates_the_sweep(app):
    with app.app_context():
        assert register_periodic_sweep(_scheduler(app), 300) is True
        assert register_periodic_sweep(_scheduler(app), 300) is False  # a restart, or a second copy
        jobs = [job for job in _scheduler(app).get_jobs() if job.id == SWEEP_JOB_ID]
        assert len(jobs) == 1 and jobs[0].meta["interval"] == 300


def test_a_changed_interval_replaces_the_schedule(app):
    with app.app_context():
        register_periodic_sweep(_scheduler(app), 300)
        assert register_periodic_sweep(_scheduler(app), 60) is True
        jobs = [job for job in _scheduler(app).get_jobs() if job.id == SWEEP_JOB_ID]
        assert len(jobs) == 1 and jobs[0].meta["interval"] == 60


def test_two_schedulers_enqueue_a_due_sweep_once(app):
    with app.app_context():
        register_periodic_sweep(_scheduler(app), 300)
        _scheduler(app).run(burst=True)
        _scheduler(app).run(burst=True)
        assert queue(DEFAULT_QUEUE).get_job_ids() == [SWEEP_JOB_ID]


def test_the_scheduled_sweep_runs_on_a_worker_and_records_its_result(app):
    import json

    from tests.engine_helpers import drain_queues

    with app.app_context():
        register_periodic_sweep(_scheduler(app), 300)
        _scheduler(app).run(burst=True)
    drain_queues(app)
    last = json.loads(app.extensions["redis"].get("sweep:last"))
    assert last["enqueued"] == 0 and "at" in last and "duration_ms" in last


def test_the_scheduler_puts_the_sweep_back_after_redis_lost_it(app):
    from app.engine_cli import engine_scheduler

    with app.app_context():
        scheduler = engine_scheduler(app.extensions["redis"], 300, 3600, poll_interval=1)
        register_periodic_sweep(scheduler, 300)
        app.extensions["redis"].flushdb()  # Redis restarted without persistence
        engine_scheduler(app.extensions["redis"], 300, 3600, poll_interval=1).run(burst=True)
        assert SWEEP_JOB_ID in _scheduler(app) and RECONCILE_JOB_ID in _scheduler(app)
        # and both are due at once
        assert sorted(queue(DEFAULT_QUEUE).get_job_ids()) == sorted([SWEEP_JOB_ID, RECONCILE_JOB_ID])


def test_restarting_the_scheduler_never_duplicates_the_reconciliation(app):
    with app.app_context():
        assert register_periodic_reconcile(_scheduler(app), 3600) is True
        assert register_periodic_sweep(_scheduler(app), 300) is True
        assert register_periodic_reconcile(_scheduler(app), 3600) is False  # a restart, or a second copy
        assert register_periodic_reconcile(_scheduler(app), 3600) is False
        jobs = [job for job in _scheduler(app).get_jobs() if job.id == RECONCILE_JOB_ID]
        assert len(jobs) == 1 and jobs[0].meta["interval"] == 3600
        assert jobs[0].func_name == "app.jobs.reconcile_job"
        assert register_periodic_reconcile(_scheduler(app), 600) is True  # RECONCILE_INTERVAL_SECONDS changed
        jobs = [job for job in _scheduler(app).get_jobs() if job.id == RECONCILE_JOB_ID]
        assert len(jobs) == 1 and jobs[0].meta["interval"] == 600
        assert len(list(_scheduler(app).get_jobs())) == 2  # the sweep untouched


def test_the_scheduler_command_registers_both_jobs_once(app, runner, settings):
    settings(reconcile_interval_seconds=1800)
    for _ in range(2):  # a restart
        result = runner.invoke(args=["scheduler", "--burst"])
        assert result.exit_code == 0, result.output
    with app.app_context():
        jobs = sorted((job.id, job.meta["interval"]) for job in _scheduler(app).get_jobs())
        assert jobs == [(SWEEP_JOB_ID, 300), (RECONCILE_JOB_ID, 1800)]
        # due at once on the first start, enqueued once however many times the scheduler started
        assert sorted(queue(DEFAULT_QUEUE).get_job_ids()) == sorted([SWEEP_JOB_ID, RECONCILE_JOB_ID])


def test_the_scheduled_reconciliation_runs_on_a_worker(app, client, sim_control, db_session):
    from app.models import Order, ReconciliationRun
    from tests.engine_helpers import drain_queues
    from tests.helpers import paid_cart

    paid_cart(client, sim_control)  # authorized at Stripe; the simulator delivers no webhook here
    with app.app_context():
        register_periodic_reconcile(_scheduler(app), 3600)
        _scheduler(app).run(burst=True)
    drain_queues(app)
    assert db_session.query(Order).count() == 1
    run = db_session.query(ReconciliationRun).one()
    assert (run.found, run.new, run.processed, run.failed) == (1, 1, 1, 0)


def test_a_worker_registers_again_after_redis_lost_its_data(app):
    from rq import Worker

    from app.engine_cli import engine_worker
    from app.queues import CAPTURE_QUEUE

    redis = app.extensions["redis"]
    with app.app_context():
        worker = engine_worker([queue(CAPTURE_QUEUE)], redis)
        worker.register_birth()
        assert [w.name for w in Worker.all(connection=redis)] == [worker.name]
        redis.flushdb()  # a Redis restart without persistence
        assert Worker.all(connection=redis) == []  # what the dashboard's "workers alive" reads
        worker.heartbeat()
        assert [w.name for w in Worker.all(connection=redis)] == [worker.name]
        worker.register_death()
